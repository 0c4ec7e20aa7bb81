"""End-cause classification: each precedence rule, the last-attempt rule, and what is requeued."""

from __future__ import annotations

import pytest

from hpc_ft.track.causes import REQUEUE_CAUSES, classify_end, explain_end, normalize_slurm_state
from hpc_ft.track.events import (
    AttemptStarted,
    EarlyStop,
    EndCause,
    Failure,
    FinalArtifact,
    MaxStepsReached,
    PreemptSaved,
    Progress,
    TrainEnd,
)

P = Progress(100, 1000)
NEMO = FinalArtifact("/r/checkpoints/run.nemo")
DONE = MaxStepsReached(1000)
EARLY = EarlyStop(600, 0.074, 5, "val_loss")


def fail(cause: EndCause, line: str = "x") -> Failure:
    return Failure(cause, line)


KILL_TIME = fail(EndCause.TIMEOUT, "slurmstepd: error: *** JOB 1 ON n CANCELLED AT 2024-06-07T12:00:05 DUE TO TIME LIMIT ***")
KILL_CANCEL = fail(EndCause.CANCELLED, "slurmstepd: error: *** JOB 1 ON n CANCELLED AT 2024-06-07T12:00:05 ***")


@pytest.mark.parametrize(
    "state, code, events, expected",
    [
        # 1. not over: whatever the log says
        ("RUNNING", None, [P, fail(EndCause.GPU_OOM)], EndCause.RUNNING),
        ("PENDING", None, [], EndCause.RUNNING),
        ("REQUEUED", None, [P, PreemptSaved(100)], EndCause.RUNNING),
        # 2. finished: fit stopped / early stop + .nemo + clean exit
        ("COMPLETED", 0, [P, DONE, NEMO], EndCause.COMPLETED),
        ("COMPLETED", 0, [P, EARLY, NEMO], EndCause.EARLY_STOPPED),
        (None, None, [P, EARLY, NEMO], EndCause.EARLY_STOPPED),
        ("TIMEOUT", None, [P, DONE, NEMO], EndCause.COMPLETED),  # killed while tearing down
        ("COMPLETED", 0, [P, DONE], EndCause.ERROR),  # no .nemo: not complete
        ("FAILED", 1, [P, DONE, NEMO], EndCause.ERROR),  # exit code counts
        ("COMPLETED", 0, [P], EndCause.ERROR),  # exit 0 alone is not completion
        # 3-5. resources, over a generic failure and over external kills
        ("FAILED", 1, [P, fail(EndCause.GPU_OOM), fail(EndCause.ERROR), fail(EndCause.CONFIG_ERROR)], EndCause.GPU_OOM),
        ("TIMEOUT", None, [P, fail(EndCause.GPU_OOM), KILL_TIME], EndCause.GPU_OOM),
        ("CANCELLED", None, [P, fail(EndCause.GPU_OOM), KILL_CANCEL], EndCause.GPU_OOM),
        ("OUT_OF_MEMORY", None, [P], EndCause.HOST_OOM),
        ("FAILED", 1, [P, fail(EndCause.ERROR), fail(EndCause.HOST_OOM)], EndCause.HOST_OOM),
        ("NODE_FAIL", None, [P, fail(EndCause.NCCL_TIMEOUT)], EndCause.NODE_FAIL),
        # 6. NCCL before any kill wins; NCCL after a kill is teardown noise
        ("FAILED", 1, [P, fail(EndCause.NCCL_TIMEOUT), fail(EndCause.NCCL_ERROR), fail(EndCause.ERROR)], EndCause.NCCL_TIMEOUT),
        ("FAILED", 1, [P, fail(EndCause.NCCL_ERROR), fail(EndCause.ERROR)], EndCause.NCCL_ERROR),
        ("TIMEOUT", None, [P, fail(EndCause.NCCL_TIMEOUT), KILL_TIME], EndCause.NCCL_TIMEOUT),
        ("TIMEOUT", None, [P, KILL_TIME, fail(EndCause.NCCL_ERROR)], EndCause.TIMEOUT),
        (None, 0, [P, PreemptSaved(100), fail(EndCause.NCCL_ERROR)], EndCause.PREEMPTED),
        # 7-9. external kills, from Slurm or from the log
        ("TIMEOUT", None, [P], EndCause.TIMEOUT),
        ("CANCELLED", None, [P, KILL_TIME], EndCause.TIMEOUT),
        (None, None, [P, KILL_TIME, PreemptSaved(100)], EndCause.TIMEOUT),
        ("PREEMPTED", None, [P], EndCause.PREEMPTED),
        ("CANCELLED", None, [P, fail(EndCause.PREEMPTED, "DUE TO PREEMPTION")], EndCause.PREEMPTED),
        ("CANCELLED", 0, [P, PreemptSaved(100)], EndCause.CANCELLED),  # scancel also sends SIGTERM
        (None, 0, [P, KILL_CANCEL, PreemptSaved(100)], EndCause.CANCELLED),
        ("DEADLINE", None, [P], EndCause.CANCELLED),
        # 10. NeMo's SIGTERM handler: saved and exited 0
        (None, 0, [P, PreemptSaved(100)], EndCause.PREEMPTED),
        ("COMPLETED", 0, [P, PreemptSaved(100)], EndCause.PREEMPTED),
        ("FAILED", 1, [P, PreemptSaved(100)], EndCause.ERROR),
        # 12-13. config error before training, other errors
        ("FAILED", 1, [fail(EndCause.CONFIG_ERROR), fail(EndCause.ERROR)], EndCause.CONFIG_ERROR),
        ("FAILED", 1, [P, fail(EndCause.ERROR)], EndCause.ERROR),
        ("FAILED", None, [P], EndCause.ERROR),
        (None, 137, [P], EndCause.ERROR),
        # 14. nothing to go on
        (None, None, [P], EndCause.UNKNOWN),
        ("COMPLETED", 0, [], EndCause.UNKNOWN),
    ],
)
def test_precedence(state, code, events, expected):
    assert classify_end(state, code, events, "") == expected


