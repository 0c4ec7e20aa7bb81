"""Sweep costs: compose + validate + plan + render a 1,000-point sweep, and one array sbatch vs N sbatch calls.

    python bench/bench_sweep.py [--n-submit 50] [--no-slurm]

Prints figures, asserts nothing:

1. `launch_sweep(..., dry_run=True)` on 1,000-point grids (seconds per stage, points kept, Hydra composes):
   a. the reference job (NeMo, 4x V100-16GB): TP 1,2,4,8 x MBS range(1,251); the planner prunes most;
   b. hf on this machine: seed range(0,250) x 4 learning rates: all 1,000 kept, 1,000 run directories;
   c. hf with model.global_batch_size=${model.micro_batch_size} and MBS range(1,251) x 4 lr: an
      interpolation depends on the swept key, so it is resolved again for every point.
   Each grid is run twice: with an empty compose cache (Hydra's compose really runs) and warm.
2. On the local Slurm (scripts/local-slurm.sh): N trivial points submitted as ONE array (one sbatch
   call) against the same N point scripts submitted one sbatch call each, both held (`--hold`) and
   cancelled right after; through hpc-ft's submit path (submitit) and with bare `sbatch`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]


class Stopwatch:
    """Wall time spent inside some functions (patched for the duration of one measurement)."""

    def __init__(self):
        self.t = {}
        self.calls = {}

    def wrap(self, module, name, label):
        original = getattr(module, name)

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                self.t[label] = self.t.get(label, 0.0) + time.perf_counter() - t0
                self.calls[label] = self.calls.get(label, 0) + 1

        setattr(module, name, timed)
        return original


def bench_grid(title: str, overrides: list, work: Path) -> None:
    from hpc_ft.compose import compose as compose_mod
    from hpc_ft.submit import launch as submit_launch, rundir
    from hpc_ft.sweep import launch as sweep_launch

    os.environ["XDG_CACHE_HOME"] = str(work / "cache")
    for run in ("cold cache", "warm cache"):
        if run == "cold cache":
            shutil.rmtree(work / "cache", ignore_errors=True)
        watch = Stopwatch()
        restore = [
            (compose_mod, "hydra_compose", watch.wrap(compose_mod, "hydra_compose", "hydra compose")),
            (sweep_launch, "compose_points", watch.wrap(sweep_launch, "compose_points", "compose+validate")),
            (sweep_launch, "plan_points", watch.wrap(sweep_launch, "plan_points", "plan")),
            (submit_launch, "render_scripts", watch.wrap(submit_launch, "render_scripts", "render job.sbatch")),
            (rundir.ConfigYaml, "__call__", watch.wrap(rundir.ConfigYaml, "__call__", "config.yaml")),
            (rundir, "write_new", watch.wrap(rundir, "write_new", "file writes")),
            (rundir, "make_run_dir", watch.wrap(rundir, "make_run_dir", "mkdir")),
        ]
        t0 = time.perf_counter()
        try:
            launch = sweep_launch.launch_sweep(overrides + [f"work_dir={work}"], dry_run=True,
                                               out=str(work / "results"))
        finally:
            for module, name, original in restore:
                setattr(module, name, original)
        total = time.perf_counter() - t0
        kept = len(launch.kept)
        hows = {}
        for p in launch.points:
            hows[p.point.how] = hows.get(p.point.how, 0) + 1
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in watch.t.items() if k != "hydra compose")
        print(f"  {title} [{run}]: {len(launch.points)} points, {kept} kept, {len(launch.points) - kept} pruned: "
              f"{total:.2f} s in all (target <= 3 s)")
        print(f"      {stages}; Hydra compose calls: {watch.calls.get('hydra compose', 0)} "
              f"({watch.t.get('hydra compose', 0.0):.2f} s); points by path: {hows}")
        if launch.sweep_dir:
            shutil.rmtree(launch.sweep_dir, ignore_errors=True)


def slurm_up() -> bool:
    try:
        return subprocess.run([str(REPO / "scripts" / "local-slurm.sh"), "status"], capture_output=True,
                              timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def bench_submit(n: int, work: Path) -> None:
    from hpc_ft.executors import slurm as executors
    from hpc_ft.sweep.launch import launch_sweep

    launch = launch_sweep([f"work_dir={work}", "cluster=slurm_local", "+cluster.sbatch_extra.hold=",
                           f"model.seed=range(0,{n})", "sweep.steps=1"], dry_run=True, out=str(work / "results"))
    kept = launch.kept
    job_ids = []
    try:
        t0 = time.perf_counter()
        sub = executors.submit_slurm(launch.array_text, launch.sweep_dir / "logs" / "submitit", array_size=len(kept))
        one = time.perf_counter() - t0
        job_ids.append(sub.job_id)
        t0 = time.perf_counter()
        for p in kept:
            text = (Path(p.run_dir) / "job.sbatch").read_text()
            job_ids.append(executors.submit_slurm(text, Path(p.run_dir) / "logs" / "submitit").job_id)
        many = time.perf_counter() - t0
        print(f"  hpc-ft submit path (submitit): {len(kept)} points as one array: {one * 1000:.0f} ms (1 sbatch call); "
              f"as {len(kept)} jobs: {many * 1000:.0f} ms ({len(kept)} sbatch calls); ratio {many / one:.1f}x")
    finally:
        if job_ids:
            subprocess.run(["scancel", *job_ids], capture_output=True)
    job_ids = []
    try:
        t0 = time.perf_counter()
        out = subprocess.run(["sbatch", "--parsable", str(launch.sweep_dir / "array.sbatch")], capture_output=True,
                             text=True, check=True).stdout
        one = time.perf_counter() - t0
        job_ids.append(out.strip().split(";")[0])
        t0 = time.perf_counter()
        for p in kept:
            out = subprocess.run(["sbatch", "--parsable", str(Path(p.run_dir) / "job.sbatch")], capture_output=True,
                                 text=True, check=True).stdout
            job_ids.append(out.strip().split(";")[0])
        many = time.perf_counter() - t0
        print(f"  bare sbatch:                   {len(kept)} points as one array: {one * 1000:.0f} ms; "
              f"as {len(kept)} jobs: {many * 1000:.0f} ms; ratio {many / one:.1f}x")
    finally:
        if job_ids:
            subprocess.run(["scancel", *job_ids], capture_output=True)
    shutil.rmtree(launch.sweep_dir, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-submit", type=int, default=50, help="points submitted in the array-vs-jobs comparison")
    p.add_argument("--no-slurm", action="store_true", help="skip the submission comparison")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    os.environ.setdefault("HPC_FT_REGISTRY", str(work / "registry.sqlite"))
    try:
        from hpc_ft.data.jcommonsenseqa import make_synthetic

        make_synthetic(work / "data" / "jcommonsenseqa-v1.1", n_train=50, n_valid=10, n_test=10, seed=0)
        print("1. compose + validate + plan + render a 1,000-point sweep (dry run: run directories written)")
        bench_grid("a. NeMo 7B on 4x V100: TP 1,2,4,8 x MBS range(1,251)",
                   ["experiment=nig_elyza_ptuning", "model.tensor_model_parallel_size=1,2,4,8",
                    "model.micro_batch_size=range(1,251)"], work)
        bench_grid("b. hf: model.seed=range(0,250) x 4 learning rates",
                   ["model.seed=range(0,250)", "model.optim.lr=1e-4,3e-4,1e-3,3e-3"], work)
        bench_grid("c. hf: GBS=${model.micro_batch_size} (an interpolation on the swept key), MBS range(1,251) x 4 lr",
                   ["model.global_batch_size=${model.micro_batch_size}", "model.micro_batch_size=range(1,251)",
                    "model.optim.lr=1e-4,3e-4,1e-3,3e-3"], work)
        if args.no_slurm:
            return
        print(f"2. submitting {args.n_submit} points: one job array vs one job each (local Slurm, held, cancelled)")
        if not slurm_up():
            print("  skipped: the local Slurm is not up (scripts/local-slurm.sh start)")
            return
        bench_submit(args.n_submit, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
