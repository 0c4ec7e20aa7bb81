"""Prints what one `hpc-ft watch` / `logs --follow` poll costs on a small and on a large NeMo log.

    python bench/bench_watch.py [--sizes-mb 2 200] [--polls 10]

Each poll follows a step of training: a few KB of progress appended to logs/job.out, then the
status rebuilt. `watch` keeps one incremental parser per file (RunWatcher), so a poll reads the bytes
added since the last one, plus a fixed 64 KiB log tail: its cost should not grow with the log. For
contrast, `run_status` (what `status` does once) re-parses the whole log. Figures: bytes parsed per
poll and the median ms per poll.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_log_parse import synthesize  # noqa: E402

from hpc_ft.track.follow import RunWatcher  # noqa: E402
from hpc_ft.track.status import run_status  # noqa: E402


def append_steps(log: Path, first: int, n: int = 20) -> int:
    text = "".join(f"\rEpoch 0: : 50%|█████     | {s}/10000000 [01:00<01:00, v_num=0, reduced_train_loss=0.{s % 97:02d}, "
                   f"global_step={s - 1}.0, consumed_samples={s * 16}.0, train_step_timing in s=2.590]"
                   for s in range(first, first + n)).encode()
    with open(log, "ab") as f:
        f.write(text)
    return len(text)


def bench(root: Path, size_mb: int, polls: int) -> None:
    run_dir = root / f"run-{size_mb}"
    (run_dir / "logs").mkdir(parents=True)
    log = run_dir / "logs" / "job.out"
    start = time.perf_counter()
    steps = synthesize(log, size_mb)
    made = time.perf_counter() - start
    row = {"run_id": run_dir.name, "run_dir": str(run_dir), "backend": "nemo", "executor": "local", "job_ids": [],
           "name": "bench", "cluster": "local"}
    watcher = RunWatcher(row)
    start = time.perf_counter()
    watcher.poll()
    first = time.perf_counter() - start
    costs, times = [], []
    for k in range(polls):
        append_steps(log, steps + 1 + 20 * k)
        before = watcher.bytes_parsed
        start = time.perf_counter()
        st = watcher.poll()
        times.append(time.perf_counter() - start)
        costs.append(watcher.bytes_parsed - before)
    assert st["step"] == steps + 20 * polls, (steps, st["step"])
    start = time.perf_counter()
    full = run_status(row)
    full_s = time.perf_counter() - start
    assert full["step"] == st["step"]
    mb = log.stat().st_size / 2**20
    print(f"log {mb:7.1f} MiB ({steps} steps, made in {made:.0f} s): first poll {first:6.2f} s (reads it all once); "
          f"then per poll: {statistics.median(costs) / 1024:5.1f} KiB parsed, {statistics.median(times) * 1000:6.1f} ms "
          f"median ({max(times) * 1000:.1f} max)   |   run_status (whole log): {full_s:6.2f} s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[2, 200])
    ap.add_argument("--polls", type=int, default=10)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes_mb:
            bench(Path(tmp), size, args.polls)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
