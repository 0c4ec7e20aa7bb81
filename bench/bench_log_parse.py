"""Prints how fast the NeMo log parser reads a large synthetic log: whole file and 1 MiB feeds.

    python bench/bench_log_parse.py [--size-mb 200] [--repeat 3] [--newlines]

The log imitates a long NeMo PEFT run as Slurm writes it: tqdm progress updates joined by
``\\r`` (the bulk), a validation bar and ModelCheckpoint/EarlyStopping lines every 502 steps,
NeMo "Removing checkpoint" lines, and a warning block now and then. ``--newlines`` also
times the same log with every ``\\r`` turned into ``\\n`` (one update per line), the slow case.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpc_ft.track.job_log import JobLogParser, parse_job_log  # noqa: E402

CK = "/home/user/hpc-ft/runs/elyza_7b_ptuning/20240606-160501-a1b2/nemo/elyza_7b_ptuning/checkpoints"
PFX = "megatron_gpt_peft_ptuning_tuning"
WARNING = (
    "[NeMo W 2024-06-06 15:21:41 nemo_logging:349] /usr/local/lib/python3.10/dist-packages/pytorch_lightning/"
    "trainer/connectors/logger_connector/result.py:441: It is recommended to use `self.log('val_loss', ..., "
    "sync_dist=True)` when logging on epoch level in distributed setting to accumulate the metric across devices.\n    \n"
)


def _bar(frac: float) -> str:
    full = int(frac * 10)
    return "█" * full + " " * (10 - full)


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def synthesize(path: Path, size_mb: int, seed: int = 0) -> int:
    """Write a NeMo-like log of about ``size_mb`` MiB to ``path``; return the number of steps."""
    rng = random.Random(seed)
    target = size_mb << 20
    total, gbs, t = 10_000_000, 16, 2.59
    val = None
    best = None
    written = 0
    step = 0
    with open(path, "w", encoding="utf-8") as f:
        f.write("[hpc-ft] attempt 1 start job=81234 restart=0 host=gpu01\n")
        buf: list[str] = []
        loss = 2.4
        while written < target:
            step += 1
            loss = max(0.01, loss * 0.9995 + rng.uniform(-0.003, 0.003))
            post = (
                f"v_num=0, reduced_train_loss={loss:.3g}, global_step={step - 1}.0, "
                f"consumed_samples={step * gbs}.0, train_step_timing in s={t:.3f}"
            )
            if val is not None:
                post += f", val_loss={val:.3g}"
            frac = step / total
            buf.append(f"\rEpoch 0: : {int(frac * 100):3d}%|{_bar(frac)}| {step}/{total} [{_hms(step * t)}<{_hms((total - step) * t)}, {post}]")
            if step % 502 == 0:
                for k in (0, 18, 35, 53, 70):
                    buf.append(f"\rValidation DataLoader 0: {k * 100 // 70:3d}%|{_bar(k / 70)}| {k}/70 [00:0{k // 10}<00:05,  7.14it/s]\x1b[A")
                val = rng.uniform(0.05, 0.3)
                buf.append(f"\rEpoch 0: : {int(frac * 100):3d}%|{_bar(frac)}| {step}/{total} [{_hms(step * t)}<{_hms((total - step) * t)}, {post}, val_loss={val:.3g}]")
                name = f"{PFX}--validation_loss={val:.3f}-step={step}-consumed_samples={step * gbs}.0"
                if best is None or val < best:
                    best = val
                    buf.append(f"Epoch 0, global step {step}: 'validation_loss' reached {val:.5f} (best {val:.5f}), saving model to '{CK}/{name}.ckpt' as top 1\n")
                else:
                    buf.append(f"Epoch 0, global step {step}: 'validation_loss' was not in top 1\n")
                buf.append(f"[NeMo I 2024-06-06 20:32:41 nlp_overrides:480] Removing checkpoint: {CK}/mp_rank_00/{name}-last.ckpt\n")
            if step % 20_000 == 0:
                buf.append("\n" + WARNING)
            if len(buf) >= 4096:
                chunk = "".join(buf)
                f.write(chunk)
                written += len(chunk.encode())
                buf.clear()
        f.write("".join(buf) + "\n")
    return step


def _time(fn, repeat: int) -> tuple[float, object]:
    best = float("inf")
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def _incremental(path: Path, chunk: int = 1 << 20):
    parser = JobLogParser()
    events = []
    with open(path, "rb") as f:
        while data := f.read(chunk):
            events.extend(parser.feed(data))
    events.extend(parser.finish())
    return events


def bench(path: Path, repeat: int, label: str) -> None:
    mb = path.stat().st_size / 2**20
    whole_s, whole = _time(lambda: parse_job_log(path), repeat)
    inc_s, inc = _time(lambda: _incremental(path), repeat)
    same = "same events" if inc == whole else "EVENTS DIFFER"
    print(f"{label}: {mb:.1f} MiB, {len(whole)} events ({same})")
    print(f"  whole file       {whole_s:6.2f} s  {mb / whole_s:7.1f} MB/s")
    print(f"  1 MiB feeds      {inc_s:6.2f} s  {mb / inc_s:7.1f} MB/s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs")
    ap.add_argument("--newlines", action="store_true", help="also time the log with one update per line")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "job.err"
        start = time.perf_counter()
        steps = synthesize(path, args.size_mb)
        print(f"synthesised {steps} steps in {time.perf_counter() - start:.1f} s (MB = MiB here; one core, Python {sys.version.split()[0]})")
        bench(path, args.repeat, "\\r-separated progress (as Slurm writes tqdm)")
        if args.newlines:
            lines = Path(tmp) / "job_lines.err"
            with open(path, "rb") as src, open(lines, "wb") as dst:
                while data := src.read(16 << 20):
                    dst.write(data.replace(b"\r", b"\n"))
            os.remove(path)
            bench(lines, args.repeat, "one progress update per line")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
