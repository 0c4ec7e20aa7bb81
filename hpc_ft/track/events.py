"""The events every log/event-file parser emits, and the end causes a run can be classified into.

Parsers (``job_log``, ``hf_events``) turn framework output into a list of these small frozen
dataclasses, in the order things happened. ``causes.classify_end`` and ``run_state`` read only
these types, so a new backend needs one parser and nothing else.

Events are hashable (parsers use that to drop the duplicate lines every rank prints) and
round-trip through plain dicts (``event_to_dict`` / ``event_from_dict``) for caches and the
registry.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

# Printed by the hpc-ft run program at the start of every attempt (first run and each requeue),
# to stdout and to stderr, e.g. "[hpc-ft] attempt 2 start job=1234 restart=1". Parsers split a
# log into attempts at this line; NeMo's own start-up lines are only a fallback.
ATTEMPT_MARKER = "[hpc-ft] attempt"


class EndCause(str, enum.Enum):
    """Why a run ended (or that it has not ended). The value is the name, so it stores as text."""

    COMPLETED = "COMPLETED"  # training reached max_steps (and, for NeMo, wrote the final .nemo)
    EARLY_STOPPED = "EARLY_STOPPED"  # the early-stopping callback ended training; also a success
    TIMEOUT = "TIMEOUT"  # Slurm time limit (or a framework time limit); resumable
    PREEMPTED = "PREEMPTED"  # Slurm preemption, or SIGTERM handled by saving and exiting 0; resumable
    CANCELLED = "CANCELLED"  # scancel by a person (or a deadline): never requeued
    GPU_OOM = "GPU_OOM"  # CUDA out of memory
    HOST_OOM = "HOST_OOM"  # the Slurm cgroup OOM killer (host RAM)
    NCCL_TIMEOUT = "NCCL_TIMEOUT"  # the NCCL watchdog caught a collective that hung
    NCCL_ERROR = "NCCL_ERROR"  # any other NCCL / distributed-backend failure
    CONFIG_ERROR = "CONFIG_ERROR"  # Hydra/OmegaConf rejected the config before training started
    NODE_FAIL = "NODE_FAIL"  # Slurm NODE_FAIL / BOOT_FAIL, or srun reported a node failure
    ERROR = "ERROR"  # any other failure; the log tail says what
    RUNNING = "RUNNING"  # not ended: pending, running, requeued
    UNKNOWN = "UNKNOWN"  # not enough evidence either way

    @property
    def ended(self) -> bool:
        """True for every cause except RUNNING and UNKNOWN."""
        return self not in (EndCause.RUNNING, EndCause.UNKNOWN)

    @property
    def succeeded(self) -> bool:
        """True when training finished as configured (max steps or early stop)."""
        return self in (EndCause.COMPLETED, EndCause.EARLY_STOPPED)


@dataclass(frozen=True)
class AttemptStarted:
    """A (re)start of the training program; everything after it belongs to this attempt."""

    source: str  # "hpc-ft", "nemo", "lightning", "torchrun" or "hf"


@dataclass(frozen=True)
class Progress:
    """Training progress at one point: the latest values the progress bar / event file showed."""

    step: int
    max_steps: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None  # the last validation loss known at this step
    step_time_s: float | None = None
    consumed_samples: float | None = None
    tokens_per_s: float | None = None
    epoch: int | None = None


@dataclass(frozen=True)
class ValLoss:
    """A new validation result."""

    step: int
    val_loss: float


@dataclass(frozen=True)
class CheckpointSaved:
    """A checkpoint written. NeMo paths are un-injected (no mp_rank_XX folder)."""

    path: str
    step: int | None
    val_loss: float | None = None  # the monitored value, when the log states it
    monitor: str | None = None


@dataclass(frozen=True)
class CheckpointRemoved:
    """A checkpoint pruned by top-k / last rotation (un-injected path)."""

    path: str


@dataclass(frozen=True)
class EarlyStop:
    """The early-stopping callback asked the trainer to stop."""

    step: int | None
    best_score: float | None
    patience: int | None  # the number of records without improvement, when stated
    monitor: str | None = None
    non_finite: bool = False  # stopped because the monitored metric became NaN/inf


@dataclass(frozen=True)
class MaxStepsReached:
    """The fit loop ended because it reached its step (or epoch) limit."""

    max_steps: int | None
    max_epochs: int | None = None


@dataclass(frozen=True)
class Resumed:
    """Training state restored from a checkpoint at the start of an attempt."""

    path: str


@dataclass(frozen=True)
class BestRestored:
    """At the end of training the best checkpoint was loaded back (before saving the final model)."""

    path: str


@dataclass(frozen=True)
class FinalArtifact:
    """The final model artifact (NeMo: ``checkpoints/<name>.nemo``) exists."""

    path: str


@dataclass(frozen=True)
class PreemptSaved:
    """SIGTERM was handled by saving a checkpoint and exiting cleanly (resumable)."""

    step: int | None
    path: str | None = None


@dataclass(frozen=True)
class TrainEnd:
    """The training program reported its own end (hf backend ``end`` record)."""

    reason: str
    step: int | None = None
    best_val_loss: float | None = None
    best_checkpoint: str | None = None
    monitor: str | None = None  # the metric the best checkpoint follows, when not val_loss (val_f1, ...)
    best_metric: float | None = None  # its best value


def score_pairs(value: Any) -> tuple:
    """Metrics as sorted (name, value) pairs (hashable), from a mapping or from pairs read back from JSON."""
    items = value.items() if isinstance(value, dict) else (value or ())
    return tuple(sorted((str(k), float(v)) for k, v in items if isinstance(v, (int, float)) and not isinstance(v, bool)))


@dataclass(frozen=True)
class ValScores:
    """A task's validation metrics at one evaluation (val_f1, val_accuracy, ...), besides ValLoss."""

    step: int
    scores: tuple = ()  # ((name, value), ...)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scores", score_pairs(self.scores))


