"""Event types: dict round trip, attempt splitting and the merge of stdout/stderr event lists."""

from __future__ import annotations

import json

from hpc_ft.track.events import (
    EVENT_KINDS,
    AttemptStarted,
    BestRestored,
    CheckpointRemoved,
    CheckpointSaved,
    EarlyStop,
    EndCause,
    EvalResult,
    Failure,
    FinalArtifact,
    MaxStepsReached,
    PreemptSaved,
    Progress,
    Resumed,
    TrainEnd,
    ValLoss,
    ValScores,
    event_from_dict,
    event_to_dict,
    merge_attempts,
    split_attempts,
)

ONE_OF_EACH = [
    AttemptStarted("hpc-ft"),
    Progress(10, 100, 1.5, 1.2, 2.59, 160.0, 31000.0, 0),
    ValLoss(10, 1.2),
    CheckpointSaved("/c/a.ckpt", 10, 1.2, "validation_loss"),
    CheckpointRemoved("/c/b.ckpt"),
    EarlyStop(10, 1.2, 5, "val_loss", True),
    MaxStepsReached(100, None),
    Resumed("/c/a-last.ckpt"),
    BestRestored("/c/a.ckpt"),
    FinalArtifact("/c/run.nemo"),
    PreemptSaved(10, None),
    TrainEnd("early_stop", 10, 1.2, "/c/checkpoint-10"),
    TrainEnd("early_stop", 10, 1.2, "/c/checkpoint-10", "val_f1", 0.9),
    ValScores(10, {"val_f1": 0.9, "val_accuracy": 0.8}),
    EvalResult(0.5, 0.2),
    EvalResult(0.5, 0.2, {"f1": 0.9, "log_loss": 0.3}, {"f1": 0.1}),
    Failure(EndCause.GPU_OOM, "CUDA out of memory"),
]


def test_every_kind_round_trips_through_json():
    assert {type(e) for e in ONE_OF_EACH} == set(EVENT_KINDS.values())
    for event in ONE_OF_EACH:
        assert event_from_dict(json.loads(json.dumps(event_to_dict(event)))) == event
    assert event_to_dict(Failure(EndCause.NCCL_ERROR, "x")) == {"kind": "failure", "cause": "NCCL_ERROR", "line": "x"}


def test_split_attempts():
    a, b = AttemptStarted("hpc-ft"), AttemptStarted("nemo")
    assert split_attempts([]) == [[]]
    assert split_attempts([ValLoss(1, 1.0), a, ValLoss(2, 1.0), b]) == [[ValLoss(1, 1.0)], [a, ValLoss(2, 1.0)], [b]]
    assert split_attempts([a, ValLoss(1, 1.0)]) == [[a, ValLoss(1, 1.0)]]


def test_merge_aligns_attempts_from_the_end():
    start = AttemptStarted("hpc-ft")
    out = [start, ValLoss(1, 1.0), start, ValLoss(2, 2.0)]
    err = [start, Progress(5), start, Progress(9)]
    assert merge_attempts(out, err) == [start, ValLoss(1, 1.0), Progress(5), start, ValLoss(2, 2.0), Progress(9)]
    assert merge_attempts(out, [Progress(9)]) == [start, ValLoss(1, 1.0), start, ValLoss(2, 2.0), Progress(9)]
    assert merge_attempts([], []) == []
