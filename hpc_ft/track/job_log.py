"""Parses a job's console log (Slurm job.out / job.err of any backend, NeMo's rank-0 log) into track events:
hpc-ft's attempt markers, the failures torch, CUDA, NCCL and Slurm print, and NeMo 1.x / Lightning's
progress bar and messages (an hf job's progress comes from its events.jsonl, `hf_events.py`).

``parse_job_log(path_or_text)`` parses a whole log; ``JobLogParser`` does the same
incrementally: ``feed(chunk)`` takes bytes as they arrive and returns the new events, keeping
only the unfinished last segment (a few hundred bytes) between calls, so following a log costs
the same whatever its size. ``snapshot()`` / ``JobLogParser.from_snapshot()`` save and resume
the state at a byte offset. Any split of the input into chunks gives the same events as one feed.

How the text is read (the markers are the exact strings from NeMo, Lightning, torch and Slurm;
this module is their one home):

* The log is a stream of segments ended by ``\\r`` or ``\\n``. tqdm redraws the progress bar with
  ``\\r``; log messages end with ``\\n``. Only ``\\n``-ended segments are searched for markers, so
  the bulk of a log (``\\r`` progress updates) is skipped by ``bytes.find`` at memchr speed.
* Progress: only the latest update matters, so the bar is parsed at a few points only: where the
  validation loss in it changes (found with one compiled search for "val_loss= not followed by
  the current value"), at every ``sample_bytes`` of log (a thin series for plots), before every
  other event (so events carry the step they happened at) and at the end.
* Every rank prints some lines (early stop, OOM); an event equal to one of the last few emitted
  is dropped.
"""

from __future__ import annotations

import os
import re
from collections import deque
from dataclasses import asdict
from pathlib import Path

from hpc_ft.track.events import (
    ATTEMPT_MARKER,
    AttemptStarted,
    BestRestored,
    CheckpointRemoved,
    CheckpointSaved,
    EarlyStop,
    EndCause,
    Event,
    Failure,
    MaxStepsReached,
    PreemptSaved,
    Progress,
    Resumed,
    ValLoss,
    event_from_dict,
    event_to_dict,
)
from hpc_ft.track.nemo_checkpoints import uninject_rank_dir

# ---- the marker strings ------------------------------------------------------------------------
# Exact substrings (and a few patterns) from NeMo, Lightning, torch, Hydra/OmegaConf and Slurm.
EARLY_STOP_MARKER = "Signaling Trainer to stop"  # EarlyStopping; also Lightning's Timer ("Time limit reached")
FIT_STOPPED_MARKER = "`Trainer.fit` stopped:"
CHECKPOINT_LINE_PATTERN = r"Epoch \d+, global step \d+: "  # ModelCheckpoint (verbose)
RESTORING_MARKER = "Restoring states from the checkpoint path at "
REMOVED_MARKERS = ("Removing checkpoint: ", "Removed checkpoint: ", "Removed distributed checkpoint: ")
RESUMING_MARKER = "Resuming training from checkpoint: "
SIGTERM_MARKER = "Received SIGTERM, saving checkpoint"  # NeMo's PreemptionCallback, then exit 0
ATTEMPT_MARKERS = (
    (ATTEMPT_MARKER, "hpc-ft"),
    ("** Experiment configuration **", "nemo"),
    ("Initializing distributed: GLOBAL_RANK: 0,", "lightning"),
    ("Setting OMP_NUM_THREADS environment variable for each process", "torchrun"),
)
GPU_OOM_MARKERS = ("CUDA out of memory", "CUDA error: out of memory", "Cuda failure 'out of memory'", "OutOfMemoryError")
HOST_OOM_PATTERN = (
    r"Detected \d+ oom[-_]kill event|Job [\w.]+ exceeded memory limit|Step [\w.]+ exceeded memory limit"
    r"|Exceeded job memory limit|Out Of Memory"
)
NCCL_TIMEOUT_MARKER = "Watchdog caught collective operation timeout"
NCCL_ERROR_MARKERS = (
    "NCCL error",
    "DistBackendError",
    "ncclUnhandledCudaError",
    "ncclSystemError",
    "ncclInternalError",
    "ncclInvalidUsage",
    "ncclInvalidArgument",
    "ncclRemoteError",
    "NCCL communicator was aborted",
    "Some NCCL operations have failed",
)
CONFIG_ERROR_MARKERS = (  # Hydra and OmegaConf
    "Error executing job with overrides",
    "Could not override '",
    "Error merging override",
    "Error parsing override",
    "Could not append to config",
    "MissingMandatoryValue",
    "ConfigAttributeError",
    "ConfigKeyError",
    "ConfigTypeError",
    "ConfigValueError",
    "InterpolationKeyError",
    "InterpolationResolutionError",
)
ERROR_MARKERS = ("ChildFailedError", "No dot product attention support")
SLURM_KILL_MARKERS = ("CANCELLED AT", "DUE TO TIME LIMIT", "DUE TO PREEMPTION", "DUE TO NODE FAIL", "Node failure on")


