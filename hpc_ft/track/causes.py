"""Decides why a run ended, from the Slurm state, the exit code and the parsed events.

Only the events of the last attempt count (attempts are split at ``AttemptStarted``): an OOM
in an attempt that was later resumed to completion does not make the run an OOM.

Precedence, first rule that applies wins:

 1. Slurm says the job is not over (PENDING, RUNNING, REQUEUED, COMPLETING, ...) -> RUNNING.
 2. Training finished: the fit loop stopped at max_steps or the early-stopping callback fired,
    and (nemo) the final ``.nemo`` exists, and the exit was clean (exit 0 / Slurm COMPLETED /
    nothing known). A job killed by TIMEOUT, PREEMPTED or CANCELLED after that point also counts:
    the work is done and a requeue would only redo the end. -> EARLY_STOPPED / COMPLETED.
 3. CUDA out of memory in the log -> GPU_OOM.
 4. Slurm OUT_OF_MEMORY, or the cgroup OOM killer in the log -> HOST_OOM.
 5. Slurm NODE_FAIL / BOOT_FAIL, or a node failure in the log -> NODE_FAIL.
 6. An NCCL watchdog timeout, then any other NCCL error, logged *before* any sign of an
    external kill (a Slurm "CANCELLED AT" line, a framework time limit, NeMo's SIGTERM save)
    -> NCCL_TIMEOUT / NCCL_ERROR. NCCL errors after a kill are the kill tearing the job down.
 7. Slurm TIMEOUT, or "DUE TO TIME LIMIT" / a framework time limit in the log -> TIMEOUT.
 8. Slurm PREEMPTED, or "DUE TO PREEMPTION" / "DUE TO JOB REQUEUE" in the log -> PREEMPTED.
 9. Slurm CANCELLED or DEADLINE, or a plain "CANCELLED AT" line -> CANCELLED.
10. NeMo's "Received SIGTERM, saving checkpoint and exiting" (hf: ``preempt_saved``) with a
    clean exit (NeMo's handler exits 0) -> PREEMPTED (resumable).
11. NCCL errors logged after a kill (rule 6 left them) -> NCCL_TIMEOUT / NCCL_ERROR.
12. A Hydra/OmegaConf config error before any training step -> CONFIG_ERROR.
13. A failed exit (exit code != 0, Slurm FAILED) or a failure line -> ERROR.
14. A clean exit without a completion marker (or, nemo, without the final .nemo) -> ERROR;
    nothing at all to go on -> UNKNOWN.

Only TIMEOUT and PREEMPTED are ever requeued (``REQUEUE_CAUSES``): OOMs, NCCL failures,
config and user errors would fail the same way again, and a cancel is a person's decision.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hpc_ft.track.events import (
    EarlyStop,
    EndCause,
    Event,
    Failure,
    FinalArtifact,
    MaxStepsReached,
    PreemptSaved,
    Progress,
    split_attempts,
)
from hpc_ft.track.job_log import clean_line, parse_job_log

REQUEUE_CAUSES: frozenset[EndCause] = frozenset({EndCause.TIMEOUT, EndCause.PREEMPTED})

# Slurm job states (squeue/sacct long names) that mean "not over yet".
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "CONFIGURING",
        "COMPLETING",
        "RESIZING",
        "SUSPENDED",
        "STOPPED",
        "SIGNALING",
        "STAGE_OUT",
        "RESV_DEL_HOLD",
        "SPECIAL_EXIT",
        "POWER_UP_NODE",
        "UPDATE_DB",
    }
)
_STATE_ALIASES = {
    "PD": "PENDING",
    "R": "RUNNING",
    "CG": "COMPLETING",
    "CD": "COMPLETED",
    "F": "FAILED",
    "CA": "CANCELLED",
    "TO": "TIMEOUT",
    "PR": "PREEMPTED",
    "NF": "NODE_FAIL",
    "OOM": "OUT_OF_MEMORY",
    "BF": "BOOT_FAIL",
    "DL": "DEADLINE",
    "RQ": "REQUEUED",
    "CF": "CONFIGURING",
    "S": "SUSPENDED",
    "ST": "STOPPED",
    "SE": "SPECIAL_EXIT",
}
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit|MissingMandatoryValue)\b:?.*)$")


def normalize_slurm_state(state: str | None) -> str | None:
    """``"CANCELLED by 1000"`` -> ``"CANCELLED"``, ``"CA"`` -> ``"CANCELLED"``, ``""`` -> None."""
    if not state:
        return None
    words = state.strip().split()
    if not words:
        return None
    word = words[0].rstrip("+").upper()
    return _STATE_ALIASES.get(word, word)


@dataclass(frozen=True)
class EndVerdict:
    """The cause, a short reason a person can read, and the log line behind it (if any)."""

    cause: EndCause
    reason: str
    line: str | None = None


def last_attempt(events: list[Event]) -> list[Event]:
    return split_attempts(events)[-1]


def _tail_error_line(log_tail: str) -> str | None:
    """The last exception line (``SomeError: message``) in a log tail, for the ERROR reason.

    torchrun's ``ChildFailedError`` only wraps the real error, so it is the last resort.
    """
    wrapper = None
    for raw in reversed(log_tail.splitlines()):
        m = _EXCEPTION_LINE.match(clean_line(raw))
        if m is None:
            continue
        if "ChildFailedError" in m[1]:
            wrapper = wrapper or m[1]
            continue
        return m[1]
    return wrapper


def explain_end(
    slurm_state: str | None,
    exit_code: int | None,
    events: list[Event],
    log_tail: str = "",
    *,
    require_artifact: bool = True,
) -> EndVerdict:
    """Classify a run's end (see the module docstring for the rules) and say why.

    ``require_artifact``: completion needs a ``FinalArtifact`` event (nemo: the final .nemo,
    added by ``run_state`` from the checkpoint folder); the hf backend passes False.
    ``log_tail`` is searched for failure lines when ``events`` hold none of the last attempt
    (e.g. the events came from a file that misses stderr), and gives the ERROR reason.
    """
    state = normalize_slurm_state(slurm_state)
    attempt = last_attempt(events)
    failures = [e for e in attempt if isinstance(e, Failure)]
    if not failures and log_tail:
        failures = [e for e in last_attempt(parse_job_log(log_tail.encode())) if isinstance(e, Failure)]
        attempt = attempt + failures

    if exit_code is not None:
        exit_ok: bool | None = exit_code == 0
    elif state is not None:
        exit_ok = state == "COMPLETED"
    else:
        exit_ok = None

    def first(cause: EndCause) -> Failure | None:
        return next((f for f in failures if f.cause == cause), None)

    # 1. not over
    if state in ACTIVE_STATES:
        return EndVerdict(EndCause.RUNNING, f"Slurm state {state}")

    # 2. training finished
    early = next((e for e in attempt if isinstance(e, EarlyStop)), None)
    done = early or next((e for e in attempt if isinstance(e, MaxStepsReached)), None)
    artifact = next((e for e in attempt if isinstance(e, FinalArtifact)), None)
    if artifact is None:
        artifact = next((e for e in events if isinstance(e, FinalArtifact)), None)
    finished = done is not None and (artifact is not None or not require_artifact)
    if finished and (exit_ok is not False or state in ("TIMEOUT", "PREEMPTED", "CANCELLED")):
        if early is not None:
            what = "the monitored metric became non-finite" if early.non_finite else "no improvement"
            best = f", best {early.best_score}" if early.best_score is not None else ""
            return EndVerdict(EndCause.EARLY_STOPPED, f"early stopping ({what}{best}) at step {early.step}")
        assert isinstance(done, MaxStepsReached)
        limit = f"max_steps={done.max_steps}" if done.max_steps is not None else f"max_epochs={done.max_epochs}"
        return EndVerdict(EndCause.COMPLETED, f"training reached {limit}")

    # 3.-5. resource failures
    if f := first(EndCause.GPU_OOM):
        return EndVerdict(EndCause.GPU_OOM, "CUDA out of memory", f.line)
    if state == "OUT_OF_MEMORY" or first(EndCause.HOST_OOM):
        f = first(EndCause.HOST_OOM)
        return EndVerdict(EndCause.HOST_OOM, "host memory: killed by the Slurm OOM handler", f.line if f else None)
    if state in ("NODE_FAIL", "BOOT_FAIL") or first(EndCause.NODE_FAIL):
        f = first(EndCause.NODE_FAIL)
        return EndVerdict(EndCause.NODE_FAIL, f"node failure (Slurm state {state})" if state else "node failure", f.line if f else None)

    # 6. NCCL failures that happened before any external kill
    kill_at = next(
        (
            i
            for i, e in enumerate(attempt)
            if isinstance(e, PreemptSaved)
            or (isinstance(e, Failure) and e.cause in (EndCause.TIMEOUT, EndCause.PREEMPTED, EndCause.CANCELLED))
        ),
        len(attempt),
    )
    for cause in (EndCause.NCCL_TIMEOUT, EndCause.NCCL_ERROR):
        f = next((e for e in attempt[:kill_at] if isinstance(e, Failure) and e.cause == cause), None)
        if f:
            what = "NCCL watchdog timeout (a collective hung)" if cause == EndCause.NCCL_TIMEOUT else "NCCL error"
            return EndVerdict(cause, what, f.line)

    # 7.-9. external kills
    if state == "TIMEOUT" or first(EndCause.TIMEOUT):
        f = first(EndCause.TIMEOUT)
        return EndVerdict(EndCause.TIMEOUT, "time limit reached", f.line if f else None)
    if state == "PREEMPTED" or first(EndCause.PREEMPTED):
        f = first(EndCause.PREEMPTED)
        return EndVerdict(EndCause.PREEMPTED, "preempted by Slurm", f.line if f else None)
    if state in ("CANCELLED", "DEADLINE") or first(EndCause.CANCELLED):
        f = first(EndCause.CANCELLED)
        why = "deadline passed" if state == "DEADLINE" else "cancelled"
        return EndVerdict(EndCause.CANCELLED, why, f.line if f else None)

    # 10. NeMo's preemption callback: SIGTERM handled, checkpoint saved, exit 0
    saved = next((e for e in attempt if isinstance(e, PreemptSaved)), None)
    if saved is not None and exit_ok is not False:
        step = saved.step if saved.step is not None else next(
            (e.step for e in reversed(attempt) if isinstance(e, Progress)), None
        )
        where = f" at step {step}" if step is not None else ""
        return EndVerdict(EndCause.PREEMPTED, f"SIGTERM: checkpoint saved{where}, resumable")

    # 11. NCCL failures after a kill signal that Slurm did not report
    for cause in (EndCause.NCCL_TIMEOUT, EndCause.NCCL_ERROR):
        if f := first(cause):
            return EndVerdict(cause, "NCCL failure", f.line)

    # 12. config error before training
    if f := first(EndCause.CONFIG_ERROR):
        detail = _tail_error_line(log_tail)
        return EndVerdict(EndCause.CONFIG_ERROR, f"configuration rejected: {detail}" if detail else "configuration rejected", f.line)

    # 13. other failures
    if exit_ok is False or failures:
        detail = _tail_error_line(log_tail)
        f = first(EndCause.ERROR)
        if state == "FAILED" or exit_code not in (None, 0):
            where = f"exit code {exit_code}" if exit_code is not None else "Slurm state FAILED"
        else:
            where = "failure in the log"
        return EndVerdict(EndCause.ERROR, f"{where}: {detail}" if detail else where, f.line if f else detail)

    # 14. clean exit without the evidence of completion
    if exit_ok:
        if done is not None:
            return EndVerdict(EndCause.ERROR, "training ended but the final model artifact is missing")
        if not events:
            return EndVerdict(EndCause.UNKNOWN, "exited cleanly but there is no log to confirm completion")
        return EndVerdict(EndCause.ERROR, "exited cleanly without reaching max_steps or early stopping")
    if done is not None and exit_ok is None:
        return EndVerdict(EndCause.UNKNOWN, "training ended; waiting for the final model artifact")
    return EndVerdict(EndCause.UNKNOWN, "no end recorded")


def classify_end(
    slurm_state: str | None,
    exit_code: int | None,
    events: list[Event],
    log_tail: str = "",
    *,
    require_artifact: bool = True,
) -> EndCause:
    """The end cause only; see ``explain_end``."""
    return explain_end(slurm_state, exit_code, events, log_tail, require_artifact=require_artifact).cause
