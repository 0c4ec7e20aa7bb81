"""Reads the hf backend's ``events.jsonl`` and Trainer checkpoint folders into track events.

``events.jsonl`` holds one JSON object per line, written by the hf runtime as training goes::

    {"kind": "start", "max_steps": 400, "resumed_from": null, ...}
    {"kind": "train", "step": 10, "loss": 2.1, "step_time_s": 0.03, "tokens_per_s": 31000, ...}
    {"kind": "eval", "step": 25, "val_loss": 1.9}               (a task adds its scores: "val_f1": 0.8, ...)
    {"kind": "checkpoint", "step": 25, "path": ".../checkpoints/checkpoint-25"}
    {"kind": "early_stop", "step": 175, "best_val_loss": 0.83, "best_checkpoint": "..."}
    {"kind": "preempt_saved", "step": 120, "checkpoint": ".../checkpoint-120", "signal": "SIGUSR1"}
    {"kind": "end", "reason": "early_stop", "step": 175, "best_val_loss": 0.83, "best_checkpoint": "...", "best_dir": "..."}
    {"kind": "eval_result", "accuracy": 0.62, "base_accuracy": 0.2, "n": 60, ...}
                                                                (a task adds "metrics": {...}, "base_metrics": {...})

(as ``hpc_ft/backends/hf_runtime`` writes them; ``end`` reasons: max_steps, early_stop, preempted).

The file is read while it is being written, so an unfinished last line is left for later
(``HfEventsReader``) or ignored at the end (``read_hf_events``); a line that is not a JSON object
is skipped and counted in ``skipped``. Relative paths are resolved against ``base_dir``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc_ft.track.events import (
    AttemptStarted,
    CheckpointSaved,
    EarlyStop,
    EndCause,
    EvalResult,
    Event,
    Failure,
    FinalArtifact,
    MaxStepsReached,
    PreemptSaved,
    Progress,
    RunFiles,
    TrainEnd,
    ValLoss,
    ValScores,
    last_value,
    local_path,
    merge_attempts,
)

# How an ``end`` record's reason maps to the events the classifier reads.
_REASON_EARLY = re.compile(r"early", re.I)
_REASON_DONE = re.compile(r"max_steps|max_epochs|complete|finished|done|success", re.I)
_REASON_RESUMABLE = re.compile(r"preempt|sigterm|signal|time ?limit|timeout", re.I)
_REASON_GPU_OOM = re.compile(r"cuda out of memory|outofmemoryerror|\boom\b", re.I)
_REASON_NCCL = re.compile(r"nccl", re.I)
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    number = _num(value)
    return int(number) if number is not None else None


class HfEventsReader:
    """Incremental reader of ``events.jsonl``: ``feed`` bytes, get events; ``finish`` at the end."""

    def __init__(self, base_dir: str | os.PathLike | None = None) -> None:
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.offset = 0
        self.skipped = 0  # lines that were not JSON objects
        self._carry = b""
        self._max_steps: int | None = None
        self._val_loss: float | None = None
        self._early_stopped = False  # in this attempt
        self._preempt_saved = False  # in this attempt

    def _path(self, value: Any) -> str | None:
        if not isinstance(value, str) or not value:
            return None
        path = Path(value)
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        return str(path)

    def feed(self, chunk: bytes) -> list[Event]:
        self.offset += len(chunk)
        data = self._carry + chunk
        cut = data.rfind(b"\n") + 1
        self._carry = data[cut:]
        events: list[Event] = []
        for line in data[:cut].split(b"\n"):
            self._line(line, events)
        return events

    def finish(self) -> list[Event]:
        """Parse a last line without newline if it is complete JSON; drop it otherwise."""
        line, self._carry = self._carry, b""
        events: list[Event] = []
        if line.strip():
            try:
                json.loads(line)
            except ValueError:
                return events  # still being written
            self._line(line, events)
        return events

    def feed_file(self, path: str | os.PathLike, chunk_size: int = 1 << 20) -> list[Event]:
        """Read ``path`` from ``offset`` to its current end."""
        events: list[Event] = []
        with open(path, "rb") as f:
            f.seek(self.offset)
            while chunk := f.read(chunk_size):
                events.extend(self.feed(chunk))
        return events

    def _line(self, line: bytes, events: list[Event]) -> None:
        if not line.strip():
            return
        try:
            record = json.loads(line)
        except ValueError:
            self.skipped += 1
            return
        if not isinstance(record, dict):
            self.skipped += 1
            return
        events.extend(self.record_events(record))

    def record_events(self, record: dict[str, Any]) -> list[Event]:
        """The events one ``events.jsonl`` record stands for (unknown kinds give none)."""
        kind = record.get("kind", record.get("event", record.get("type")))
        step = _int(record.get("step"))
        if "max_steps" in record and _int(record["max_steps"]) is not None:
            self._max_steps = _int(record["max_steps"])

        if kind == "start":
            self._early_stopped = self._preempt_saved = False
            out: list[Event] = [AttemptStarted("hf")]
            resumed = record.get("resumed_from")
            if step is None:  # a fresh start is step 0; a resume starts at its checkpoint's step
                m = _CHECKPOINT_DIR.match(Path(resumed).name) if isinstance(resumed, str) else None
                step = int(m[1]) if m else (0 if not resumed else None)
            if step is not None:
                out.append(Progress(step=step, max_steps=self._max_steps, val_loss=self._val_loss))
            return out
        if kind == "train":
            if step is None:
                return []
            return [
                Progress(
                    step=step,
                    max_steps=self._max_steps,
                    train_loss=_num(record.get("loss", record.get("train_loss"))),
                    val_loss=self._val_loss,
                    step_time_s=_num(record.get("step_time_s")),
                    tokens_per_s=_num(record.get("tokens_per_s")),
                    epoch=_int(record.get("epoch")),
                )
            ]
        if kind == "eval":
            val = _num(record.get("val_loss", record.get("eval_loss")))
            if step is None or val is None:
                return []
            self._val_loss = val
            scores = {k: v for k, v in record.items() if k.startswith("val_") and k != "val_loss"}
            return [ValLoss(step, val)] + ([ValScores(step, scores)] if scores else [])
        if kind == "checkpoint":
            path = self._path(record.get("path", record.get("checkpoint", record.get("dir"))))
            if path is None and step is not None:
                path = self._path(f"checkpoints/checkpoint-{step}")
            if path is None:
                return []
            return [CheckpointSaved(path, step, _num(record.get("val_loss")), record.get("monitor"))]
        if kind == "early_stop":
            self._early_stopped = True
            return [EarlyStop(step, _num(record.get("best_val_loss")), _int(record.get("patience")), record.get("monitor"))]
        if kind == "preempt_saved":
            self._preempt_saved = True
            return [PreemptSaved(step, self._path(record.get("path", record.get("checkpoint"))))]
        if kind == "eval_result":
            return [EvalResult(_num(record.get("accuracy")), _num(record.get("base_accuracy")),
                               record.get("metrics") or (), record.get("base_metrics") or ())]
        if kind == "end":
            return self._end(record, step)
        return []

    def _end(self, record: dict[str, Any], step: int | None) -> list[Event]:
        reason = str(record.get("reason") or "")
        best = _num(record.get("best_val_loss"))
        monitor = record.get("monitor") if isinstance(record.get("monitor"), str) else None
        out: list[Event] = [TrainEnd(reason, step, best, self._path(record.get("best_checkpoint")),
                                     monitor, _num(record.get("best_metric")))]
        best_dir = self._path(record.get("best_dir"))
        if best_dir is not None:  # the best adapter/model saved at the end of training
            out.append(FinalArtifact(best_dir))
        text = f"{reason} {record.get('error') or ''}".strip()
        if _REASON_EARLY.search(reason):
            if not self._early_stopped:
                self._early_stopped = True
                out.append(EarlyStop(step, best, _int(record.get("patience"))))
        elif _REASON_DONE.search(reason):
            out.append(MaxStepsReached(self._max_steps))
        elif _REASON_GPU_OOM.search(text):
            out.append(Failure(EndCause.GPU_OOM, text))
        elif _REASON_NCCL.search(text):
            timeout = re.search(r"time ?out|watchdog", text, re.I)
            out.append(Failure(EndCause.NCCL_TIMEOUT if timeout else EndCause.NCCL_ERROR, text))
        elif _REASON_RESUMABLE.search(reason):
            if not self._preempt_saved:
                self._preempt_saved = True
                out.append(PreemptSaved(step, self._path(record.get("checkpoint"))))
        elif text:
            out.append(Failure(EndCause.ERROR, text))
        return out


def read_hf_events(path: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> list[Event]:
    """All events of an ``events.jsonl`` (missing file: none). ``base_dir`` defaults to its folder."""
    path = Path(path)
    if not path.is_file():
        return []
    reader = HfEventsReader(base_dir if base_dir is not None else path.parent)
    events = reader.feed_file(path)
    events.extend(reader.finish())
    return events


# ---- Trainer checkpoint folders --------------------------------------------------------------


@dataclass(frozen=True)
class HfCheckpoint:
    path: Path
    step: int
    complete: bool  # trainer_state.json written (the Trainer writes it last)
    best_model_checkpoint: str | None  # as trainer_state.json records it
    best_metric: float | None


@dataclass
class HfCheckpointSummary:
    checkpoints: list[HfCheckpoint]  # by step
    last: HfCheckpoint | None  # newest complete checkpoint
    best_path: Path | None  # from the newest trainer_state.json, mapped into this folder
    best_metric: float | None


def _resolve_checkpoint(directory: Path, recorded: str | None) -> Path | None:
    """trainer_state.json records the path the Trainer saw (often relative to its cwd, or inside
    a container); map it onto ``directory/checkpoint-N`` when that exists."""
    if not recorded:
        return None
    path = Path(recorded)
    local = directory / path.name
    if local.is_dir():
        return local
    return path if path.is_absolute() and path.exists() else None


def scan_hf_checkpoints(directory: str | os.PathLike) -> HfCheckpointSummary:
    """The ``checkpoint-N`` folders of a Trainer output dir, the last one and the best one."""
    directory = Path(directory)
    checkpoints = []
    if directory.is_dir():
        for entry in directory.iterdir():
            m = _CHECKPOINT_DIR.match(entry.name)
            if not (m and entry.is_dir()):
                continue
            state_file = entry / "trainer_state.json"
            best_ckpt, best_metric, complete = None, None, False
            if state_file.is_file():
                try:
                    state = json.loads(state_file.read_text())
                    best_ckpt = state.get("best_model_checkpoint")
                    best_metric = _num(state.get("best_metric"))
                    complete = True
                except (ValueError, OSError):
                    complete = False
            checkpoints.append(HfCheckpoint(entry, int(m[1]), complete, best_ckpt, best_metric))
    checkpoints.sort(key=lambda c: c.step)
    complete = [c for c in checkpoints if c.complete]
    last = complete[-1] if complete else None
    best_path = _resolve_checkpoint(directory, last.best_model_checkpoint) if last else None
    return HfCheckpointSummary(checkpoints, last, best_path, last.best_metric if last else None)


def read_hf_run(run_dir: Path, reader, sources: list, log_files: list[Path], **_):
    """An hf run's RunFiles: events.jsonl merged with the Slurm logs' events, and the Trainer checkpoints
    (the best as the end record names it, else by trainer_state.json)."""
    events = merge_attempts(reader.hf_events(run_dir / "events.jsonl", run_dir), *sources)
    found = RunFiles(events=events, log_files=list(log_files))
    folder = run_dir / "checkpoints"
    hf = scan_hf_checkpoints(folder)
    logged_best = last_value(events, TrainEnd, "best_checkpoint")
    if logged_best:
        found.fields["best_checkpoint"] = local_path(logged_best, folder)
    elif hf.best_path is not None:
        found.fields["best_checkpoint"] = str(hf.best_path)
    if hf.best_metric is not None and last_value(events, TrainEnd, "best_val_loss") is None:
        found.fields["best_value"] = hf.best_metric
    if hf.last is not None:
        found.fields["last_checkpoint"] = str(hf.last.path)
    final = last_value(events, FinalArtifact, "path")
    if final:
        found.fields["final_artifact"] = local_path(final, folder)
    return found
