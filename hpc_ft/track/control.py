"""Acting on runs: cancel (Slurm: scancel; local: the job's controller gets SIGTERM)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Dict, List

from hpc_ft.errors import UserError
from hpc_ft.track import slurm as sl
from hpc_ft.track.registry import FINAL_STATES


def _jobs(row: Dict) -> Dict[str, str]:
    from hpc_ft.submit.rundir import read_run_json

    try:
        jobs = read_run_json(Path(row["run_dir"])).get("jobs") or {}
    except (FileNotFoundError, ValueError):
        jobs = {}
    if not jobs:
        jobs = {f"job{i}": j for i, j in enumerate(row.get("job_ids") or [])}
    return {k: str(v) for k, v in jobs.items()}


def cancel_run(row: Dict, registry=None) -> List[str]:
    jobs = _jobs(row)
    done: List[str] = []
    if row.get("executor") == "local":
        state_dir = Path(row["run_dir"]) / "state"
        for kind, pid in jobs.items():
            if sl.local_state(Path(row["run_dir"]), pid)["State"] in ("RUNNING", "PENDING"):
                state_dir.mkdir(exist_ok=True)
                (state_dir / "cancelled").touch()
                try:
                    os.kill(int(pid), signal.SIGTERM)
                    done.append(f"{kind} (pid {pid})")
                except (ProcessLookupError, ValueError):
                    pass
    else:
        states = sl.job_states(jobs.values())
        live = {k: j for k, j in jobs.items() if states.get(j, {}).get("State", "UNKNOWN") not in FINAL_STATES}
        if live:
            proc = subprocess.run(["scancel", *live.values()], capture_output=True, text=True)
            if proc.returncode != 0:
                raise UserError(f"scancel failed: {proc.stderr.strip() or proc.stdout.strip()}. Is Slurm reachable?")
            done = [f"{k} {j}" for k, j in live.items()]
    if registry is not None and done and not row.get("unregistered"):
        registry.update_run(row["run_id"], state="CANCELLED")
    return done
