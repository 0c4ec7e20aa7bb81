"""A task run's events read back: the monitored metric (latest and best), the eval's metrics beside the untuned model, in status, runs and watch."""

from __future__ import annotations

import json

from hpc_ft.track.follow import progress_line
from hpc_ft.track.listing import format_runs
from hpc_ft.track.run_state import state_from_run_dir
from hpc_ft.track.status import format_status

EVENTS = [
    {"kind": "start", "max_steps": 100, "task": "classification", "monitor": "val_f1", "mode": "max"},
    {"kind": "train", "step": 10, "loss": 1.0},
    {"kind": "eval", "step": 10, "val_loss": 1.05, "val_f1": 0.30, "val_accuracy": 0.4},
    {"kind": "eval", "step": 20, "val_loss": 0.60, "val_f1": 0.80, "val_accuracy": 0.8},
    {"kind": "eval", "step": 30, "val_loss": 0.55, "val_f1": 0.75, "val_accuracy": 0.79},
]
END = [
    {"kind": "early_stop", "step": 30, "best_val_loss": 0.6, "monitor": "val_f1", "best_metric": 0.8},
    {"kind": "end", "reason": "early_stop", "step": 30, "best_val_loss": 0.6, "monitor": "val_f1", "best_metric": 0.8,
     "best_checkpoint": "checkpoints/checkpoint-20"},
    {"kind": "eval_result", "task": "classification", "accuracy": 0.81, "base_accuracy": 0.33,
     "metrics": {"accuracy": 0.81, "f1": 0.79, "log_loss": 0.5}, "base_metrics": {"accuracy": 0.33, "f1": 0.2,
                                                                                  "log_loss": 1.1}},
]


def _run(tmp_path, events):
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return state_from_run_dir(tmp_path, "hf", slurm_state="COMPLETED", exit_code=0, monitor="val_f1",
                              monitor_mode="max")


def test_while_training_the_best_follows_the_monitor_mode_not_the_loss(tmp_path):
    rs = _run(tmp_path, EVENTS)
    assert (rs.monitor, rs.val_metric, rs.best_metric) == ("val_f1", 0.75, 0.80)
    assert rs.metrics is None
    line = progress_line({**rs.to_dict(), "state": "RUNNING"})
    assert "val_f1 0.7500 (best 0.8000)" in line


def test_after_eval_status_shows_metrics_beside_the_untuned_model(tmp_path):
    rs = _run(tmp_path, EVENTS + END)
    assert rs.early_stopped and rs.best_metric == 0.8 and rs.best_val_loss == 0.6
    assert rs.metrics == {"accuracy": 0.81, "f1": 0.79, "log_loss": 0.5}
    assert rs.base_metrics["f1"] == 0.2 and rs.accuracy == 0.81
    st = {**rs.to_dict(), "run_id": "r1", "name": "n", "cluster": "local", "run_dir": str(tmp_path), "jobs": {}}
    text = format_status(st)
    assert "metric   val_f1 0.7500   best 0.8000" in text
    assert "f1 0.7900 (untuned 0.2000)" in text
    listing = format_runs([{**st, "created": "now"}])
    assert "val_f1 0.8000" in listing


def test_sft_runs_have_no_task_metrics(tmp_path):
    (tmp_path / "events.jsonl").write_text(json.dumps({"kind": "eval", "step": 5, "val_loss": 1.0}) + "\n")
    rs = state_from_run_dir(tmp_path, "hf")
    assert rs.monitor is None and rs.best_metric is None and rs.metrics is None
