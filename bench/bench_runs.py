"""Prints how long `hpc-ft runs` takes over a large registry: 2,000 finished runs and a few live ones.

    python bench/bench_runs.py [--runs 2000] [--live 5] [--repeat 5]

Finished runs are listed from their recorded status (no Slurm call, no file read); the live ones are
refreshed together: ONE sacct call (plus one squeue call for the jobs accounting does not know yet)
for all of them. Slurm's commands are wrapped here to count the calls; on a machine without Slurm
the live runs just show UNKNOWN. Times are wall-clock of the whole `hpc-ft` process (Python start-up
included), best and median of --repeat runs. Target: <= 0.5 s for 2,000 runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpc_ft.submit.rundir import new_run_id, write_run_json  # noqa: E402
from hpc_ft.track.registry import Registry  # noqa: E402
from hpc_ft.track.status import STATUS_FIELDS  # noqa: E402

TAIL = "\n".join(f"[rank0] line {i}: torch.distributed.elastic ... some traceback text" for i in range(40))


def build(root: Path, n_done: int, n_live: int) -> Path:
    reg_path = root / "registry.sqlite"
    reg = Registry(reg_path)
    rows, now = [], time.time() - 86400 * 30
    states = ("COMPLETED", "COMPLETED", "COMPLETED", "FAILED", "TIMEOUT", "CANCELLED")
    for i in range(n_done):
        run_id = new_run_id(now + i * 60)
        state = states[i % len(states)]
        rows.append({"run_id": run_id, "name": f"exp{i % 7}", "config_hash": f"{i:016x}",
                     "run_dir": f"{root}/exp/exp{i % 7}/{run_id}", "backend": "hf", "cluster": "slurm_local",
                     "executor": "slurm", "job_ids": [str(10_000 + i)], "state": state})
    reg.add_runs(rows)
    for i, r in enumerate(rows):  # the summary `status` records: the whole status object
        summary = {k: None for k in STATUS_FIELDS}
        summary.update(run_id=r["run_id"], job_id=r["job_ids"][0], state=r["state"], step=400, max_steps=400,
                       train_loss=0.5 + i * 1e-4, best_val_loss=0.6, best_checkpoint=f"{r['run_dir']}/checkpoints/best",
                       end_cause=r["state"], log_tail=TAIL if r["state"] == "FAILED" else "",
                       jobs={"train": {"job_id": r["job_ids"][0], "state": r["state"], "reason": "", "previous": []}})
        reg.update_run(r["run_id"], state=r["state"], summary=summary)
    for i in range(n_live):
        run_id = new_run_id()
        run_dir = root / "exp" / "live" / run_id
        (run_dir / "logs").mkdir(parents=True)
        job = str(990_000 + i)
        write_run_json(run_dir, {"run_id": run_id, "name": "live", "backend": "hf", "executor": "slurm",
                                 "jobs": {"train": job}, "job_ids": [job]})
        (run_dir / "events.jsonl").write_text(
            "".join(json.dumps({"kind": "train", "step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 200)))
        reg.add_run(run_id=run_id, name="live", config_hash="live", run_dir=str(run_dir), backend="hf",
                    cluster="slurm_local", executor="slurm", job_ids=[job], state="RUNNING")
    reg.close()
    return reg_path


def counting_shims(root: Path) -> Path:
    """sacct/squeue/sinfo wrappers that log each call and run the real command (if there is one)."""
    shim = root / "bin"
    shim.mkdir()
    for name in ("sacct", "squeue", "sinfo", "scontrol"):
        real = shutil.which(name)
        body = f'exec {real} "$@"' if real else "exit 1"
        (shim / name).write_text(f'#!/bin/bash\necho {name} >> "{shim}/calls.log"\n{body}\n')
        (shim / name).chmod(0o755)
    return shim


def timed(argv, env, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(argv, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
    return min(times), statistics.median(times), proc.stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--live", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        reg_path = build(root, args.runs, args.live)
        print(f"registry: {args.runs} finished + {args.live} live runs, {reg_path.stat().st_size / 1e6:.1f} MB "
              f"(built in {time.perf_counter() - start:.1f} s)")
        shim = counting_shims(root)
        env = dict(os.environ, HPC_FT_REGISTRY=str(reg_path), PATH=f"{shim}:{os.environ['PATH']}")
        base = [sys.executable, "-m", "hpc_ft.cli"]
        lo, med, _ = timed(base + ["--help"], env, args.repeat)
        print(f"hpc-ft --help (start-up only)   best {lo * 1000:6.0f} ms   median {med * 1000:6.0f} ms")
        for label, extra in (("hpc-ft runs", []), ("hpc-ft runs --json", ["--json"])):
            (shim / "calls.log").unlink(missing_ok=True)
            lo, med, out = timed(base + ["runs", *extra], env, args.repeat)
            n_calls = {}
            if (shim / "calls.log").exists():
                for c in (shim / "calls.log").read_text().split():
                    n_calls[c] = n_calls.get(c, 0) + 1
            per_run = ", ".join(f"{k} {v / args.repeat:g}" for k, v in sorted(n_calls.items())) or "none"
            rows = len(json.loads(out)) if extra else len(out.splitlines()) - 1
            verdict = "OK" if med <= 0.5 else "over the 0.5 s target"
            print(f"{label:30} best {lo * 1000:6.0f} ms   median {med * 1000:6.0f} ms   {rows} rows   "
                  f"Slurm calls per listing: {per_run}   [{verdict}]")
        from hpc_ft.track.listing import list_runs

        reg = Registry(reg_path)
        os.environ["PATH"] = env["PATH"]
        start = time.perf_counter()
        list_runs(reg)
        print(f"list_runs() in-process           {1000 * (time.perf_counter() - start):6.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