def test_only_the_last_attempt_counts():
    first = [AttemptStarted("hpc-ft"), P, fail(EndCause.PREEMPTED, "DUE TO PREEMPTION"), PreemptSaved(100)]
    second = [AttemptStarted("hpc-ft"), Progress(1000, 1000), DONE, NEMO]
    assert classify_end("COMPLETED", 0, first + second, "") == EndCause.COMPLETED
    oom_then_resumed = [AttemptStarted("hpc-ft"), P, fail(EndCause.GPU_OOM)] + second
    assert classify_end("COMPLETED", 0, oom_then_resumed, "") == EndCause.COMPLETED
    assert classify_end("FAILED", 1, second[:2] + [AttemptStarted("hpc-ft"), fail(EndCause.GPU_OOM)], "") == EndCause.GPU_OOM


def test_hf_completion_needs_no_artifact():
    events = [P, TrainEnd("max_steps", 1000), DONE]
    assert classify_end("COMPLETED", 0, events, "", require_artifact=False) == EndCause.COMPLETED
    assert classify_end("COMPLETED", 0, events, "") == EndCause.ERROR


def test_log_tail_is_searched_when_the_events_hold_no_failure():
    tail = "Traceback (most recent call last):\n  File \"x.py\", line 1\ntorch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.\n"
    verdict = explain_end("FAILED", 1, [P], tail)
    assert verdict.cause == EndCause.GPU_OOM
    assert verdict.line.startswith("torch.cuda.OutOfMemoryError")


def test_error_reason_names_the_real_exception_not_torchruns_wrapper():
    tail = (
        "[rank1]: IndexError: index 4096 is out of bounds for dimension 1 with size 4096\n"
        "Traceback (most recent call last):\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
        "  exitcode  : 1 (pid: 6202)\n"
    )
    verdict = explain_end("FAILED", 1, [P, fail(EndCause.ERROR, "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:")], tail)
    assert verdict.cause == EndCause.ERROR
    assert "IndexError: index 4096 is out of bounds" in verdict.reason


def test_only_timeout_and_preemption_are_requeued():
    assert REQUEUE_CAUSES == {EndCause.TIMEOUT, EndCause.PREEMPTED}
    for cause in (EndCause.GPU_OOM, EndCause.HOST_OOM, EndCause.NCCL_TIMEOUT, EndCause.NCCL_ERROR, EndCause.CONFIG_ERROR,
                  EndCause.ERROR, EndCause.CANCELLED, EndCause.EARLY_STOPPED, EndCause.COMPLETED):
        assert cause not in REQUEUE_CAUSES


@pytest.mark.parametrize(
    "raw, expected",
    [("CANCELLED by 1000", "CANCELLED"), ("completed", "COMPLETED"), ("CA", "CANCELLED"), ("OOM", "OUT_OF_MEMORY"),
     ("NODE_FAIL", "NODE_FAIL"), ("  ", None), (None, None), ("RUNNING+", "RUNNING")],
)
def test_normalize_slurm_state(raw, expected):
    assert normalize_slurm_state(raw) == expected


def test_end_cause_flags():
    assert EndCause.EARLY_STOPPED.succeeded and EndCause.COMPLETED.succeeded and not EndCause.TIMEOUT.succeeded
    assert not EndCause.RUNNING.ended and not EndCause.UNKNOWN.ended and EndCause.CANCELLED.ended
    assert EndCause("GPU_OOM") is EndCause.GPU_OOM
