"""Builds one RunState for a run directory from its logs, event file and checkpoint folder.

Run directory layouts read here::

    nemo:  <run_dir>/logs/job.out, job.err          Slurm stdout/stderr (NeMo console output)
           <exp_dir>/<exp_manager.name>/             NeMo's exp dir (default exp_dir: <run_dir>/nemo): checkpoints/, run_N/, rank logs
    hf:    <run_dir>/events.jsonl                    the hf runtime's event file
           <run_dir>/checkpoints/checkpoint-N/       Trainer checkpoints (trainer_state.json)
           <run_dir>/logs/job.out, job.err
    both:  <run_dir>/predictions/*.jsonl             eval outputs; a name with "base" = base model
           events.out.tfevents.*                     TensorBoard scalars (nemo: under <exp_dir>/<name>/,
                                                     hf: under <run_dir>/), read when the logs show no progress

How files are read is an ``EventSources``: by default each is parsed whole; ``IncrementalSources``
(``watch``) keeps one incremental parser per file, so a poll reads only the bytes added since the last.

The Slurm state and exit code are not read here: the caller passes them in.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc_ft.errors import UserError
from hpc_ft.track.accuracy import score_predictions
from hpc_ft.track.causes import REQUEUE_CAUSES, explain_end, last_attempt, normalize_slurm_state
from hpc_ft.track.events import (
    BestRestored,
    CheckpointSaved,
    EarlyStop,
    EndCause,
    EvalResult,
    Event,
    FinalArtifact,
    MaxStepsReached,
    PreemptSaved,
    Progress,
    TrainEnd,
    ValLoss,
    ValScores,
    last_value,
    split_attempts,
)
from hpc_ft.backends.base import BACKEND_NAMES, get_backend
from hpc_ft.track.hf_events import HfEventsReader, read_hf_events
from hpc_ft.track.nemo_checkpoints import parse_checkpoint_name, slurm_default_logs
from hpc_ft.track.job_log import JobLogParser, log_tail, parse_job_log
from hpc_ft.track.tensorboard import TbScalarsReader, find_event_files, read_tb_events

SLURM_LOGS = ("job.out", "job.err")
REASON_TAIL_LINES = 400  # searched for the error line; tracebacks of several ranks are long


@dataclass
class RunState:
    """Everything `status`/`watch` show about one run, built from files the run left on disk."""

    run_id: str
    job_id: str | None = None
    state: str | None = None  # the Slurm state passed in (normalised), None when unknown
    step: int | None = None
    max_steps: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None  # the latest validation loss
    best_val_loss: float | None = None
    best_checkpoint: str | None = None  # absolute path; NeMo: un-injected (as NeMo resumes it)
    last_checkpoint: str | None = None  # the checkpoint a resume would start from
    final_artifact: str | None = None  # NeMo: checkpoints/<name>.nemo
    early_stopped: bool = False
    end_cause: EndCause = EndCause.UNKNOWN
    end_reason: str = ""
    accuracy: float | None = None
    base_accuracy: float | None = None
    monitor: str | None = None  # the task's monitored metric (val_f1, ...); None: val_loss
    val_metric: float | None = None  # its latest value
    best_metric: float | None = None  # its best value (the best checkpoint's)
    metrics: dict | None = None  # the eval's figures by name (accuracy, f1, log_loss, ...)
    base_metrics: dict | None = None  # the same for the untuned model
    step_time_s: float | None = None
    tokens_per_s: float | None = None
    log_tail: str = ""
    requeues: int = 0
    attempts: int = 0
    backend: str = "nemo"
    notes: list[str] = field(default_factory=list)  # problems met while reading the run dir

    @property
    def requeueable(self) -> bool:
        return self.end_cause in REQUEUE_CAUSES

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["end_cause"] = self.end_cause.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunState":
        data = dict(data)
        data["end_cause"] = EndCause(data.get("end_cause", EndCause.UNKNOWN.value))
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _max_known(*values: int | None) -> int | None:
    """The furthest step any event reports (the end record is newer than the last logged step)."""
    known = [v for v in values if v is not None]
    return max(known) if known else None


def _finite(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def _tail(files: list[Path], lines: int) -> str:
    present = [p for p in files if p.is_file()]
    if len(present) == 1:
        return log_tail(present[0], lines)
    parts = []
    for p in present:
        text = log_tail(p, lines)
        if text:
            parts.append(f"==> {p.name} <==\n{text}")
    return "\n".join(parts)


class EventSources:
    """How ``state_from_run_dir`` reads event files: each file parsed whole, on every call."""

    def job_log(self, path: Path) -> list[Event]:
        return parse_job_log(path)

    def hf_events(self, path: Path, base_dir: Path) -> list[Event]:
        return read_hf_events(path, base_dir)

    def tb_events(self, files: list[Path]) -> list[Event]:
        return read_tb_events(files)


def _append_compact(events: list[Event], new: list[Event]) -> None:
    """Append, keeping only the last of consecutive Progress samples (all a RunState reads of them)."""
    for e in new:
        if isinstance(e, Progress) and events and isinstance(events[-1], Progress):
            events[-1] = e
        else:
            events.append(e)


class IncrementalSources(EventSources):
    """One incremental parser per file: each call reads only what was appended since the last call, so
    the cost of a poll does not grow with the size of the logs. ``bytes_read`` counts what was read."""

    def __init__(self) -> None:
        self.bytes_read = 0
        self._logs: dict[Path, tuple[JobLogParser, list[Event]]] = {}
        self._hf: dict[Path, tuple[HfEventsReader, list[Event]]] = {}
        self._tb = TbScalarsReader()

    def job_log(self, path: Path) -> list[Event]:
        parser, events = self._logs.get(path) or (JobLogParser(), [])
        offset, head = parser.offset, parser.head
        try:
            new = parser.feed_file(path)
        except FileNotFoundError:
            return list(events)
        if parser.offset < offset or not parser.head.startswith(head):  # the file was replaced: parsed anew
            events = []
            self.bytes_read += parser.offset
        else:
            self.bytes_read += parser.offset - offset
        _append_compact(events, new)
        self._logs[path] = (parser, events)
        pending = parser.progress  # an update still waiting for its line end
        if pending is not None and not (events and events[-1] == pending):
            return events + [pending]
        return list(events)

    def hf_events(self, path: Path, base_dir: Path) -> list[Event]:
        reader, events = self._hf.get(path) or (HfEventsReader(base_dir), [])
        offset = reader.offset
        try:
            if Path(path).stat().st_size < offset:  # replaced: start over
                reader, events, offset = HfEventsReader(base_dir), [], 0
            new = reader.feed_file(path)
        except FileNotFoundError:
            return list(events)
        self.bytes_read += reader.offset - offset
        _append_compact(events, new)
        self._hf[path] = (reader, events)
        return list(events)

    def tb_events(self, files: list[Path]) -> list[Event]:
        before = self._tb.bytes_read
        for p in files:
            self._tb.feed_file(p)
        self.bytes_read += self._tb.bytes_read - before
        return self._tb.events()


def _slurm_log_events(run_dir: Path, sources: EventSources) -> tuple[list[list[Event]], list[Path]]:
    """The Slurm logs: hpc-ft's logs/job.out and job.err, else the slurm-<jobid>.out files that a job
    submitted by hand (the tutorial's way) leaves at the top of its folder."""
    paths = []
    for name in SLURM_LOGS:
        p = run_dir / "logs" / name
        if p.is_file() and not any(p.samefile(q) for q in paths):
            paths.append(p)
    if not paths:
        paths = slurm_default_logs(run_dir)
    return [sources.job_log(p) for p in paths], paths


def _predictions_accuracy(run_dir: Path, notes: list[str]) -> tuple[float | None, float | None]:
    folder = run_dir / "predictions"
    if not folder.is_dir():
        return None, None
    accuracy = base = None
    for path in sorted(folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime):
        try:
            report = score_predictions(path)
        except UserError as exc:
            notes.append(str(exc))
            continue
        if "base" in path.name.lower():
            base = report.accuracy
        else:
            accuracy = report.accuracy
    return accuracy, base


def _task_scores(events: list[Event], monitor: str | None, better) -> dict[str, Any]:
    """monitor / val_metric / best_metric / metrics / base_metrics of a task run (all None for SFT)."""
    monitor = last_value(events, TrainEnd, "monitor") or monitor
    if monitor == "val_loss":
        monitor = None
    values = [dict(e.scores).get(monitor) for e in events if isinstance(e, ValScores)] if monitor else []
    values = [v for v in values if _finite(v)]
    best = last_value(events, TrainEnd, "best_metric")
    if best is None and values:
        best = better(values)
    metrics = last_value(events, EvalResult, "metrics")
    base = last_value(events, EvalResult, "base_metrics")
    return {"monitor": monitor, "val_metric": values[-1] if values else None, "best_metric": best if monitor else None,
            "metrics": dict(metrics) if metrics else None, "base_metrics": dict(base) if base else None}


def state_from_events(
    run_id: str,
    backend: str,
    events: list[Event],
    *,
    slurm_state: str | None = None,
    exit_code: int | None = None,
    job_id: str | None = None,
    requeues: int | None = None,
    max_steps: int | None = None,
    log_tail_text: str = "",
    reason_tail: str | None = None,
    best_checkpoint: str | None = None,
    best_value: float | None = None,
    best_step: int | None = None,
    last_checkpoint: str | None = None,
    final_artifact: str | None = None,
    mode: str = "min",
    monitor: str | None = None,
    monitor_mode: str = "max",
) -> RunState:
    """A RunState from already-parsed events (``watch`` keeps incremental parsers and calls this).

    ``best_*``/``last_checkpoint``/``final_artifact`` come from the checkpoint folder; missing
    ones are filled from the events. A ``final_artifact`` is added to the events as
    ``FinalArtifact`` before the end is classified. ``reason_tail``: a longer log tail to find
    the error line in (default: ``log_tail_text``).
    """
    events = list(events)
    if final_artifact is not None and not any(isinstance(e, FinalArtifact) for e in events):
        events.append(FinalArtifact(final_artifact))
    tail = log_tail_text if reason_tail is None else reason_tail
    verdict = explain_end(slurm_state, exit_code, events, tail, require_artifact=get_backend(backend).requires_final_artifact)
    attempt = last_attempt(events)
    better = min if mode == "min" else max

    # best validation loss: the most precise value logged for the best checkpoint's step
    best_val = None
    saved_vals = [e for e in events if isinstance(e, CheckpointSaved) and _finite(e.val_loss)]
    val_events = [e for e in events if isinstance(e, ValLoss) and _finite(e.val_loss)]
    if best_step is not None:
        best_val = next((e.val_loss for e in reversed(saved_vals) if e.step == best_step), None)
        if best_val is None:
            best_val = next((e.val_loss for e in reversed(val_events) if e.step == best_step), None)
    if best_val is None and best_value is not None and _finite(best_value):
        best_val = best_value
    if best_val is None:
        # what the framework itself called best: the trainer's end record, NeMo's early-stopping line
        # ("Best score: 0.074"), ModelCheckpoint's "'validation_loss' reached X"; the progress bar's
        # val_loss only when none of those was logged (and then its best, never its last value)
        end = last_value(events, TrainEnd, "best_val_loss")
        early_best = last_value(events, EarlyStop, "best_score")
        if end is not None:
            best_val = end
        elif saved_vals:
            best_val = better(e.val_loss for e in saved_vals)
        elif early_best is not None and _finite(early_best):
            best_val = early_best
        elif val_events:
            best_val = better(e.val_loss for e in val_events)

    if best_checkpoint is None:
        best_checkpoint = last_value(events, TrainEnd, "best_checkpoint") or last_value(events, BestRestored, "path")
        if best_checkpoint is None and saved_vals:
            best_checkpoint = better(saved_vals, key=lambda e: e.val_loss).path
    if last_checkpoint is None:
        last_checkpoint = last_value(events, PreemptSaved, "path") or last_value(events, CheckpointSaved, "path")

    attempts = len(split_attempts(events)) if events else 0
    early = any(isinstance(e, EarlyStop) for e in attempt)
    task = _task_scores(events, monitor, max if monitor_mode == "max" else min)
    return RunState(
        run_id=run_id,
        job_id=job_id,
        state=normalize_slurm_state(slurm_state),
        step=_max_known(last_value(events, Progress, "step"), last_value(events, TrainEnd, "step"),
                        last_value(events, EarlyStop, "step")),
        max_steps=last_value(events, MaxStepsReached, "max_steps") or last_value(events, Progress, "max_steps") or max_steps,
        train_loss=last_value(events, Progress, "train_loss"),
        val_loss=last_value(events, ValLoss, "val_loss"),
        best_val_loss=best_val,
        best_checkpoint=best_checkpoint,
        last_checkpoint=last_checkpoint,
        final_artifact=final_artifact or last_value(events, FinalArtifact, "path"),
        early_stopped=early,
        end_cause=verdict.cause,
        end_reason=verdict.reason + (f" | {verdict.line}" if verdict.line and verdict.line not in verdict.reason else ""),
        accuracy=last_value(events, EvalResult, "accuracy"),
        base_accuracy=last_value(events, EvalResult, "base_accuracy"),
        **task,
        step_time_s=last_value(events, Progress, "step_time_s"),
        tokens_per_s=last_value(events, Progress, "tokens_per_s"),
        log_tail=log_tail_text,
        requeues=requeues if requeues is not None else max(0, attempts - 1),
        attempts=attempts,
        backend=backend,
    )


def state_from_run_dir(
    run_dir: str | Path,
    backend: str,
    slurm_state: str | None = None,
    exit_code: int | None = None,
    *,
    run_id: str | None = None,
    job_id: str | None = None,
    requeues: int | None = None,
    exp_name: str | None = None,
    max_steps: int | None = None,
    expected_ranks: int | None = None,
    mode: str = "min",
    tail_lines: int = 40,
    nemo_exp_root: str | Path | None = None,
    sources: EventSources | None = None,
    monitor: str | None = None,
    monitor_mode: str = "max",
) -> RunState:
    """Parse a run directory (layout in the module docstring) into a RunState.

    ``exp_name``: NeMo's ``exp_manager.name`` (default: the folder under ``<run_dir>/nemo``);
    ``expected_ranks``: TP x PP, so a checkpoint missing a whole rank folder is not complete;
    ``requeues``: from the scheduler; default = attempts found in the logs - 1;
    ``nemo_exp_root``: NeMo's ``exp_manager.exp_dir`` (the folder holding ``<exp_name>/``), default
    ``<run_dir>/nemo``; ``sources``: how files are read (default: each parsed whole).
    """
    if backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, not {backend!r}")
    run_dir = Path(run_dir).resolve()
    reader = sources or EventSources()
    sources, log_files = _slurm_log_events(run_dir, reader)
    found = get_backend(backend).read_run(
        run_dir, reader, sources, log_files,
        dict(exp_name=exp_name, nemo_exp_root=nemo_exp_root, mode=mode, expected_ranks=expected_ranks))
    events, kwargs, notes = found.events, dict(found.fields), list(found.notes)
    tb_root, log_files = found.tb_root or run_dir, found.log_files or log_files

    if not any(isinstance(e, Progress) and e.step > 0 for e in events):
        # the logs show no progress (NeMo's progress bar off, a quiet Trainer): TensorBoard's scalars may
        tb_files = find_event_files(tb_root)
        if tb_files:
            events = events + reader.tb_events(tb_files)

    state = state_from_events(
        run_id or run_dir.name,
        backend,
        events,
        slurm_state=slurm_state,
        exit_code=exit_code,
        job_id=job_id,
        requeues=requeues,
        max_steps=max_steps,
        log_tail_text=_tail(log_files, tail_lines),
        reason_tail=_tail(log_files, REASON_TAIL_LINES),
        mode=mode,
        monitor=monitor,
        monitor_mode=monitor_mode,
        **kwargs,
    )
    if state.accuracy is None and state.base_accuracy is None:
        state.accuracy, state.base_accuracy = _predictions_accuracy(run_dir, notes)
    state.notes.extend(notes)
    return state


_HF_CHECKPOINT = re.compile(r"checkpoint-(\d+)$")


def checkpoint_step(path: str | None) -> int | None:
    """The training step a checkpoint path was saved at (NeMo's `...-step=N-...ckpt`, HF's `checkpoint-N`).

    `status` decides which checkpoint is the best (``RunState.best_checkpoint``); `plot` marks that one,
    at this step, so the two never disagree."""
    if not path:
        return None
    name = Path(path).name
    parsed = parse_checkpoint_name(name)
    if parsed is not None:
        return parsed.step
    m = _HF_CHECKPOINT.search(name)
    return int(m[1]) if m else None
