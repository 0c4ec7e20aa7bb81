"""Logs and live progress, read incrementally: each poll reads only the bytes added since the last."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Dict, Optional

from hpc_ft.errors import UserError


def log_path(row: Dict) -> Path:
    return Path(row["run_dir"]) / "logs" / "job.out"


class TailReader:
    """Reads a growing file from a byte offset; cost per poll is the new bytes, not the file size."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = Path(path)
        self.offset = offset

    def read_new(self, limit: int = 1 << 24) -> bytes:
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self.offset:  # truncated or replaced: start over
                    self.offset = 0
                f.seek(self.offset)
                data = f.read(limit)
        except FileNotFoundError:
            return b""
        self.offset += len(data)
        return data


def print_log(row: Dict, lines: Optional[int] = None) -> int:
    path = log_path(row)
    if not path.exists():
        raise UserError(f"{path}: no log yet (the job has not started). Try `hpc-ft status {row['run_id']}`.")
    if lines is None:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                sys.stdout.buffer.write(chunk)
    else:
        sys.stdout.buffer.write(_tail_bytes(path, lines))
    sys.stdout.flush()
    return 0


def _tail_bytes(path: Path, lines: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        pos, data = end, b""
        while pos > 0 and data.count(b"\n") <= lines:
            step = min(1 << 16, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    return b"\n".join(data.split(b"\n")[-lines - 1:])


class RunWatcher:
    """A run's status, polled: parsers keep their place in each log/event file between polls, so a poll
    reads only what was written since the last one (plus a fixed-size log tail), whatever the log size.

    `poll()` returns the same object as `run_status(row)`; `bytes_parsed` counts the event/log bytes read.
    """

    def __init__(self, row: Dict) -> None:
        from hpc_ft.track.run_state import IncrementalSources
        from hpc_ft.track.status import read_record, run_kwargs

        self.row = row
        self.run_dir = Path(row["run_dir"])
        self.sources = IncrementalSources()
        self._kwargs = run_kwargs(read_record(self.run_dir), self.run_dir)  # config.yaml: read once

    @property
    def bytes_parsed(self) -> int:
        return self.sources.bytes_read

    def poll(self, registry=None) -> Dict:
        from hpc_ft.track.run_state import state_from_run_dir
        from hpc_ft.track.status import compose_status, read_record, scheduler_kwargs, scheduler_state

        rec = read_record(self.run_dir)  # small; a resume changes its job ids
        sched = scheduler_state(self.row, rec)
        rs = state_from_run_dir(self.run_dir, self.row.get("backend") or rec.get("backend", "hf"),
                                run_id=self.row["run_id"], sources=self.sources, **scheduler_kwargs(sched),
                                **self._kwargs)
        return compose_status(self.row, rec, sched, rs, registry=registry)


def follow_log(row: Dict, interval: float = 1.0) -> int:
    from hpc_ft.track.status import is_final

    reader = TailReader(log_path(row))
    watcher = RunWatcher(row)
    while True:
        data = reader.read_new()
        if data:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
            continue
        st = watcher.poll()
        if is_final(st):
            data = reader.read_new()
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
            print(f"\nhpc-ft: run {row['run_id']} ended: {st['state']}", file=sys.stderr)
            return 0
        time.sleep(interval)


def progress_line(st: Dict, width: int = 30) -> str:
    step, total = st.get("step") or 0, st.get("max_steps") or 0
    frac = min(1.0, step / total) if total else 0.0
    bar = "#" * int(frac * width) + "." * (width - int(frac * width))
    parts = [f"{st['state']:9}", f"[{bar}] {step}/{total or '?'}"]
    if st.get("train_loss") is not None:
        parts.append(f"loss {st['train_loss']:.4f}")
    if st.get("val_loss") is not None:
        parts.append(f"val {st['val_loss']:.4f}")
    elif st.get("best_val_loss") is not None:
        parts.append(f"best val {st['best_val_loss']:.4f}")
    if st.get("monitor") and st.get("val_metric") is not None:  # a task's own metric (val_f1, ...)
        best = st.get("best_metric")
        parts.append(f"{st['monitor']} {st['val_metric']:.4f}" + (f" (best {best:.4f})" if best is not None else ""))
    sps = st.get("step_time_s")
    if sps:
        parts.append(f"{sps:.3f} s/step")
        if total and step < total and st["state"] == "RUNNING":
            eta = (total - step) * sps
            parts.append(f"ETA {int(eta // 60)}m{int(eta % 60):02d}s")
    if st.get("early_stopped"):
        parts.append("early-stopped")
    return "  ".join(parts)


def watch(row: Dict, interval: float = 2.0) -> int:
    """A live progress line until the run ends (status is rebuilt from incremental readers); returns the exit
    code of how it ended (hpc_ft.track.outcome: 0 only for COMPLETED)."""
    from hpc_ft.track.outcome import UNDECIDED, exit_code_for
    from hpc_ft.track.status import EndWatch

    tty = sys.stdout.isatty()
    last = ""
    watcher = RunWatcher(row)
    ends = EndWatch()
    while True:
        st = watcher.poll()
        line = progress_line(st)
        if line != last:
            sys.stdout.write(("\r\x1b[2K" if tty else "") + line + ("" if tty else "\n"))
            sys.stdout.flush()
            last = line
        if ends.done(st):
            if tty:
                sys.stdout.write("\n")
            if ends.reason:
                print(f"run {row['run_id']}: cannot tell how it ends: {ends.reason}")
                return UNDECIDED
            print(f"run {row['run_id']}: {st['state']}"
                  + (f", best checkpoint {st['best_checkpoint']}" if st.get("best_checkpoint") else ""))
            return exit_code_for(st["state"])
        time.sleep(interval)
