"""Each task through the real local Slurm: train and the afterok eval job, early stopping on the task's metric,
metrics beside the untuned model; classification on two ranks (torchrun, gloo)."""

from __future__ import annotations

import json
import os

import pytest

from tests.slurm.conftest import hpcft

pytestmark = [pytest.mark.slurm, pytest.mark.hf]

SMALL = ["data.synthetic.n_train=400", "data.synthetic.n_valid=80", "data.synthetic.n_test=100",
         "trainer.val_check_interval=15", "backend.threads=1"]
TASKS = [
    # task, extra overrides, monitor, metric, least gain over the untuned model (negative: lower is better)
    ("classification", ["trainer.devices=2", "model.micro_batch_size=8"], "val_f1", "f1", 0.4),
    ("token_classification", [], "val_f1", "f1", 0.5),
    ("preference", [], "val_log_loss", "log_loss", -0.25),
]


@pytest.mark.parametrize("task,extra,monitor,metric,better", TASKS, ids=[t[0] for t in TASKS])
def test_task_on_slurm_stops_early_on_its_metric_and_beats_the_untuned_model(slurm, tmp_path, task, extra, monitor,
                                                                            metric, better):
    env = dict(os.environ, HPC_FT_REGISTRY=str(tmp_path / "registry.sqlite"), HF_HUB_OFFLINE="1")
    launch = json.loads(hpcft("train", f"task={task}", "cluster=slurm_local", f"work_dir={tmp_path}", "eval=true",
                              *SMALL, *extra, "--json", env=env).stdout)
    assert set(launch["jobs"]) == {"train", "eval"}
    st = json.loads(hpcft("status", launch["run_id"], "--json", "--wait", env=env, timeout=900).stdout)
    assert st["state"] == "COMPLETED" and st["jobs"]["eval"]["state"] == "COMPLETED", st.get("log_tail")
    assert st["end_cause"] == "EARLY_STOPPED" and st["monitor"] == monitor
    gain = st["metrics"][metric] - st["base_metrics"][metric]
    assert (gain >= better) if better > 0 else (gain <= better), (st["metrics"], st["base_metrics"])
    events = [json.loads(line) for line in open(os.path.join(st["run_dir"], "events.jsonl"))]
    assert next(e for e in events if e["kind"] == "start")["world_size"] == (2 if "trainer.devices=2" in extra else 1)
    if task == "classification":
        record = json.loads(open(os.path.join(st["run_dir"], "run.json")).read())
        assert record["data"]["task"]["labels"] == ["negative", "neutral", "positive"]
