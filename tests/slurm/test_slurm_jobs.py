"""The main job through the real local Slurm: completes, runs 2 torchrun ranks, cancels, fails honestly."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from hpc_ft.track.outcome import exit_code_for
from tests.slurm.conftest import SMALL, broken_model, hpcft, submit

pytestmark = [pytest.mark.slurm, pytest.mark.hf]


def _env(tmp_path):
    return dict(os.environ, HPC_FT_REGISTRY=str(tmp_path / "registry.sqlite"))


def _sacct_state(job_id: str) -> str:
    for _ in range(20):
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State"], capture_output=True,
                             text=True).stdout.strip().splitlines()
        if out:
            return out[-1].split()[0]  # "CANCELLED by 0" -> CANCELLED
        time.sleep(0.5)
    return ""


def _status(run_id, env, wait=True):
    args = ["status", run_id, "--json"] + (["--wait"] if wait else [])
    proc = hpcft(*args, env=env, timeout=400, check=False)
    st = json.loads(proc.stdout)
    assert proc.returncode == exit_code_for(st["state"]), (proc.returncode, st["state"], proc.stderr)  # 0: COMPLETED
    return st


def test_submit_runs_to_completed_and_sacct_agrees(tiny_work, tmp_path):
    env = _env(tmp_path)
    launch = submit(tiny_work, env=env)
    st = _status(launch["run_id"], env)
    assert st["state"] == "COMPLETED", st
    assert st["job_id"] == launch["jobs"]["train"]
    assert _sacct_state(st["job_id"]) == "COMPLETED"
    assert st["step"] == 12 and st["max_steps"] == 12
    assert st["train_loss"] is not None and st["best_val_loss"] is not None
    assert st["best_checkpoint"] and os.path.isdir(st["best_checkpoint"])
    runs = json.loads(hpcft("runs", "--json", env=env).stdout)
    assert [r["run_id"] for r in runs] == [launch["run_id"]] and runs[0]["state"] == "COMPLETED"


def test_two_process_torchrun_job_on_two_gpus(tiny_work, tmp_path):
    env = _env(tmp_path)
    launch = submit(tiny_work, "trainer.devices=2", "model.micro_batch_size=2", env=env)
    script = open(os.path.join(launch["run_dir"], "job.sbatch")).read()
    assert "#SBATCH --gres=gpu:2" in script and "--nproc_per_node=2" in script
    st = _status(launch["run_id"], env)
    assert st["state"] == "COMPLETED", st
    events = [json.loads(x) for x in open(os.path.join(launch["run_dir"], "events.jsonl"))]
    assert any(e["kind"] == "start" and e["world_size"] == 2 for e in events)


def test_two_rank_job_under_export_none_needs_nothing_from_the_submitting_shell(tiny_work, tmp_path):
    """cluster.export=NONE: the node starts the job with SLURM_* only; the script's own PATH and the recorded
    interpreter (`python -m torch.distributed.run`, no bare torchrun) must be all it needs."""
    env = dict(_env(tmp_path), HPC_FT_TEST_MARKER="from-the-submitting-shell")
    launch = submit(tiny_work, "trainer.devices=2", "model.micro_batch_size=2", "cluster.export=NONE",
                    "cluster.setup=['printenv HPC_FT_TEST_MARKER || echo submitter-marker=unset']", env=env)
    script = open(os.path.join(launch["run_dir"], "job.sbatch")).read()
    assert "#SBATCH --export=" in script and "torch.distributed.run" in script
    st = _status(launch["run_id"], env)
    assert st["state"] == "COMPLETED", st
    log = open(os.path.join(launch["run_dir"], "logs", "job.out")).read()
    assert "submitter-marker=unset" in log  # nothing leaked in from the submitting environment
    assert "command not found" not in log
    events = [json.loads(x) for x in open(os.path.join(launch["run_dir"], "events.jsonl"))]
    assert any(e["kind"] == "start" and e["world_size"] == 2 for e in events)


def test_cancel_gives_cancelled(tiny_work, tmp_path):
    env = _env(tmp_path)
    launch = submit(tiny_work, "trainer.max_steps=5000", "trainer.val_check_interval=1000", env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        st = _status(launch["run_id"], env, wait=False)
        if st["state"] == "RUNNING":
            break
        time.sleep(1)
    out = hpcft("cancel", launch["run_id"], env=env).stdout
    assert launch["jobs"]["train"] in out
    st = _status(launch["run_id"], env)
    assert st["state"] == "CANCELLED", st
    assert _sacct_state(launch["jobs"]["train"]) == "CANCELLED"


def test_failing_job_is_failed_with_the_log_tail(tiny_work, tmp_path):
    env = _env(tmp_path)
    # fp16 on a CPU: a rule error, refused at submit (exit 2), and --force overrides memory verdicts only
    refused = submit(tiny_work, "trainer.precision=16", env=env, expect_rc=2)
    assert "trainer.precision" in refused.stderr
    refused = submit(tiny_work, "trainer.precision=16", "--force", env=env, expect_rc=2)
    # weights gone after submit: the training step fails on the node
    proc = hpcft("train", "cluster=slurm_local", f"work_dir={tiny_work}", *SMALL,
                 f"model.hf_path={broken_model(tiny_work, tmp_path)}", "--json", env=env)
    launch = json.loads(proc.stdout)
    st = _status(launch["run_id"], env)
    assert st["state"] == "FAILED", st
    assert _sacct_state(launch["jobs"]["train"]) == "FAILED"
    assert "Error" in (st.get("log_tail") or "")
    text = hpcft("status", launch["run_id"], env=env, check=False).stdout
    assert "log tail:" in text
