"""A node lost during a run, on the real local Slurm: its slurmd and the job's processes are killed (what a
node crash does). `hpc-ft status` says so honestly at every stage (node not responding, NODE_FAIL and
Slurm's requeue; never COMPLETED), and `hpc-ft resume` continues the run from its last checkpoint.

Needs the node's SlurmdTimeout <= 60 s (scripts/local-slurm.sh sets 30 s) so that Slurm declares the
node DOWN within a minute. The cluster is always left running and healthy (restarted in `finally`).
Killing the only node's slurmd would fail other jobs on it: the test skips when jobs other than its own
are in the queue.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hpc_ft.track.outcome import exit_code_for
from tests.slurm.conftest import REPO, hpcft

pytestmark = [pytest.mark.slurm, pytest.mark.hf]

SLURM_ROOT = Path(os.environ.get("HPC_FT_SLURM_ROOT", "/tmp/hpc-ft-slurm"))
MAX_STEPS = 300
CKPT_EVERY = 50


def _slurmd_timeout() -> int:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    m = re.search(r"^SlurmdTimeout\s*=\s*(\d+)", out, re.M)
    return int(m.group(1)) if m else 300


def _queue() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True).stdout
    return out.split()


def _job_pids(job_id: str) -> list[int]:
    """The job's slurmstepd and every process started in it (SLURM_JOB_ID in its environment)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"[{job_id}." in cmd and "slurmstepd" in cmd:
            pids.insert(0, int(proc.name))  # the step daemon first, so that it cannot report the end
        elif f"SLURM_JOB_ID={job_id}".encode() in env:
            pids.append(int(proc.name))
    return pids


def _lose_the_node(job_id: str) -> None:
    """What a node crash does to this node: slurmd and everything of the job die at once (SIGKILL)."""
    slurmd = int((SLURM_ROOT / "run" / "slurmd.pid").read_text().split()[0])
    targets = [slurmd] + _job_pids(job_id)
    for pid in targets:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _heal() -> None:
    """Start what is missing (slurmd) and bring the node back to service."""
    proc = subprocess.run([str(REPO / "scripts" / "local-slurm.sh"), "start"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for _ in range(60):
        if subprocess.run([str(REPO / "scripts" / "local-slurm.sh"), "status"], capture_output=True).returncode == 0:
            return
        subprocess.run(["scontrol", "update", "nodename=localhost", "state=resume"], capture_output=True)
        time.sleep(1)
    raise AssertionError("the local Slurm did not come back healthy")


def _status(run_id, env, wait=False):
    proc = hpcft("status", run_id, "--json", *(["--wait"] if wait else []), env=env, timeout=600, check=False)
    st = json.loads(proc.stdout)
    assert proc.returncode == exit_code_for(st["state"]), (proc.returncode, st["state"], proc.stderr)  # 0: COMPLETED
    return st


def _checkpoints(run_dir: Path) -> list[int]:
    # complete ones only: a kill while the Trainer is still writing one leaves a folder resume must skip
    return sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*")
                  if p.name.split("-")[1].isdigit() and (p / "trainer_state.json").is_file())


def test_a_lost_node_is_reported_honestly_and_the_run_resumes_from_its_checkpoint(tiny_work, tmp_path):
    timeout_s = _slurmd_timeout()
    if timeout_s > 60:
        pytest.skip(f"SlurmdTimeout is {timeout_s} s; run scripts/local-slurm.sh start (it sets 30 s)")
    env = dict(os.environ, HPC_FT_REGISTRY=str(tmp_path / "registry.sqlite"))
    launch = json.loads(hpcft(
        "train", "cluster=slurm_local", f"work_dir={tiny_work}", f"trainer.max_steps={MAX_STEPS}",
        f"trainer.val_check_interval={CKPT_EVERY}", "exp_manager.early_stopping_callback_params.patience=100",
        "backend.threads=1", "model.micro_batch_size=4", "model.global_batch_size=4", "--json", env=env).stdout)
    run_id, job_id, run_dir = launch["run_id"], launch["jobs"]["train"], Path(launch["run_dir"])
    deadline = time.time() + 240
    while not _checkpoints(run_dir):
        assert time.time() < deadline, f"no checkpoint yet: {_status(run_id, env)}"
        time.sleep(0.3)
    ours = [job_id]
    try:
        _lose_the_node_and_resume(run_id, job_id, run_dir, env, timeout_s, ours)
    finally:  # whatever happened: nothing of this test stays queued
        subprocess.run(["scancel", *ours], capture_output=True)


def _lose_the_node_and_resume(run_id, job_id, run_dir, env, timeout_s, ours):
    others = [j for j in _queue() if j != job_id]
    if others:
        pytest.skip(f"other jobs are on the shared node ({', '.join(others)}): killing its slurmd would fail them")

    seen = []
    try:
        _lose_the_node(job_id)
        lost_at = _checkpoints(run_dir)[-1]
        deadline = time.time() + timeout_s + 90
        while True:
            st = _status(run_id, env)
            seen.append((st["state"], st["end_cause"], st["jobs"]["train"]["reason"]))
            assert st["state"] != "COMPLETED", seen
            if st["state"] == "NODE_FAIL":  # the allocation's end, before Slurm's requeue shows
                assert st["end_cause"] == "NODE_FAIL", st
            if "NODE_FAIL" in st["jobs"]["train"]["previous"]:
                break
            assert time.time() < deadline, seen
            time.sleep(1)
        print("observed:", *seen, sep="\n  ")
        # first RUNNING on a node that does not answer, then that allocation NODE_FAIL and the job requeued
        assert any(state == "RUNNING" and "NOT RESPONDING" in reason for state, _, reason in seen), seen
        assert st["state"] == "PENDING" and "requeued after NODE_FAIL" in st["jobs"]["train"]["reason"], st
        text = hpcft("status", run_id, env=env, check=False).stdout
        assert "NODE_FAIL" in text
        # the user decides: take it out of the queue, then resume it (below) once the node is back
        hpcft("cancel", run_id, env=env)
    finally:
        _heal()

    st = _status(run_id, env)
    assert st["state"] == "CANCELLED" and st["jobs"]["train"]["previous"] == ["NODE_FAIL"], st
    out = json.loads(hpcft("resume", run_id, "--json", env=env).stdout)
    new_job = out["jobs"]["train"]
    ours.append(new_job)
    assert new_job != job_id
    rec = json.loads((run_dir / "run.json").read_text())
    assert rec["jobs"] == {"train": new_job} and rec["previous_jobs"] == [{"train": job_id}]
    refused = hpcft("resume", run_id, env=env, check=False)
    assert refused.returncode != 0 and "still in the queue" in refused.stderr

    st = _status(run_id, env, wait=True)
    assert st["state"] == "COMPLETED" and st["end_cause"] == "COMPLETED", st
    assert st["job_id"] == new_job and st["step"] == MAX_STEPS
    starts = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()
              if json.loads(line).get("kind") == "start"]
    assert starts[-1]["resumed_from"] and starts[-1]["resumed_from"].endswith(f"checkpoint-{lost_at}")
    again = hpcft("resume", run_id, env=env, check=False)
    assert again.returncode != 0 and "already finished" in again.stderr
