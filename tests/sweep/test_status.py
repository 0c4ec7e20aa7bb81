"""Sweep status pieces: Slurm's array records, the fastest point, the backend's peak memory."""

from __future__ import annotations

import json

import pytest

from hpc_ft.errors import UserError
from hpc_ft.sweep import status as sst
from hpc_ft.executors import slurm as sl


@pytest.mark.parametrize("spec, tasks", [("3", [3]), ("[2-5%1]", [2, 3, 4, 5]), ("[1,3%1]", [1, 3]),
                                         ("[0-1,7]", [0, 1, 7])])
def test_slurm_array_task_notation(spec, tasks):
    assert sl.expand_tasks(spec) == tasks


def test_one_sacct_call_covers_started_pending_and_vanished_tasks(monkeypatch):
    calls = []

    def fake_sacct(ids):
        calls.append(("sacct", list(ids)))
        return {"77_0": {"JobID": "77_0", "State": "COMPLETED", "ExitCode": "0:0"},
                "77_1": {"JobID": "77_1", "State": "FAILED", "ExitCode": "1:0"},
                "77_[3-4%1]": {"JobID": "77_[3-4%1]", "State": "PENDING", "ExitCode": "0:0"}}

    def fake_squeue(ids):
        calls.append(("squeue", list(ids)))
        return {}

    monkeypatch.setattr(sl, "sacct", fake_sacct)
    monkeypatch.setattr(sl, "squeue", fake_squeue)
    states = sl.array_states("77", [0, 1, 2, 3, 4])
    assert [states[t]["State"] for t in range(5)] == ["COMPLETED", "FAILED", "CANCELLED", "PENDING", "PENDING"]
    assert calls == [("sacct", ["77"]), ("squeue", ["77"])]


def test_before_accounting_knows_the_array_squeue_answers(monkeypatch):
    monkeypatch.setattr(sl, "sacct", lambda ids: {})
    monkeypatch.setattr(sl, "squeue", lambda ids: {"9_[0-2%2]": {"JobID": "9_[0-2%2]", "State": "PENDING",
                                                                   "ExitCode": ""}})
    assert {t: s["State"] for t, s in sl.array_states("9", [0, 1, 2]).items()} == {0: "PENDING", 1: "PENDING",
                                                                                    2: "PENDING"}


def test_an_unknown_array_leaves_the_state_empty(monkeypatch):
    monkeypatch.setattr(sl, "sacct", lambda ids: {})
    monkeypatch.setattr(sl, "squeue", lambda ids: {})
    assert sl.array_states("9", [0])[0]["State"] == ""


def _status(*rows):
    points = [dict(index=i, task=i, run_id=f"r{i}", swept={}, overrides=[], tp=1, pp=1, mbs=1, gbs=8, **r)
              for i, r in enumerate(rows)]
    return {"sweep_id": "s", "points": points, "counts": {}}


def test_best_is_the_most_tokens_per_second_then_the_fewest_seconds_per_step():
    st = _status(dict(state="COMPLETED", tokens_per_s=900.0, step_time_s=0.5),
                 dict(state="COMPLETED", tokens_per_s=1000.0, step_time_s=0.4),
                 dict(state="COMPLETED", tokens_per_s=1000.0, step_time_s=0.3),
                 dict(state="FAILED", tokens_per_s=5000.0, step_time_s=0.1),
                 dict(state="CANCELLED_OOM", tokens_per_s=None, step_time_s=None))
    assert sst.best_point(st)["index"] == 2


def test_without_tokens_per_second_the_fewest_seconds_per_step_wins():
    st = _status(dict(state="COMPLETED", tokens_per_s=None, step_time_s=0.5),
                 dict(state="COMPLETED", tokens_per_s=None, step_time_s=0.2))
    assert sst.best_point(st)["index"] == 1


def test_no_successful_point_is_an_error():
    st = _status(dict(state="FAILED", tokens_per_s=None, step_time_s=None))
    st["counts"] = {"FAILED": 1}
    with pytest.raises(UserError, match="no point has finished successfully"):
        sst.best_point(st)


def test_peak_memory_is_the_hf_end_events_rss(tmp_path):
    events = [{"kind": "train", "step": 5, "peak_rss_mb": 1.0}, {"kind": "end", "reason": "max_steps", "peak_rss_mb": 812.5},
              {"kind": "eval_result", "accuracy": 0.5}]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + '{"kind": "tor')
    assert sst.peak_memory_mb(tmp_path, "hf") == 812.5
    assert sst.peak_memory_mb(tmp_path, "nemo") is None
    assert sst.peak_memory_mb(tmp_path / "missing", "hf") is None
