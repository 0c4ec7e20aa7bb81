"""The events file: append-only JSON lines, one flushed line per event, the contract between the node programs and the tracker."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any


class EventLog:
    """Appends `{"kind": ..., "time": ..., ...}` lines to a file; a no-op when path is None or on ranks other than 0."""

    def __init__(self, path: str | os.PathLike | None, enabled: bool = True):
        self.path = Path(path).expanduser().resolve() if path else None
        self.enabled = enabled and self.path is not None
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, kind: str, **fields: Any) -> dict:
        event = {"kind": kind, **fields}
        event.setdefault("time", time.time())
        if self.enabled:
            line = json.dumps(event, ensure_ascii=False, default=str)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")
                handle.flush()
        return event


def read_events(path: str | os.PathLike) -> list[dict]:
    """All events of a file, skipping a torn last line (the writer may have been killed mid-write)."""
    events = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def say(message: str) -> None:
    """One human-readable progress line on stdout, flushed so Slurm logs show it at once.

    The line and its newline go out in one write: print() writes them separately, and under
    PYTHONUNBUFFERED (or `python -u`) two ranks sharing one log could then interleave mid-line."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def eval_main(name: str, parser, run, argv) -> int:
    """An eval program's entry (generate, task_eval): run(args); any failure is written as an `error` event;
    a user's mistake (UserError) is one line on stderr and exit code 2, anything else its traceback."""
    from hpc_ft.errors import UserError

    args = parser.parse_args(argv)
    try:
        run(args)
    except Exception as exc:
        EventLog(args.events).write("error", type=type(exc).__name__, message=str(exc)[:2000])
        if not isinstance(exc, UserError):
            raise
        print(f"{name}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0
