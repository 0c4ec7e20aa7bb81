"""`status --json` and `runs --json` share one schema; `runs` asks Slurm once for all live runs; squeue
stands in when sacct does not know a job; the job reasons a person needs (eval cancelled after a failed
training, node not responding, requeued after a node failure)."""

from __future__ import annotations

import json

import pytest

from hpc_ft.track.registry import Registry
from hpc_ft.track.status import STATUS_FIELDS, STATUS_KEYS, run_status
from tests.track_cli.helpers import calls, env_with, fake_commands, hf_events, hpcft, make_run

SACCT = """
if [[ "$*" == *SubmitLine* ]]; then exit 0; fi
if [ -f "$(dirname "$0")/sacct.fail" ]; then echo "sacct: error: Problem talking to the database" >&2; exit 1; fi
cat "$(dirname "$0")/sacct.out" 2>/dev/null
"""
SQUEUE = 'cat "$(dirname "$0")/squeue.out" 2>/dev/null'
SINFO = 'cat "$(dirname "$0")/sinfo.out" 2>/dev/null'


def _sacct_row(job, state, exit_code="0:0", reason="None", node="n1"):
    return "|".join([job, state, exit_code, "00:01:00", "2026-01-01T00:00:00", "Unknown", reason, "hpcft.x", node])


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    bin_dir = fake_commands(tmp_path / "bin", {"sacct": SACCT, "squeue": SQUEUE, "sinfo": SINFO,
                                               "scontrol": "exit 1"})
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    return bin_dir


def test_runs_json_objects_have_exactly_the_keys_of_status_json(tmp_path, fake_slurm):
    reg_path = tmp_path / "registry.sqlite"
    reg = Registry(reg_path)
    done = make_run(tmp_path / "exp", reg, jobs={"train": "100"}, events=hf_events(20, 20))
    live = make_run(tmp_path / "exp", reg, jobs={"train": "101", "eval": "102"}, events=hf_events(7, 20, end=False))
    queued = make_run(tmp_path / "exp", reg, jobs={"train": "103"})
    old = make_run(tmp_path / "exp", reg, jobs={"train": "99"}, state="COMPLETED")
    reg.update_run(old["run_id"], state="COMPLETED", summary={k: None for k in STATUS_KEYS})  # an older summary
    (fake_slurm / "sacct.out").write_text("\n".join([
        _sacct_row("100", "COMPLETED"), _sacct_row("101", "RUNNING", "0:0"),
        _sacct_row("102", "PENDING", "0:0", "Dependency", "None assigned")]) + "\n")
    (fake_slurm / "squeue.out").write_text("103|PENDING|Priority|\n")
    env = env_with(reg_path, fake_slurm)
    hpcft("status", done["run_id"], env=env)  # records its final status in the registry

    (fake_slurm / "calls.log").unlink()
    runs = json.loads(hpcft("runs", "--json", env=env).stdout)
    assert len(calls(fake_slurm, "sacct")) == 1, "one sacct call for all live runs"
    assert len(calls(fake_slurm, "squeue")) == 1, "one squeue call for what sacct did not know"
    by_id = {r["run_id"]: r for r in runs}
    assert set(by_id) == {done["run_id"], live["run_id"], queued["run_id"], old["run_id"]}
    for run_id, listed in by_id.items():
        assert set(listed) == set(STATUS_FIELDS), run_id
        status = json.loads(hpcft("status", run_id, "--json", env=env, check=False).stdout)
        assert set(status) == set(STATUS_FIELDS), run_id
        for key in ("run_id", "job_id", "state", "name", "run_dir", "backend", "cluster", "created", "end_cause",
                    "step", "max_steps", "best_val_loss"):
            if run_id != old["run_id"]:
                assert listed[key] == status[key], (run_id, key)
    assert by_id[done["run_id"]]["state"] == "COMPLETED" and by_id[done["run_id"]]["end_cause"] == "COMPLETED"
    assert by_id[live["run_id"]]["state"] == "RUNNING" and by_id[live["run_id"]]["step"] == 7
    assert by_id[live["run_id"]]["jobs"]["eval"]["state"] == "PENDING"
    assert by_id[queued["run_id"]]["state"] == "PENDING"
    assert by_id[queued["run_id"]]["jobs"]["train"]["reason"] == "Priority"


