"""A classification run through the real local Slurm on two ranks (torchrun, gloo): train and the afterok eval job, early stopping on val_f1, metrics beside the untuned model."""

from __future__ import annotations

import json
import os

import pytest

from tests.slurm.conftest import hpcft

pytestmark = [pytest.mark.slurm, pytest.mark.hf]


def test_classification_on_slurm_stops_early_on_f1_and_beats_the_untuned_model(slurm, tmp_path):
    env = dict(os.environ, HPC_FT_REGISTRY=str(tmp_path / "registry.sqlite"), HF_HUB_OFFLINE="1")
    launch = json.loads(hpcft(
        "train", "task=classification", "cluster=slurm_local", f"work_dir={tmp_path}", "eval=true",
        "data.synthetic.n_train=400", "data.synthetic.n_valid=80", "data.synthetic.n_test=100",
        "trainer.val_check_interval=15", "backend.threads=1", "trainer.devices=2", "model.micro_batch_size=8",
        "--json", env=env).stdout)
    assert set(launch["jobs"]) == {"train", "eval"}
    st = json.loads(hpcft("status", launch["run_id"], "--json", "--wait", env=env, timeout=900).stdout)
    assert st["state"] == "COMPLETED" and st["jobs"]["eval"]["state"] == "COMPLETED", st.get("log_tail")
    assert st["end_cause"] == "EARLY_STOPPED" and st["monitor"] == "val_f1"
    assert st["metrics"]["f1"] - st["base_metrics"]["f1"] >= 0.4, (st["metrics"], st["base_metrics"])
    events = [json.loads(line) for line in open(os.path.join(st["run_dir"], "events.jsonl"))]
    assert next(e for e in events if e["kind"] == "start")["world_size"] == 2
    record = json.loads(open(os.path.join(st["run_dir"], "run.json")).read())
    assert record["data"]["task"]["labels"] == ["negative", "neutral", "positive"]
