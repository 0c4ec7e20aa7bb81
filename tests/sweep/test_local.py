"""A sweep on cluster=local: the kept points run one after another in one local job, OOM-aware."""

from __future__ import annotations

import json

from hpc_ft.commands.common import registry
from hpc_ft.sweep.launch import launch_sweep
from hpc_ft.sweep.status import resolve_sweep, sweep_status

from .conftest import wait_until


def _final(reg, sweep_id):
    st = sweep_status(resolve_sweep(reg, sweep_id), reg)
    return st if not any(r["state"] in ("PENDING", "RUNNING") for r in st["points"]) else None


def test_after_a_gpu_oom_the_larger_mbs_of_the_same_layout_are_skipped(prepared, oom_step):
    oom_step(mbs=2, seq=128)
    reg = registry()
    launch = launch_sweep([f"work_dir={prepared}", "cluster=local", "data.seq_len=128,256",
                           "model.micro_batch_size=1,2,4"], registry=reg)
    assert launch.executor == "local" and len({p.point.index for p in launch.kept}) == 6
    st = wait_until(lambda: _final(reg, launch.sweep_id), timeout=120)
    states = {(r["swept"]["data.seq_len"], r["mbs"]): r for r in st["points"]}
    assert states[("128", 1)]["state"] == "COMPLETED"
    oom = states[("128", 2)]
    assert oom["state"] == "FAILED" and oom["end_cause"] == "GPU_OOM" and "CUDA out of memory" in oom["cause"]
    skipped = states[("128", 4)]
    assert skipped["state"] == "CANCELLED_OOM"
    assert skipped["cause"].startswith("cancelled: point 1 ran out of GPU memory with the same TP and a smaller MBS")
    # another layout (longer sequences) is not touched by that OOM
    assert [states[("256", m)]["state"] for m in (1, 2, 4)] == ["COMPLETED"] * 3
    run_dir = launch.sweep_dir / str(skipped["task"])
    assert (run_dir / "state" / "cancelled_oom").read_text().strip() == str(oom["task"])
    assert not (run_dir / "state" / "started").exists()
    # the registry follows: `hpc-ft runs` shows the cancelled point as CANCELLED
    rows = {r["run_id"]: r for r in reg.list(sweep_id=launch.sweep_id)}
    assert rows[skipped["run_id"]]["state"] == "CANCELLED" and rows[oom["run_id"]]["state"] == "FAILED"


def test_sweep_status_json_and_best_through_the_cli(cli, prepared, oom_step):
    oom_step(mbs=-1, seq=-1)
    reg = registry()
    launch = launch_sweep([f"work_dir={prepared}", "cluster=local", "model.micro_batch_size=1,2",
                           "model.tensor_model_parallel_size=1,2"], registry=reg)
    wait_until(lambda: _final(reg, launch.sweep_id), timeout=120)
    proc = cli("sweep", "status", launch.sweep_id[:12], "--json")
    assert proc.returncode == 0, proc.stderr
    st = json.loads(proc.stdout)
    assert st["sweep_id"] == launch.sweep_id and st["total"] == 4 and st["tasks"] == 2
    assert st["counts"] == {"COMPLETED": 2, "PRUNED": 2}
    pruned = [r for r in st["points"] if r["state"] == "PRUNED"]
    assert [r["tp"] for r in pruned] == [2, 2] and all("tensor_model_parallel_size=2" in r["cause"] for r in pruned)
    assert set(st["points"][0]) >= {"tp", "pp", "mbs", "gbs", "state", "step_time_s", "tokens_per_s", "peak_mem_mb",
                                    "cause"}
    # the fake step reports no throughput: there is no fastest point to name
    proc = cli("sweep", "best")
    assert proc.returncode == 2 and "no point has finished successfully with a throughput yet" in proc.stderr