def _trigger(marker: str) -> str:
    """``marker`` as a search pattern starting at its first character that is not lower case.

    Progress-bar updates hold (almost) no capitals except the E of "Epoch"; with every
    alternative starting on a capital or a symbol, Python's ``re`` skips ahead to those
    characters, which keeps logs with one progress update per line fast.
    """
    start = 0
    while start < len(marker) and (marker[start].islower() or marker[start] in "._"):
        start += 1
    return re.escape(marker[start:] or marker)


_LITERAL_MARKERS = (
    EARLY_STOP_MARKER,
    FIT_STOPPED_MARKER,
    RESTORING_MARKER,
    *REMOVED_MARKERS,
    RESUMING_MARKER,
    SIGTERM_MARKER,
    *(m for m, _ in ATTEMPT_MARKERS),
    *GPU_OOM_MARKERS,
    NCCL_TIMEOUT_MARKER,
    *NCCL_ERROR_MARKERS,
    *CONFIG_ERROR_MARKERS,
    *ERROR_MARKERS,
    *SLURM_KILL_MARKERS,
)
# A line holding a trigger goes to ``_classify_line``, which decides with the exact checks.
TRIGGER = re.compile(
    "|".join([*(_trigger(m) for m in _LITERAL_MARKERS), CHECKPOINT_LINE_PATTERN, HOST_OOM_PATTERN]).encode()
)
_HOST_OOM = re.compile(HOST_OOM_PATTERN)

# Progress bar: NeMo's MegatronProgressBar "Epoch 0: :  60%|██████    | 6024/10000 [4:26:54<2:56:09, k=v, ...]",
# Lightning's "Epoch 0:  60%|...| 6024/10000 [4:26:54<2:56:09, 0.38it/s, k=v, ...]" and the newer
# NeMo "Epoch 0: 6024/10000, k=v, ...".
_PROGRESS = re.compile(rb"Epoch (\d+):[^\r\n/]*?(\d+)/(\d+|\?)([^\r\n]*)")
_NUM = rb"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|-?inf"
_KV = re.compile(rb"([A-Za-z_][\w ]*?)=(" + _NUM + rb")")
_VAL = re.compile(rb"val_loss=(" + _NUM + rb")")
_EPOCH = b"Epoch "
_MAX_UPDATE = 8192  # a progress update is shorter than this
_MAX_SHOWN = 2000  # longest failure line kept

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
_RANK_PREFIX = re.compile(r"^(?:\[rank:? ?\d+\]:? ?|\d+: )+")
_LINE_AFTER_BAR = re.compile(r"^.*?Epoch \d+:[^\r\n/]*?\d+/(?:\d+|\?) \[[^\]]*\]")

