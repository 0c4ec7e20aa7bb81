"""Sweeps on the real local Slurm: one job array, OOM-aware cancellation by the dispatcher, real hf throughput."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from hpc_ft.commands.common import registry
from hpc_ft.sweep.launch import launch_sweep
from hpc_ft.sweep.status import resolve_sweep, sweep_status
from hpc_ft.executors import slurm as sl

from .conftest import wait_until

pytestmark = pytest.mark.slurm
ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING")


def _final(reg, sweep_id):
    st = sweep_status(resolve_sweep(reg, sweep_id), reg)
    return st if not any(r["state"] in ACTIVE for r in st["points"]) else None


def test_an_oom_cancels_the_pending_larger_mbs_of_its_layout_on_slurm(local_slurm, prepared, oom_step, monkeypatch):
    oom_step(mbs=2, seq=128)
    reg = registry()
    launch = launch_sweep([f"work_dir={prepared}", "cluster=slurm_local", "sweep.parallelism=1",
                           "data.seq_len=128,256", "model.micro_batch_size=1,2,4"], registry=reg)
    array = launch.array_job_id
    try:
        assert launch.executor == "slurm" and array
        assert [r["job_ids"] for r in reg.list(sweep_id=launch.sweep_id)] == [[f"{array}_{t}"] for t in range(6)]
        st = wait_until(lambda: _final(reg, launch.sweep_id), timeout=180)
    finally:
        subprocess.run(["scancel", str(array)], capture_output=True)
    by = {(r["swept"]["data.seq_len"], r["mbs"]): r for r in st["points"]}
    oom, cancelled = by[("128", 2)], by[("128", 4)]
    assert oom["state"] == "FAILED" and oom["end_cause"] == "GPU_OOM"
    assert cancelled["state"] == "CANCELLED_OOM"
    assert cancelled["cause"] == ("cancelled: point 1 ran out of GPU memory with the same TP and a smaller MBS "
                                  "(TP=1, MBS=2; this point: MBS=4)")
    assert [by[k]["state"] for k in (("128", 1), ("256", 1), ("256", 2), ("256", 4))] == ["COMPLETED"] * 4
    # the dispatcher cancelled the pending task with scancel: it never started, and Slurm never ran it
    log = (launch.sweep_dir / str(oom["task"]) / "logs" / "job.out").read_text()
    assert f"hpc-ft: scancel {array}_{cancelled['task']}" in log
    assert not (launch.sweep_dir / str(cancelled["task"]) / "state" / "started").exists()
    ran = sl.sacct([str(array)])
    assert f"{array}_{cancelled['task']}" not in ran and ran[f"{array}_{oom['task']}"]["State"] == "FAILED"

    # status asks the scheduler once for the whole array
    calls = []
    real_run = sl.run_command

    def counting(argv, *a, **k):
        calls.append(argv[0])
        return real_run(argv, *a, **k)

    monkeypatch.setattr(sl, "run_command", counting)
    sweep_status(resolve_sweep(reg, launch.sweep_id), reg)
    assert calls.count("sacct") == 1


@pytest.fixture(scope="session")
def hf_work(tmp_path_factory):
    """A work dir with small synthetic data and a quickly built tiny model (built once, before any sweep)."""
    from hpc_ft.data.jcommonsenseqa import make_synthetic

    work = tmp_path_factory.mktemp("hf-sweep")
    data = work / "data" / "jcommonsenseqa-v1.1"
    make_synthetic(data, n_train=240, n_valid=40, n_test=20, seed=0)
    subprocess.run([sys.executable, "-m", "hpc_ft.backends.hf_runtime.tiny_model", "--data-dir", str(data),
                    "--output", str(work / "models" / "tiny_llama"), "--if-missing", "--warmup-steps", "1",
                    "--echo-steps", "1"], check=True, capture_output=True, timeout=600)
    return work


@pytest.mark.hf
def test_a_real_hf_sweep_reports_throughput_per_point(local_slurm, hf_work, cli, tmp_path):
    pytest.importorskip("transformers")
    started = time.monotonic()
    proc = cli("train", "-m", f"work_dir={hf_work}", "cluster=slurm_local", "model.micro_batch_size=1,2,4",
               "model.optim.lr=1e-3,1e-2", "sweep.steps=10", "trainer.val_check_interval=10", "backend.threads=1",
               "sweep.parallelism=2", "--json")
    submit_s = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    sweep_id, array = out["sweep_id"], out["array_job_id"]
    assert out["tasks"] == 6 and out["pruned"] == 0 and submit_s < 60  # returns at once: nothing waits on training

    def done():
        p = cli("sweep", "status", sweep_id, "--json")
        assert p.returncode == 0, p.stderr
        st = json.loads(p.stdout)
        return st if not any(r["state"] in ACTIVE for r in st["points"]) else None

    try:
        st = wait_until(done, timeout=420, interval=5)
    finally:
        subprocess.run(["scancel", str(array)], capture_output=True)
    assert st["counts"] == {"COMPLETED": 6}, [(r["index"], r["state"], r["cause"]) for r in st["points"]]
    for r in st["points"]:
        assert r["step"] == 10 and r["max_steps"] == 10
        assert r["tokens_per_s"] > 0 and r["step_time_s"] > 0 and r["peak_mem_mb"] > 0
        assert r["job_id"] == f"{array}_{r['task']}"
    fastest = max(st["points"], key=lambda r: (r["tokens_per_s"], -r["step_time_s"]))

    proc = cli("sweep", "best", sweep_id[:15])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"best point {fastest['index']} (task {fastest['task']}")
    assert "  overrides: " + " ".join(fastest["overrides"]) in proc.stdout

    png = tmp_path / "sweep.png"
    proc = cli("plot", sweep_id, "-o", png)
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_pre_timeout_signal_reaches_the_point_which_requeues_its_task(local_slurm, prepared, monkeypatch):
    import hpc_ft.backends.hf as hf
    from hpc_ft.render import Step

    first_attempt_waits = ('echo "restart ${SLURM_RESTART_COUNT:-0}"; '
                           'if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then sleep 120; fi')
    monkeypatch.setattr(hf, "train_steps", lambda spec, run_dir: [Step("train", ["bash", "-c", first_attempt_waits])])
    reg = registry()
    launch = launch_sweep([f"work_dir={prepared}", "cluster=slurm_local", "model.micro_batch_size=1"], registry=reg)
    array, events = launch.array_job_id, launch.sweep_dir / "0" / "state" / "events.log"
    try:
        wait_until(lambda: events.is_file() and "step train begin" in events.read_text(), timeout=60, interval=1)
        # what Slurm does at --signal=B:USR1@N: the signal goes to the batch shell, i.e. the dispatcher
        subprocess.run(["scancel", "--signal=USR1", "--batch", f"{array}_0"], check=True)
        st = wait_until(lambda: _final(reg, launch.sweep_id), timeout=120)
    finally:
        subprocess.run(["scancel", str(array)], capture_output=True)
    assert st["points"][0]["state"] == "COMPLETED"
    text = events.read_text()
    assert "signal USR1" in text and "requeue 1/3 after SIGUSR1" in text
    log = (launch.sweep_dir / "0" / "logs" / "job.out").read_text()
    assert "restart 0" in log and "restart 1" in log
