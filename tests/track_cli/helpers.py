"""Helpers for the tracking CLI tests: registered hf run directories, fake Slurm commands on PATH."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from hpc_ft.submit.rundir import new_run_id, write_run_json
from hpc_ft.track.registry import Registry

REPO = Path(__file__).resolve().parents[2]


def hf_events(n_steps: int, max_steps: int, *, end: bool = True, val_every: int = 5) -> List[dict]:
    recs = [{"kind": "start", "max_steps": max_steps, "resumed_from": None, "world_size": 1}]
    for s in range(1, n_steps + 1):
        recs.append({"kind": "train", "step": s, "loss": round(3.0 - s * 0.01, 4), "step_time_s": 0.05,
                     "tokens_per_s": 1000.0})
        if s % val_every == 0:
            recs.append({"kind": "eval", "step": s, "val_loss": round(2.5 - s * 0.01, 4)})
    if end:
        recs.append({"kind": "end", "reason": "max_steps", "step": n_steps, "best_val_loss": 2.0})
    return recs


def make_run(root: Path, registry: Optional[Registry], *, name: str = "exp", executor: str = "slurm",
             jobs: Optional[Dict[str, str]] = None, events: Optional[List[dict]] = None,
             state: str = "PENDING", register: bool = True, run_id: Optional[str] = None) -> Dict:
    """A run directory as launch_run leaves it (run.json, logs/), with an hf events.jsonl; registered."""
    run_id = run_id or new_run_id()
    run_dir = root / name / run_id
    (run_dir / "logs").mkdir(parents=True)
    jobs = dict(jobs or {})
    rec = {"run_id": run_id, "name": name, "run_dir": str(run_dir), "backend": "hf", "cluster": "slurm_local",
           "executor": executor, "config_hash": "0123456789abcdef", "jobs": jobs, "job_ids": list(jobs.values()),
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_run_json(run_dir, rec)
    if events is not None:
        (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if register and registry is not None:
        registry.add_run(run_id=run_id, name=name, config_hash=rec["config_hash"], run_dir=str(run_dir),
                         backend="hf", cluster="slurm_local", executor=executor, job_ids=list(jobs.values()),
                         state=state)
    return {"run_id": run_id, "run_dir": run_dir, "rec": rec}


def fake_commands(bin_dir: Path, scripts: Dict[str, str]) -> Path:
    """Executables named after Slurm commands; each logs its argv to <bin_dir>/calls.log."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, body in scripts.items():
        p = bin_dir / name
        p.write_text("#!/bin/bash\n" f'echo "{name} $*" >> "{bin_dir}/calls.log"\n' + body + "\n")
        p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bin_dir


def calls(bin_dir: Path, name: str) -> List[str]:
    log = bin_dir / "calls.log"
    if not log.exists():
        return []
    return [ln for ln in log.read_text().splitlines() if ln.split(" ", 1)[0] == name]


def hpcft(*args, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "hpc_ft.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=str(REPO), timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"hpc-ft {' '.join(map(str, args))} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def env_with(registry_path: Path, bin_dir: Optional[Path] = None) -> dict:
    env = dict(os.environ, HPC_FT_REGISTRY=str(registry_path))
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return env