_EARLY_NO_IMPROVE = re.compile(
    r"Monitored metric (\S+) did not improve in the last (\d+) records\. Best score: (\S+?)\. Signaling"
)
_EARLY_NON_FINITE = re.compile(r"Monitored metric (\S+) = (\S+) is not finite\. Previous best value was (\S+?)\. Signaling")
_EARLY_THRESHOLD = re.compile(r"(?:Stopping|Divergence) threshold reached: (\S+) = (\S+?) [<>]")
_FIT_STOPPED = re.compile(r"`Trainer\.fit` stopped: `(\w+)=([^`]*)` reached")
_CKPT_REACHED = re.compile(
    r"Epoch \d+, global step (\d+): (['\"])(.+?)\2 reached (\S+) \(best \S+\), saving model to (['\"])(.+?)\5"
)
_CKPT_SAVING = re.compile(r"Epoch \d+, global step (\d+): saving model to (['\"])(.+?)\2")
_REMOVED = re.compile(r"Remov(?:ing|ed)(?: distributed)? checkpoint: (\S+)")
_RESTORING = re.compile(r"Restoring states from the checkpoint path at (\S+)")
_RESUMING = re.compile(r"Resuming training from checkpoint: (\S+)")
_DUE_TO = re.compile(r"DUE TO ([A-Z][A-Z ]*[A-Z])")


