"""Requeue only when it helps: a run with a 1-minute limit needs several allocations and reaches
max_steps exactly, resuming from the checkpoint it saved on Slurm's pre-timeout signal each time."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.slurm.conftest import hpcft

pytestmark = [pytest.mark.slurm, pytest.mark.hf]

MAX_STEPS = 1200
CKPT_EVERY = 100


def test_time_limited_run_requeues_and_resumes_to_max_steps_exactly(tiny_work, tmp_path):
    env = dict(os.environ, HPC_FT_REGISTRY=str(tmp_path / "registry.sqlite"))
    proc = hpcft("train", "cluster=slurm_local", f"work_dir={tiny_work}", "cluster.time=1",
                 "cluster.signal_before_timeout_s=40", "cluster.max_requeues=12", f"trainer.max_steps={MAX_STEPS}",
                 f"trainer.val_check_interval={CKPT_EVERY}", "exp_manager.early_stopping_callback_params.patience=100",
                 "backend.threads=1", "model.micro_batch_size=8", "model.global_batch_size=8", "--json", env=env)
    launch = json.loads(proc.stdout)
    st = json.loads(hpcft("status", launch["run_id"], "--wait", "--json", env=env, timeout=900).stdout)
    assert st["state"] == "COMPLETED", st
    assert st["step"] == MAX_STEPS and st["end_cause"] == "COMPLETED"
    # Slurm may send the pre-timeout signal up to a minute early, so an allocation trains 0-20 s: 1,200 steps
    # (about 40 s of training here) need two allocations at the very least, usually four or five
    assert st["requeues"] >= 1, "the run should have needed at least two allocations"

    events = [json.loads(line) for line in (Path(launch["run_dir"]) / "events.jsonl").read_text().splitlines()]
    attempts, current = [], None
    for e in events:
        if e["kind"] == "start":
            current = {"start": e, "steps": [], "saved": None}
            attempts.append(current)
        elif e["kind"] == "train":
            current["steps"].append(e["step"])
        elif e["kind"] == "preempt_saved":
            current["saved"] = e["step"]
    # an allocation whose signal came while Python was still importing trained nothing and wrote no
    # start record (it was requeued all the same); every allocation that trained resumed correctly
    assert 2 <= len(attempts) <= st["requeues"] + 1
    for before, after in zip(attempts, attempts[1:]):
        resumed = after["start"]["resumed_from"]
        assert resumed, "every later allocation resumes from a checkpoint"
        resumed_step = int(resumed.rsplit("-", 1)[1])
        trained_until = max(before["steps"] + [before["saved"] or 0])
        # no step trained twice beyond the last checkpoint interval (with the signal's save: none at all)
        assert 0 <= trained_until - resumed_step <= CKPT_EVERY
        assert before["saved"] is None or resumed_step == before["saved"]
        assert min(after["steps"]) > resumed_step
    log = (Path(launch["run_dir"]) / "state" / "events.log").read_text()
    assert log.count("requeue ") == st["requeues"]
