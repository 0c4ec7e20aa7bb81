"""Finding a run's newest and best checkpoints from what train.py leaves on disk (no torch needed)."""

from __future__ import annotations

import json

import pytest

from hpc_ft.backends.hf_runtime.checkpoints import latest_checkpoint, resolve_best_checkpoint
from hpc_ft.errors import UserError


def fake_checkpoint(root, step, best=None):
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "best_model_checkpoint": best}))
    return path


def test_latest_checkpoint_orders_by_step_number_and_skips_incomplete_ones(tmp_path):
    fake_checkpoint(tmp_path, 9)
    fake_checkpoint(tmp_path, 100)
    (tmp_path / "checkpoint-200").mkdir()  # being written when the job was killed: no trainer_state.json
    assert latest_checkpoint(tmp_path).name == "checkpoint-100"
    assert latest_checkpoint(tmp_path / "missing") is None


def test_best_comes_from_the_top_level_state_even_after_the_run_folder_moved(tmp_path):
    run = tmp_path / "moved"
    fake_checkpoint(run, 50)
    fake_checkpoint(run, 75)
    (run / "trainer_state.json").write_text(json.dumps({"best_model_checkpoint": "/old/mount/run/checkpoint-50"}))
    assert resolve_best_checkpoint(run) == (run / "checkpoint-50").resolve()


def test_best_falls_back_to_best_dir_then_end_event_then_newest_state(tmp_path):
    run = tmp_path / "run"
    fake_checkpoint(run, 10)
    fake_checkpoint(run, 20, best=str(run / "checkpoint-10"))
    assert resolve_best_checkpoint(run).name == "checkpoint-10"  # newest checkpoint's own record

    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"kind": "end", "best_checkpoint": str(run / "checkpoint-20")}) + "\n")
    assert resolve_best_checkpoint(run, events).name == "checkpoint-20"

    (run / "best").mkdir()
    (run / "best" / "adapter_config.json").write_text("{}")
    assert resolve_best_checkpoint(run, events).name == "best"


def test_no_checkpoint_is_a_user_error_naming_the_folder(tmp_path):
    with pytest.raises(UserError, match="no trained checkpoint"):
        resolve_best_checkpoint(tmp_path)
    with pytest.raises(UserError, match="no such folder"):
        resolve_best_checkpoint(tmp_path / "nope")