def _float(text: str | bytes | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def clean_line(line: str) -> str:
    """A log line as a person wants to read it: no ANSI codes, no rank prefix, no progress bar."""
    line = _ANSI.sub("", line)
    m = _LINE_AFTER_BAR.match(line)
    if m and m.end() < len(line):
        line = line[m.end() :]
    line = line.strip()
    return _RANK_PREFIX.sub("", line).strip()


def _parse_progress(buf: bytes, start: int) -> Progress | None:
    """The progress update that starts at ``buf[start]`` ("Epoch N: ..."), or None."""
    m = _PROGRESS.match(buf, start)
    if m is None:
        return None
    rest = m.group(4)
    if rest.startswith(b" ["):
        close = rest.find(b"]")
        rest = rest[2:close] if close >= 0 else rest[2:]
    kv = dict(_KV.findall(rest))
    train = kv.get(b"reduced_train_loss", kv.get(b"train_loss", kv.get(b"loss")))
    total = m.group(3)
    return Progress(
        step=int(m.group(2)),
        max_steps=int(total) if total != b"?" else None,
        train_loss=_float(train),
        val_loss=_float(kv.get(b"val_loss")),
        step_time_s=_float(kv.get(b"train_step_timing in s")),
        consumed_samples=_float(kv.get(b"consumed_samples")),
        epoch=int(m.group(1)),
    )


def _last_progress_before(buf: bytes, lo: int, pos: int) -> tuple[int, Progress] | None:
    """The last progress update that starts in ``[lo, pos)``, with its start."""
    hi = min(pos + len(_EPOCH) - 1, len(buf))
    while True:
        j = buf.rfind(_EPOCH, lo, hi)
        if j < 0:
            return None
        progress = _parse_progress(buf, j)
        if progress is not None:
            return j, progress
        hi = j + len(_EPOCH) - 1


def _marker_ranges(buf: bytes, lo: int, hi: int, final: bool):
    """Yield (start, end) of runs of ``\\n``-ended lines in ``buf[lo:hi]`` that hold no ``\\r``.

    A range starts just after the last ``\\r`` before its first ``\\n``, so a message printed
    right after a progress update (same line) is included. With ``final`` the unterminated
    tail is a line too.
    """
    pos = lo
    while pos < hi:
        nl = buf.find(b"\n", pos, hi)
        if nl < 0:
            if final:
                start = buf.rfind(b"\r", pos, hi) + 1 or pos
                if start < hi:
                    yield max(start, pos), hi
            return
        cr = buf.rfind(b"\r", pos, nl)
        start = cr + 1 if cr >= 0 else pos
        next_cr = buf.find(b"\r", nl + 1, hi)
        end = buf.rfind(b"\n", nl, next_cr if next_cr >= 0 else hi) + 1
        yield start, end
        pos = end


class JobLogParser:
    """Incremental job log parser: ``feed`` bytes, get events; ``finish`` at the end of the log.

    ``offset`` is the number of bytes fed so far; a follower reads the file from there.
    ``sample_bytes``: emit the current progress once per this many bytes of log (0 = never).
    ``max_carry``: a segment longer than this without ``\\r``/``\\n`` is processed anyway
    (then chunk boundaries inside it may change the result).
    """

    def __init__(self, sample_bytes: int = 16384, max_carry: int = 1 << 16) -> None:
        self.sample_bytes = sample_bytes
        self.max_carry = max_carry
        self._neg_cache: dict[bytes, re.Pattern[bytes]] = {}
        self._reset()

    def _reset(self) -> None:
        self.offset = 0
        self.head = b""  # the first bytes of the file, to notice a truncated/replaced log
        self._carry = b""
        self._progress: Progress | None = None  # latest complete progress update
        self._progress_pos = -1  # its absolute start
        self._val_raw: bytes | None = None  # val_loss text in the current progress updates
        self._last_emitted_progress: Progress | None = None
        self._recent: deque[Event] = deque(maxlen=32)
        self._attempt_pos = -1  # absolute position of the last AttemptStarted
        self._substantive = False  # something other than start-up happened since it
        self._fit_ended = False  # early stop / max steps seen in this attempt

    # ---- public API ----------------------------------------------------------------------

    def feed(self, chunk: bytes) -> list[Event]:
        """Parse the next bytes of the log; return the events completed by them."""
        if not chunk:
            return []
        if len(self.head) < 256:
            self.head += chunk[: 256 - len(self.head)]
        buf = self._carry + chunk if self._carry else chunk
        base = self.offset - len(self._carry)
        self.offset += len(chunk)
        cut = buf.rfind(b"\r") + 1
        nl = buf.rfind(b"\n", cut)
        if nl >= 0:
            cut = nl + 1
        if cut == 0:
            if len(buf) <= self.max_carry:
                self._carry = buf
                return []
            cut = len(buf)
        events = self._process(buf, 0, cut, base, final=False)
        self._carry = buf[cut:]
        return events

    def finish(self) -> list[Event]:
        """The log has ended: parse the unterminated last segment and emit the final progress."""
        buf, self._carry = self._carry, b""
        events = self._process(buf, 0, len(buf), self.offset - len(buf), final=True) if buf else []
        self._emit_progress(events, self._progress)
        return events

    @property
    def progress(self) -> Progress | None:
        """The latest progress, including an update still waiting for its terminator."""
        found = _last_progress_before(self._carry, 0, len(self._carry)) if self._carry else None
        return found[1] if found else self._progress

    def feed_file(self, path: str | os.PathLike, chunk_size: int = 1 << 20) -> list[Event]:
        """Read ``path`` from ``offset`` to its current end and parse it.

        A file that shrank or whose first bytes changed was replaced (Slurm restarts the output
        of a requeued job unless it appends): the parser resets and parses it from the start.
        """
        events: list[Event] = []
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(len(self.head)) if self.head else b""
            if size < self.offset or head != self.head:
                self._reset()
            f.seek(self.offset)
            while True:
                chunk = f.read(chunk_size)
                if not chunk:
                    break
                events.extend(self.feed(chunk))
        return events

    def snapshot(self) -> dict:
        """JSON-serialisable state; ``from_snapshot`` resumes at ``offset``."""
        return {
            "version": 1,
            "sample_bytes": self.sample_bytes,
            "max_carry": self.max_carry,
            "offset": self.offset,
            "head": self.head.decode("latin-1"),
            "carry": self._carry.decode("latin-1"),
            "progress": asdict(self._progress) if self._progress else None,
            "progress_pos": self._progress_pos,
            "val_raw": self._val_raw.decode("latin-1") if self._val_raw is not None else None,
            "last_emitted_progress": asdict(self._last_emitted_progress) if self._last_emitted_progress else None,
            "recent": [event_to_dict(e) for e in self._recent],
            "attempt_pos": self._attempt_pos,
            "substantive": self._substantive,
            "fit_ended": self._fit_ended,
        }

    @classmethod
    def from_snapshot(cls, state: dict) -> "JobLogParser":
        if state.get("version") != 1:
            raise ValueError(f"unknown JobLogParser snapshot version {state.get('version')!r}")
        parser = cls(state["sample_bytes"], state["max_carry"])
        parser.offset = state["offset"]
        parser.head = state["head"].encode("latin-1")
        parser._carry = state["carry"].encode("latin-1")
        parser._progress = Progress(**state["progress"]) if state["progress"] else None
        parser._progress_pos = state["progress_pos"]
        parser._val_raw = state["val_raw"].encode("latin-1") if state["val_raw"] is not None else None
        last = state["last_emitted_progress"]
        parser._last_emitted_progress = Progress(**last) if last else None
        parser._recent.extend(event_from_dict(e) for e in state["recent"])
        parser._attempt_pos = state["attempt_pos"]
        parser._substantive = state["substantive"]
        parser._fit_ended = state["fit_ended"]
        return parser

    # ---- internals -----------------------------------------------------------------------

    def _process(self, buf: bytes, lo: int, hi: int, base: int, final: bool) -> list[Event]:
        """Parse the complete segments ``buf[lo:hi]``; ``base`` is the file offset of ``buf[0]``."""
        # Items are (position, order, kind, payload), handled in position order.
        items: list[tuple[int, int, str, object]] = []
        items.extend(self._val_changes(buf, lo, hi))
        for start, end in _marker_ranges(buf, lo, hi, final):
            pos = start
            while True:
                m = TRIGGER.search(buf, pos, end)
                if m is None:
                    break
                line_start = buf.rfind(b"\n", start, m.start()) + 1 or start
                line_start = max(line_start, start)
                line_end = buf.find(b"\n", m.end(), end)
                if line_end < 0:
                    line_end = end
                items.append((m.start(), 2, "line", buf[line_start:line_end]))
                pos = line_end + 1
        if self.sample_bytes > 0:
            step = self.sample_bytes
            boundary = ((base + lo) // step + 1) * step
            while boundary <= base + hi:
                items.append((boundary - base, 0, "sample", None))
                boundary += step
        items.sort(key=lambda item: (item[0], item[1]))

        events: list[Event] = []
        current, current_pos = self._progress, self._progress_pos
        scanned = lo
        for pos, _, kind, payload in items:
            if kind == "val":
                start, progress = payload  # type: ignore[misc]
                current, current_pos, scanned = progress, base + start, start + 1
                events.append(ValLoss(progress.step, progress.val_loss))
                self._substantive = True
                self._emit_progress(events, progress)
                continue
            found = _last_progress_before(buf, scanned, pos)
            if found is not None:
                current, current_pos = found[1], base + found[0]
            scanned = max(scanned, pos)
            if kind == "sample":
                if current is not None and (
                    self._last_emitted_progress is None or current.step != self._last_emitted_progress.step
                ):
                    self._emit_progress(events, current)
            else:
                self._classify_line(
                    events, payload.decode("utf-8", "replace"), current, current_pos, base + pos  # type: ignore[union-attr]
                )
        found = _last_progress_before(buf, scanned, hi)
        if found is not None:
            current, current_pos = found[1], base + found[0]
        self._progress, self._progress_pos = current, current_pos
        return events

    def _val_changes(self, buf: bytes, lo: int, hi: int) -> list[tuple[int, int, str, object]]:
        """Progress updates in ``buf[lo:hi]`` whose val_loss differs from the one before."""
        out: list[tuple[int, int, str, object]] = []
        pos = lo
        while True:
            if self._val_raw is None:
                j = buf.find(b"val_loss=", pos, hi)
            else:
                neg = self._neg_cache.get(self._val_raw)
                if neg is None:
                    if len(self._neg_cache) > 256:
                        self._neg_cache.clear()
                    neg = re.compile(b"val_loss=(?!" + re.escape(self._val_raw) + rb"(?![\w.+-]))")
                    self._neg_cache[self._val_raw] = neg
                m = neg.search(buf, pos, hi)
                j = m.start() if m else -1
            if j < 0:
                return out
            vm = _VAL.match(buf, j, hi)
            pos = j + len(b"val_loss=")
            if vm is None:
                continue
            pos = vm.end()
            k = buf.rfind(_EPOCH, max(lo, j - _MAX_UPDATE), j)
            if k < 0 or buf.find(b"\r", k, j) >= 0 or buf.find(b"\n", k, j) >= 0:
                continue  # not inside a progress update
            progress = _parse_progress(buf, k)
            if progress is None or progress.val_loss is None:
                continue
            self._val_raw = vm.group(1)
            out.append((k, 1, "val", (k, progress)))

    def _emit_progress(self, events: list[Event], progress: Progress | None) -> None:
        last = self._last_emitted_progress
        if progress is None or (last is not None and (last.step, last.val_loss) == (progress.step, progress.val_loss)):
            return
        events.append(progress)
        self._last_emitted_progress = progress

    def _emit(self, events: list[Event], event: Event, current: Progress | None) -> None:
        """Append ``event`` unless it repeats a recent one, preceded by the progress it happened at."""
        if event in self._recent:
            return
        self._recent.append(event)
        self._emit_progress(events, current)
        if not isinstance(event, (AttemptStarted, Resumed)):
            self._substantive = True
        events.append(event)

    def _classify_line(
        self, events: list[Event], raw: str, current: Progress | None, current_pos: int, pos: int
    ) -> None:
        """Turn one log line holding a trigger into events (a line may give more than one)."""
        line = clean_line(raw)
        shown = line if len(line) <= _MAX_SHOWN else line[:_MAX_SHOWN] + "…"  # the text a Failure keeps
        step = current.step if current is not None else None
        trained = current_pos > self._attempt_pos  # a progress update since this attempt began

        for marker, source in ATTEMPT_MARKERS:
            if marker in line:
                if self._attempt_pos < 0 or self._substantive or trained:
                    self._emit_progress(events, current)  # the previous attempt's last progress
                    self._attempt_pos = pos
                    self._substantive = False
                    self._fit_ended = False
                    self._recent.clear()
                    self._emit(events, AttemptStarted(source), current)
                return

        if EARLY_STOP_MARKER in line:
            if "Time limit reached" in line:
                self._emit(events, Failure(EndCause.TIMEOUT, shown), current)
                return
            m = _EARLY_NO_IMPROVE.search(line)
            if m:
                event = EarlyStop(step, _float(m[3]), int(m[2]), m[1])
            elif m := _EARLY_NON_FINITE.search(line):
                event = EarlyStop(step, _float(m[3]), None, m[1], non_finite=True)
            elif m := _EARLY_THRESHOLD.search(line):
                event = EarlyStop(step, _float(m[2]), None, m[1])
            else:
                event = EarlyStop(step, None, None)
            self._fit_ended = True
            self._emit(events, event, current)
            return

        if m := _FIT_STOPPED.search(line):
            key, value = m[1], m[2]
            if key in ("max_steps", "max_epochs"):
                number = int(value) if value.lstrip("-").isdigit() else None
                event = MaxStepsReached(number) if key == "max_steps" else MaxStepsReached(None, number)
                self._fit_ended = True
                self._emit(events, event, current)
            elif key == "max_time":
                self._emit(events, Failure(EndCause.TIMEOUT, shown), current)
            return

        if m := _CKPT_REACHED.search(line):
            path = uninject_rank_dir(m[6])
            self._emit(events, CheckpointSaved(path, int(m[1]), _float(m[4]), m[3]), current)
            return
        if m := _CKPT_SAVING.search(line):
            self._emit(events, CheckpointSaved(uninject_rank_dir(m[3]), int(m[1])), current)
            return
        if ", global step " in line:
            return  # "... was not in top k": nothing saved
        if m := _REMOVED.search(line):
            self._emit(events, CheckpointRemoved(uninject_rank_dir(m[1])), current)
            return
        if m := _RESTORING.search(line):
            path = uninject_rank_dir(m[1])
            best = self._fit_ended and not path.rstrip("/").endswith(("-last.ckpt", "-last"))
            self._emit(events, BestRestored(path) if best else Resumed(path), current)
            return
        if m := _RESUMING.search(line):
            self._emit(events, Resumed(uninject_rank_dir(m[1])), current)
            return
        if SIGTERM_MARKER in line:
            self._emit(events, PreemptSaved(step), current)
            return

        found = False
        if any(s in line for s in GPU_OOM_MARKERS):
            self._emit(events, Failure(EndCause.GPU_OOM, shown), current)
            found = True
        if _HOST_OOM.search(line):
            self._emit(events, Failure(EndCause.HOST_OOM, shown), current)
            found = True
        if NCCL_TIMEOUT_MARKER in line:
            self._emit(events, Failure(EndCause.NCCL_TIMEOUT, shown), current)
            found = True
        elif any(s in line for s in NCCL_ERROR_MARKERS):
            self._emit(events, Failure(EndCause.NCCL_ERROR, shown), current)
            found = True
        if any(s in line for s in CONFIG_ERROR_MARKERS):
            # Hydra reports every exception from the task this way; before training it is the config.
            cause = EndCause.ERROR if trained else EndCause.CONFIG_ERROR
            self._emit(events, Failure(cause, shown), current)
            found = True
        if any(s in line for s in ERROR_MARKERS):
            self._emit(events, Failure(EndCause.ERROR, shown), current)
            found = True
        if found:
            return

        if any(s in line for s in SLURM_KILL_MARKERS):
            m = _DUE_TO.search(line)
            reason = m[1] if m else ""
            if "Node failure on" in line or reason.startswith("NODE FAIL"):
                cause = EndCause.NODE_FAIL
            elif reason.startswith("TIME LIMIT"):
                cause = EndCause.TIMEOUT
            elif reason.startswith(("PREEMPTION", "JOB REQUEUE")):
                cause = EndCause.PREEMPTED
            else:
                cause = EndCause.CANCELLED
            self._emit(events, Failure(cause, shown), current)

def _read_source(source: str | bytes | os.PathLike) -> bytes | Path:
    if isinstance(source, bytes):
        return source
    if isinstance(source, os.PathLike):
        return Path(source)
    if "\n" in source or "\r" in source:
        return source.encode("utf-8")
    return Path(source)


def parse_job_log(source: str | bytes | os.PathLike, chunk_size: int = 16 << 20, sample_bytes: int = 16384) -> list[Event]:
    """Parse a whole NeMo log. ``source``: a path (``os.PathLike``, or a ``str`` without line
    breaks) or the log text itself (``bytes``, or a ``str`` with line breaks)."""
    parser = JobLogParser(sample_bytes=sample_bytes)
    data = _read_source(source)
    events: list[Event] = []
    if isinstance(data, bytes):
        events.extend(parser.feed(data))
    else:
        with open(data, "rb") as f:
            while chunk := f.read(chunk_size):
                events.extend(parser.feed(chunk))
    events.extend(parser.finish())
    return events


def log_tail(source: str | bytes | os.PathLike, lines: int = 40, max_bytes: int = 1 << 16) -> str:
    """The last ``lines`` lines of a log as a terminal would show them: for each line only the
    last progress-bar redraw, no ANSI codes, no blank lines."""
    data = _read_source(source)
    if isinstance(data, Path):
        try:
            with open(data, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(max(0, size - max_bytes))
                data = f.read()
        except FileNotFoundError:
            return ""
    else:
        data = data[-max_bytes:]
    text = data.decode("utf-8", "replace")
    out = []
    for line in text.split("\n"):
        redraws = [part for part in line.split("\r") if part.strip()]
        if redraws:
            line = _ANSI.sub("", redraws[-1]).rstrip()
            if line.strip():
                out.append(line)
    return "\n".join(out[-lines:])