def test_squeue_answers_when_sacct_fails_or_does_not_know_the_job(tmp_path, fake_slurm):
    reg = Registry(tmp_path / "registry.sqlite")
    run = make_run(tmp_path / "exp", reg, jobs={"train": "201"}, events=hf_events(3, 50, end=False))
    row = reg.get(run["run_id"])
    (fake_slurm / "squeue.out").write_text("201|RUNNING|None|n1\n")
    (fake_slurm / "sinfo.out").write_text("n1|allocated\n")
    (fake_slurm / "sacct.out").write_text("")  # accounting has no record of it yet
    st = run_status(row)
    assert st["state"] == "RUNNING" and st["jobs"]["train"]["state"] == "RUNNING" and st["step"] == 3
    assert calls(fake_slurm, "squeue"), "squeue was asked"

    (fake_slurm / "sacct.fail").write_text("")  # slurmdbd down: sacct fails outright
    (fake_slurm / "squeue.out").write_text("201|PENDING|Resources|\n")
    st = run_status(row)
    assert st["state"] == "PENDING" and st["jobs"]["train"]["reason"] == "Resources"

    (fake_slurm / "squeue.out").write_text("")  # neither knows it
    st = run_status(row)
    assert st["jobs"]["train"]["state"] == "UNKNOWN"
    assert st["state"] == "UNKNOWN" and st["end_cause"] == "UNKNOWN", "no word from Slurm is not a failure"


def test_eval_cancelled_after_failed_training_says_why(tmp_path, fake_slurm):
    reg = Registry(tmp_path / "registry.sqlite")
    run = make_run(tmp_path / "exp", reg, jobs={"train": "301", "eval": "302"})
    (fake_slurm / "sacct.out").write_text("\n".join([
        _sacct_row("301", "FAILED", "1:0"),
        _sacct_row("302", "CANCELLED", "0:0", "DependencyNeverSatisfied", "None assigned")]) + "\n")
    st = run_status(reg.get(run["run_id"]), reg)
    assert st["state"] == "FAILED"
    ev = st["jobs"]["eval"]
    assert ev["state"] == "CANCELLED" and ev["job_id"] == "302"
    assert "training FAILED" in ev["reason"] and "DependencyNeverSatisfied" in ev["reason"]
    assert reg.get(run["run_id"])["state"] == "FAILED"


def test_a_running_job_on_a_node_that_stopped_responding_is_flagged(tmp_path, fake_slurm):
    reg = Registry(tmp_path / "registry.sqlite")
    run = make_run(tmp_path / "exp", reg, jobs={"train": "401"}, events=hf_events(4, 100, end=False))
    (fake_slurm / "sacct.out").write_text(_sacct_row("401", "RUNNING", "0:0", "None", "n1") + "\n")
    (fake_slurm / "sinfo.out").write_text("n1|allocated*\n")
    st = run_status(reg.get(run["run_id"]))
    assert st["state"] == "RUNNING"
    assert "NOT RESPONDING" in st["jobs"]["train"]["reason"] and "n1" in st["jobs"]["train"]["reason"]
    (fake_slurm / "sinfo.out").write_text("n1|allocated\n")
    assert run_status(reg.get(run["run_id"]))["jobs"]["train"]["reason"] == ""


def test_a_job_requeued_after_a_node_failure_says_so(tmp_path, fake_slurm):
    reg = Registry(tmp_path / "registry.sqlite")
    run = make_run(tmp_path / "exp", reg, jobs={"train": "501"}, events=hf_events(4, 100, end=False))
    (fake_slurm / "sacct.out").write_text("\n".join([
        _sacct_row("501", "NODE_FAIL", "0:0", "None", "n1"),
        _sacct_row("501", "PENDING", "0:0", "BeginTime", "None assigned")]) + "\n")
    st = run_status(reg.get(run["run_id"]))
    assert st["state"] == "PENDING" and st["requeues"] == 1
    assert st["jobs"]["train"]["previous"] == ["NODE_FAIL"]
    assert "requeued after NODE_FAIL" in st["jobs"]["train"]["reason"]
    text = hpcft("status", run["run_id"], env=env_with(tmp_path / "registry.sqlite", fake_slurm), check=False).stdout
    assert "requeued after NODE_FAIL" in text
