"""hf backend events.jsonl: record mapping, half-written lines, incremental reading, Trainer dirs."""

from __future__ import annotations

import json
import random

from track_helpers import fixture_dir

from hpc_ft.track.events import (
    AttemptStarted,
    CheckpointSaved,
    EarlyStop,
    EndCause,
    EvalResult,
    Failure,
    FinalArtifact,
    MaxStepsReached,
    PreemptSaved,
    Progress,
    TrainEnd,
    ValLoss,
)
from hpc_ft.track.hf_events import HfEventsReader, read_hf_events, scan_hf_checkpoints


def lines(*records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def test_records_map_to_the_shared_event_types(tmp_path):
    data = lines(
        {"kind": "start", "max_steps": 400, "resumed_from": None},
        {"kind": "train", "step": 10, "loss": 2.5, "step_time_s": 0.03, "tokens_per_s": 31000},
        {"kind": "eval", "step": 25, "val_loss": 1.9},
        {"kind": "train", "step": 30, "loss": 2.1},
        {"kind": "checkpoint", "step": 25, "path": "checkpoints/checkpoint-25", "val_loss": 1.9},
        {"kind": "early_stop", "step": 175, "best_val_loss": 0.83, "patience": 3},
        {"kind": "end", "reason": "early_stop", "step": 175, "best_val_loss": 0.83, "best_checkpoint": "/abs/checkpoint-100",
         "best_dir": "checkpoints/best"},
        {"kind": "eval_result", "accuracy": 0.62, "base_accuracy": 0.2},
        {"kind": "something_new", "step": 1},
    )
    reader = HfEventsReader(base_dir=tmp_path)
    assert reader.feed(data) + reader.finish() == [
        AttemptStarted("hf"),
        Progress(0, 400),
        Progress(10, 400, 2.5, None, 0.03, None, 31000.0),
        ValLoss(25, 1.9),
        Progress(30, 400, 2.1, 1.9),
        CheckpointSaved(str(tmp_path / "checkpoints/checkpoint-25"), 25, 1.9),
        EarlyStop(175, 0.83, 3),
        TrainEnd("early_stop", 175, 0.83, "/abs/checkpoint-100"),
        FinalArtifact(str(tmp_path / "checkpoints/best")),  # and no second EarlyStop
        EvalResult(0.62, 0.2),
    ]


def test_end_reasons():
    def end(reason, **extra):
        reader = HfEventsReader()
        reader.feed(lines({"kind": "start", "max_steps": 60}))
        return reader.feed(lines({"kind": "end", "reason": reason, "step": 60, **extra}))[1:]

    assert end("max_steps") == [MaxStepsReached(60)]
    assert end("early_stop") == [EarlyStop(60, None, None)]
    assert end("preempted") == [PreemptSaved(60)]
    assert end("max_steps", best_dir="/r/best") == [FinalArtifact("/r/best"), MaxStepsReached(60)]
    assert end("timeout") == [PreemptSaved(60)]
    assert end("error", error="torch.OutOfMemoryError: CUDA out of memory.") == [
        Failure(EndCause.GPU_OOM, "error torch.OutOfMemoryError: CUDA out of memory.")
    ]
    assert end("error", error="NCCL watchdog timeout")[0].cause == EndCause.NCCL_TIMEOUT
    assert end("error", error="ValueError: bad")[0].cause == EndCause.ERROR


def test_a_half_written_last_line_waits_and_a_broken_line_is_skipped(tmp_path):
    reader = HfEventsReader()
    assert reader.feed(b'{"kind": "train", "step": 1, "loss": 2.0}\n{"kind": "train", "st') == [Progress(1, None, 2.0)]
    assert reader.feed(b'ep": 2, "loss": 1.5}\nnot json\n[1, 2]\n') == [Progress(2, None, 1.5)]
    assert reader.skipped == 2
    reader.feed(b'{"kind": "train", "step": 3, "lo')
    assert reader.finish() == []  # still being written: ignored
    path = fixture_dir("hf_preempted") / "events.jsonl"
    events = read_hf_events(path)
    assert [e for e in events if isinstance(e, PreemptSaved)] == [PreemptSaved(120, str(path.parent / "checkpoints/checkpoint-120"))]
    assert events[-1] == TrainEnd("preempted", 120, 1.0412, str(path.parent / "checkpoints/checkpoint-100"))


def test_a_resumed_start_begins_at_its_checkpoint_step():
    reader = HfEventsReader()
    events = reader.feed(lines({"kind": "start", "max_steps": 60, "resumed_from": "/r/checkpoints/checkpoint-30"}))
    assert events == [AttemptStarted("hf"), Progress(30, 60)]
    assert reader.feed(lines({"kind": "start", "max_steps": 60, "resumed_from": "/r/elsewhere"})) == [AttemptStarted("hf")]


def test_a_complete_last_line_without_newline_is_read():
    reader = HfEventsReader()
    reader.feed(b'{"kind": "eval", "step": 5, "val_loss": 0.5}')
    assert reader.finish() == [ValLoss(5, 0.5)]


def test_incremental_reading_equals_reading_at_once():
    data = (fixture_dir("hf_requeued_completed") / "events.jsonl").read_bytes()
    whole = HfEventsReader("/r")
    expected = whole.feed(data) + whole.finish()
    rng = random.Random(1)
    for _ in range(20):
        reader = HfEventsReader("/r")
        events, pos = [], 0
        while pos < len(data):
            step = rng.randint(1, 200)
            events += reader.feed(data[pos : pos + step])
            pos += step
        assert events + reader.finish() == expected


def test_feed_file_follows_a_growing_file(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(lines({"kind": "start", "max_steps": 10}))
    reader = HfEventsReader(tmp_path)
    assert reader.feed_file(path) == [AttemptStarted("hf"), Progress(0, 10)]
    with open(path, "ab") as f:
        f.write(lines({"kind": "train", "step": 1, "loss": 3.0}))
    assert reader.feed_file(path) == [Progress(1, 10, 3.0)]
    assert read_hf_events(tmp_path / "missing.jsonl") == []


def test_trainer_checkpoint_dirs(tmp_path):
    ck = tmp_path / "checkpoints"
    for step, best in ((100, 100), (175, 100)):
        (ck / f"checkpoint-{step}").mkdir(parents=True)
        (ck / f"checkpoint-{step}" / "trainer_state.json").write_text(
            json.dumps({"best_model_checkpoint": f"out/checkpoints/checkpoint-{best}", "best_metric": 0.83})
        )
    (ck / "checkpoint-200").mkdir()  # being written: no trainer_state.json yet
    (ck / "final_adapter").mkdir()
    summary = scan_hf_checkpoints(ck)
    assert [c.step for c in summary.checkpoints] == [100, 175, 200]
    assert summary.last.path == ck / "checkpoint-175"
    assert summary.best_path == ck / "checkpoint-100" and summary.best_metric == 0.83
    assert scan_hf_checkpoints(tmp_path / "nothing").last is None
