"""Tracking against the real local Slurm: a time limit ends as TIMEOUT; the eval job of a failed training
is cancelled and reported so; a run whose submitting shell died right after sbatch is found again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpc_ft.track.outcome import exit_code_for
from tests.slurm.conftest import REPO, SMALL, broken_model, hpcft

pytestmark = [pytest.mark.slurm, pytest.mark.hf]


def _env(tmp_path):
    return dict(os.environ, HPC_FT_REGISTRY=str(tmp_path / "registry.sqlite"))


def _sacct(job_id: str, field: str = "State") -> str:
    for _ in range(40):
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", field], capture_output=True,
                             text=True).stdout.strip().splitlines()
        if out and out[-1]:
            return out[-1].split()[0]
        time.sleep(0.5)
    return ""


def _status(ref, env, wait=False):
    proc = hpcft("status", ref, "--json", *(["--wait"] if wait else []), env=env, timeout=400, check=False)
    st = json.loads(proc.stdout)
    assert proc.returncode == exit_code_for(st["state"]), (proc.returncode, st["state"], proc.stderr)  # 0: COMPLETED
    return st


def test_a_run_past_its_time_limit_without_requeues_ends_timeout(tiny_work, tmp_path):
    env = _env(tmp_path)
    proc = hpcft("train", "cluster=slurm_local", f"work_dir={tiny_work}", "cluster.time=1", "cluster.max_requeues=0",
                 "cluster.signal_before_timeout_s=20", "trainer.max_steps=200000", "trainer.val_check_interval=100",
                 "exp_manager.early_stopping_callback_params.patience=1000", "backend.threads=1",
                 "model.micro_batch_size=4", "model.global_batch_size=4", "--json", env=env)
    launch = json.loads(proc.stdout)
    st = _status(launch["run_id"], env, wait=True)
    assert st["state"] == "TIMEOUT", st
    assert st["end_cause"] == "TIMEOUT", st
    assert st["requeues"] == 0 and st["step"] and st["step"] < 200000
    assert _sacct(launch["jobs"]["train"]) == "TIMEOUT"
    events_log = (Path(launch["run_dir"]) / "state" / "events.log").read_text()
    assert "not requeued" in events_log and "requeue 1/" not in events_log
    runs = json.loads(hpcft("runs", "--json", env=env).stdout)
    assert runs[0]["state"] == "TIMEOUT" and runs[0]["end_cause"] == "TIMEOUT"


def test_the_eval_job_of_a_failed_training_is_cancelled_and_reported_so(tiny_work, tmp_path):
    env = _env(tmp_path)
    # a checkpoint whose weights are gone fails on the node; eval=true chains eval with afterok
    proc = hpcft("train", "cluster=slurm_local", f"work_dir={tiny_work}", *SMALL,
                 f"model.hf_path={broken_model(tiny_work, tmp_path)}", "eval=true", "--json", env=env)
    launch = json.loads(proc.stdout)
    assert set(launch["jobs"]) == {"train", "eval"}
    deadline = time.time() + 240
    while True:
        st = _status(launch["run_id"], env)
        if st["jobs"]["eval"]["state"] == "CANCELLED" and st["state"] == "FAILED":
            break
        assert time.time() < deadline, f"the eval job was left {st['jobs']['eval']}: {st}"
        time.sleep(2)
    assert _sacct(launch["jobs"]["train"]) == "FAILED"
    assert _sacct(launch["jobs"]["eval"]) == "CANCELLED", "Slurm itself cancelled the eval job"
    assert st["jobs"]["eval"]["job_id"] == launch["jobs"]["eval"]
    assert "training FAILED" in st["jobs"]["eval"]["reason"]
    assert not subprocess.run(["squeue", "-h", "-j", launch["jobs"]["eval"]], capture_output=True,
                              text=True).stdout.strip(), "nothing left pending"
    text = hpcft("status", launch["run_id"], env=env, check=False).stdout
    assert "eval" in text and "CANCELLED" in text and "training FAILED" in text


DIE_AFTER_SBATCH = """
import os, sys
from hpc_ft.executors import slurm as executors
real = executors.submit_slurm
def submit_then_die(*args, **kwargs):
    sub = real(*args, **kwargs)
    print("SUBMITTED", sub.job_id, flush=True)
    os._exit(1)  # the submitting shell dies: no run.json job ids, no registry row
executors.submit_slurm = submit_then_die
from hpc_ft.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_run_whose_submitter_died_after_sbatch_is_found_again(tiny_work, tmp_path):
    env = _env(tmp_path)
    proc = subprocess.run([sys.executable, "-c", DIE_AFTER_SBATCH, "train", "cluster=slurm_local",
                           f"work_dir={tiny_work}", *SMALL, "exp_manager.name=orphan", "--json"],
                          capture_output=True, text=True, env=env, cwd=str(REPO), timeout=300)
    assert proc.returncode == 1, proc.stderr
    job_id = proc.stdout.split("SUBMITTED", 1)[1].split()[0]
    assert json.loads(hpcft("runs", "--json", env=env).stdout) == [], "the registry never heard of it"

    out = hpcft("runs", "--reconcile", "--json", env=env)
    runs = [r for r in json.loads(out.stdout) if r["job_id"] == job_id]  # (an orphan of an earlier session may come too)
    assert len(runs) == 1, out.stderr
    run_id, run_dir = runs[0]["run_id"], Path(runs[0]["run_dir"])
    assert f"registered: run {run_id} (train job {job_id}" in out.stderr
    assert run_dir.parent.name == "orphan" and run_dir.name == run_id
    rec = json.loads((run_dir / "run.json").read_text())
    assert rec["jobs"] == {"train": job_id} and rec["job_ids"] == [job_id]

    st = _status(run_id, env, wait=True)
    assert st["state"] == "COMPLETED" and st["job_id"] == job_id and st["step"] == 12, st
    again = hpcft("runs", "--reconcile", env=env)
    assert f"run {run_id}" not in again.stderr, "found once, then known"