@dataclass(frozen=True)
class EvalResult:
    """Accuracy of the fine-tuned model (and of the base model) on the evaluation set; a task's metrics by name."""

    accuracy: float | None
    base_accuracy: float | None = None
    metrics: tuple = ()  # ((name, value), ...): accuracy, f1, log_loss, ... of the fine-tuned model
    base_metrics: tuple = ()  # the same for the untuned model

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", score_pairs(self.metrics))
        object.__setattr__(self, "base_metrics", score_pairs(self.base_metrics))


@dataclass(frozen=True)
class Failure:
    """A log line that names a failure; ``cause`` is the end cause it points to."""

    cause: EndCause
    line: str


Event = Union[
    AttemptStarted,
    Progress,
    ValLoss,
    ValScores,
    CheckpointSaved,
    CheckpointRemoved,
    EarlyStop,
    MaxStepsReached,
    Resumed,
    BestRestored,
    FinalArtifact,
    PreemptSaved,
    TrainEnd,
    EvalResult,
    Failure,
]

EVENT_KINDS: dict[str, type] = {
    "attempt_started": AttemptStarted,
    "progress": Progress,
    "val_loss": ValLoss,
    "val_scores": ValScores,
    "checkpoint_saved": CheckpointSaved,
    "checkpoint_removed": CheckpointRemoved,
    "early_stop": EarlyStop,
    "max_steps_reached": MaxStepsReached,
    "resumed": Resumed,
    "best_restored": BestRestored,
    "final_artifact": FinalArtifact,
    "preempt_saved": PreemptSaved,
    "train_end": TrainEnd,
    "eval_result": EvalResult,
    "failure": Failure,
}
_KIND_OF: dict[type, str] = {cls: kind for kind, cls in EVENT_KINDS.items()}


def event_to_dict(event: Event) -> dict[str, Any]:
    """``{"kind": ..., field: value, ...}`` with the end cause as its name; JSON-serialisable."""
    out: dict[str, Any] = {"kind": _KIND_OF[type(event)]}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        out[f.name] = value.value if isinstance(value, EndCause) else value
    return out


def event_from_dict(data: dict[str, Any]) -> Event:
    """Inverse of ``event_to_dict``. Raises KeyError/TypeError on an unknown kind or field."""
    fields = dict(data)
    cls = EVENT_KINDS[fields.pop("kind")]
    if cls is Failure:
        fields["cause"] = EndCause(fields["cause"])
    return cls(**fields)


def split_attempts(events: list[Event]) -> list[list[Event]]:
    """Split an event list at each AttemptStarted. Events before the first marker form attempt 0.

    Always returns at least one (possibly empty) attempt; an AttemptStarted opens its attempt.
    """
    attempts: list[list[Event]] = [[]]
    for event in events:
        if isinstance(event, AttemptStarted) and attempts[-1]:
            attempts.append([])
        attempts[-1].append(event)
    return attempts


def merge_attempts(*sources: list[Event]) -> list[Event]:
    """Merge the event lists of files written side by side (stdout and stderr of one job).

    Each source is split into attempts and the attempts are aligned from the end (the last
    attempt of every source is the current one). Within an attempt the sources keep their
    order, one after the other, so cross-file order inside an attempt is not meaningful.
    """
    split = [split_attempts(s) for s in sources if s]
    if not split:
        return []
    n = max(len(s) for s in split)
    merged: list[Event] = []
    for i in range(n):
        starts: list[Event] = []
        rest: list[Event] = []
        for attempts in split:
            k = i - (n - len(attempts))
            if k < 0:
                continue
            for event in attempts[k]:
                if isinstance(event, AttemptStarted):
                    if not starts:
                        starts.append(event)
                else:
                    rest.append(event)
        merged.extend(starts)
        merged.extend(rest)
    return merged


def last_value(events: list[Event], kind: type, attr: str | None = None) -> Any:
    """The last event of ``kind`` (or its last non-None ``attr``)."""
    for event in reversed(events):
        if isinstance(event, kind):
            if attr is None:
                return event
            value = getattr(event, attr)
            if value is not None:
                return value
    return None


def local_path(path: str | None, folder: Path) -> str | None:
    """A checkpoint path as logged (maybe a path inside the container) mapped onto ``folder``
    when an entry of that name exists there."""
    if not path:
        return None
    p = Path(path)
    if p.exists():
        return str(p)
    candidate = folder / p.name
    return str(candidate) if candidate.exists() else path


@dataclass
class RunFiles:
    """What a backend's run reader found in a run directory: the merged events, the checkpoint fields of a
    RunState (best_checkpoint, best_value, best_step, last_checkpoint, final_artifact), notes, where its
    TensorBoard files sit, and the log files whose tail status shows."""

    events: List[Event]
    fields: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    tb_root: Optional[Path] = None
    log_files: List[Path] = field(default_factory=list)
