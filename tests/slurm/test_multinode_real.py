"""Multi-node jobs for real: the two-node partition of the local Slurm (`scripts/local-slurm.sh start --nodes 2`).

node1 and node2 each run their slurmd in their own network and UTS namespace, so a job spans two hosts
with their own names and addresses: torch's c10d rendezvous on the allocation's first node, gloo between
the nodes over the bridge. hpc-ft is called by the venv's absolute path under a minimal environment, as a
user's shell would. Each rank prints where it ran and what it ended with (hf_runtime/ranks.py).
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

from tests.slurm.conftest import REPO, SMALL, hpcft

pytestmark = [pytest.mark.slurm, pytest.mark.hf]

NODES = {"node1", "node2"}
START = re.compile(r"^\[rank (\d+)/(\d+)\] host (\S+), local rank (\d+), checkpoint writer: (yes|no)$", re.M)
END = re.compile(r"^\[rank (\d+)/(\d+)\] host (\S+) end at step (\d+): train loss (\S+) \(last logged\), "
                 r"trainable weights sha1 (\w+)$", re.M)


def run_hpcft(*args, registry: Path, check=True, timeout=600):
    """`hpc-ft ARGS` by the venv's path under `env -i` (conftest.hpcft), with this test's registry."""
    return hpcft(*args, env=dict(os.environ, HPC_FT_REGISTRY=str(registry)), check=check, timeout=timeout)


def train(work, registry, *overrides):
    return json.loads(run_hpcft("train", "cluster=slurm_local2", f"work_dir={work}", *SMALL, "backend.threads=1",
                                *overrides, "--json", registry=registry).stdout)


def status(run_id, registry, wait=False):
    """`hpc-ft status --json`; its exit code says the state (0 only for COMPLETED), so it is not checked here."""
    proc = run_hpcft("status", run_id, "--json", *(["--wait"] if wait else []), registry=registry, check=False)
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout)


def job_log(run_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((run_dir / "logs").glob("*")) if p.is_file())


def ranks(text: str):
    """(rank -> start line fields, rank -> end line fields) of the last attempt in a job log."""
    starts = {int(m[0]): {"world": int(m[1]), "host": m[2], "local": int(m[3]), "writer": m[4] == "yes"}
              for m in START.findall(text)}
    ends = {int(m[0]): {"host": m[2], "step": int(m[3]), "loss": m[4], "digest": m[5]} for m in END.findall(text)}
    return starts, ends


def test_two_nodes_one_rank_each_train_together_and_one_rank_writes_checkpoints(slurm2, tiny_work, tmp_path):
    reg = tmp_path / "registry.sqlite"
    launch = train(tiny_work, reg, "trainer.num_nodes=2", "trainer.devices=1", "model.global_batch_size=8")
    run_dir = Path(launch["run_dir"])
    script = (run_dir / "job.sbatch").read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --partition=multi" in script and "--nnodes=2" in script
    st = status(launch["run_id"], reg, wait=True)
    text = job_log(run_dir)
    assert st["state"] == "COMPLETED", (st, text[-3000:])
    starts, ends = ranks(text)
    assert sorted(starts) == [0, 1] and sorted(ends) == [0, 1], text[-3000:]
    assert {starts[0]["host"], starts[1]["host"]} == NODES  # two hosts, one rank on each
    # DDP: the ranks averaged their gradients, so they end with the same weights and log the same mean loss
    assert ends[0]["digest"] == ends[1]["digest"] and ends[0]["loss"] == ends[1]["loss"], ends
    assert ends[0]["step"] == ends[1]["step"] == 12
    # one checkpoint writer (global rank 0); each checkpoint holds both ranks' RNG states, written once
    assert [r for r, s in starts.items() if s["writer"]] == [0]
    ckpts = sorted((run_dir / "checkpoints").glob("checkpoint-*"))
    assert ckpts, list((run_dir / "checkpoints").iterdir())
    for ckpt in ckpts:
        assert sorted(p.name for p in ckpt.glob("rng_state*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
        assert len(list(ckpt.glob("adapter_model.*"))) == 1
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["world_size"] for e in events if e["kind"] == "start"] == [2]


def test_two_nodes_two_ranks_each_make_four_ranks(slurm2, tiny_work, tmp_path):
    reg = tmp_path / "registry.sqlite"
    launch = train(tiny_work, reg, "trainer.num_nodes=2", "trainer.devices=2", "trainer.max_steps=6",
                   "trainer.val_check_interval=6", "model.micro_batch_size=2", "model.global_batch_size=8")
    run_dir = Path(launch["run_dir"])
    assert "#SBATCH --gres=gpu:2" in (run_dir / "job.sbatch").read_text()
    st = status(launch["run_id"], reg, wait=True)
    text = job_log(run_dir)
    assert st["state"] == "COMPLETED", (st, text[-3000:])
    starts, ends = ranks(text)
    assert sorted(starts) == [0, 1, 2, 3] and all(s["world"] == 4 for s in starts.values()), text[-3000:]
    per_host = {h: sorted(s["local"] for s in starts.values() if s["host"] == h) for h in NODES}
    assert per_host == {"node1": [0, 1], "node2": [0, 1]}, starts
    assert len({e["digest"] for e in ends.values()}) == 1 and len({e["loss"] for e in ends.values()}) == 1, ends
    assert [r for r, s in starts.items() if s["writer"]] == [0]


def test_sweep_array_tasks_land_on_both_nodes(slurm2, tiny_work, tmp_path):
    reg = tmp_path / "registry.sqlite"
    # each task asks for all 8 CPUs of a node, so the two tasks cannot share one
    out = json.loads(run_hpcft("train", "-m", "cluster=slurm_local2", f"work_dir={tiny_work}", "sweep.steps=4",
                               "trainer.val_check_interval=4", "model.optim.lr=1e-3,1e-2", "cluster.cpus_per_task=8",
                               "backend.threads=1", "sweep.parallelism=2", "--json", registry=reg).stdout)
    array = out["array_job_id"]
    try:
        deadline = time.time() + 240
        while True:
            st = json.loads(run_hpcft("sweep", "status", out["sweep_id"], "--json", registry=reg, check=False).stdout)
            if all(p["state"] not in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING") for p in st["points"]):
                break
            assert time.time() < deadline, st
            time.sleep(3)
    finally:
        subprocess.run(["scancel", str(array)], capture_output=True)
    assert st["counts"] == {"COMPLETED": 2}, st
    rows = subprocess.run(["sacct", "-X", "-n", "-P", "-j", str(array), "-o", "JobID,NodeList"], capture_output=True,
                          text=True).stdout.split()
    where = dict(r.split("|") for r in rows if "_" in r)
    assert sorted(where) == [f"{array}_0", f"{array}_1"] and set(where.values()) == NODES, where


# ---------------------------------------------------------------------------------------------- node failure

MAX_STEPS = 60
CKPT_EVERY = 10


def _cluster_files() -> tuple[Path, int]:
    """(state root, slurmctld port) of the cluster the tests talk to."""
    conf = Path(os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf").resolve()
    port = re.search(r"^SlurmctldPort=(\d+)", conf.read_text(), re.M)
    return conf.parent.parent, int(port.group(1)) if port else 6817


def _pids_in_namespace(netns: Path) -> list[int]:
    """Every process in that network namespace, its slurmstepd daemons first (so none reports an end)."""
    ino = netns.stat().st_ino
    stepds, rest = [], []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "ns" / "net").stat().st_ino != ino:
                continue
            comm = (proc / "comm").read_text().strip()
        except OSError:
            continue
        (stepds if comm == "slurmstepd" else rest).append(int(proc.name))
    return stepds + rest


def _lose_node2() -> None:
    """What a crash of node2 does: its slurmd and everything of the job on it die at once (SIGKILL)."""
    _, port = _cluster_files()
    netns = Path(f"/run/netns/hpcft{port}-node2")
    pids = _pids_in_namespace(netns)
    assert pids, f"nothing runs in {netns}"
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _heal() -> None:
    proc = subprocess.run([str(REPO / "scripts" / "local-slurm.sh"), "start"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _checkpoints(run_dir: Path) -> list[int]:
    """Steps of the complete checkpoints (a folder the Trainer is still writing is not one)."""
    from hpc_ft.backends.hf_runtime.checkpoints import checkpoint_dirs

    return [step for step, _ in checkpoint_dirs(run_dir / "checkpoints")]


def test_a_lost_node_ends_node_fail_naming_it_and_resume_continues_on_both_nodes(slurm2, tiny_work, tmp_path):
    reg = tmp_path / "registry.sqlite"
    launch = train(tiny_work, reg, "trainer.num_nodes=2", "trainer.devices=1", "model.global_batch_size=8",
                   f"trainer.max_steps={MAX_STEPS}", f"trainer.val_check_interval={CKPT_EVERY}",
                   "exp_manager.early_stopping_callback_params.patience=100")
    run_id, job_id, run_dir = launch["run_id"], launch["jobs"]["train"], Path(launch["run_dir"])
    ours = [job_id]
    try:
        deadline = time.time() + 240
        while not _checkpoints(run_dir):
            assert time.time() < deadline, f"no checkpoint yet: {status(run_id, reg)}"
            time.sleep(0.3)
        _lose_node2()
        lost_at = _checkpoints(run_dir)[-1]
        seen = []
        try:
            deadline = time.time() + 150
            while True:
                st = status(run_id, reg)
                seen.append((st["state"], st["jobs"]["train"]["reason"]))
                assert st["state"] != "COMPLETED", seen
                if "NODE_FAIL" in st["jobs"]["train"]["previous"] or st["state"] == "NODE_FAIL":
                    break
                assert time.time() < deadline, seen
                time.sleep(1)
            # while Slurm still counts it RUNNING, status names the node that stopped answering
            assert any(s == "RUNNING" and "node node2" in r and "NOT RESPONDING" in r for s, r in seen), seen
            text = run_hpcft("status", run_id, registry=reg, check=False).stdout
            assert "NODE_FAIL" in text, text
            run_hpcft("cancel", run_id, registry=reg)
        finally:
            _heal()
        deadline = time.time() + 120  # sacct may lag behind the cancel
        while (st := status(run_id, reg))["state"] != "CANCELLED":
            assert time.time() < deadline, (st["state"], st["jobs"], seen)
            time.sleep(2)

        out = json.loads(run_hpcft("resume", run_id, "--json", registry=reg).stdout)
        ours.append(out["jobs"]["train"])
        st = status(run_id, reg, wait=True)
        text = job_log(run_dir)
        assert st["state"] == "COMPLETED" and st["step"] == MAX_STEPS, (st, text[-3000:])
        starts = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()
                  if json.loads(x).get("kind") == "start"]
        assert starts[-1]["resumed_from"].endswith(f"checkpoint-{lost_at}") and starts[-1]["world_size"] == 2
        # the resumed attempt again has one rank on each node and they end in agreement
        last_attempt = text[text.rindex("[resume] from"):]
        r_starts, r_ends = ranks(last_attempt)
        assert {s["host"] for s in r_starts.values()} == NODES and sorted(r_ends) == [0, 1], last_attempt[-3000:]
        assert r_ends[0]["digest"] == r_ends[1]["digest"] and r_ends[0]["step"] == MAX_STEPS
    finally:
        subprocess.run(["scancel", *ours], capture_output=True)


def test_cluster_check_reports_both_nodes_and_a_probe_job_that_rendezvouses(slurm2, tmp_path):
    reg = tmp_path / "registry.sqlite"
    out = json.loads(run_hpcft("cluster", "check", "cluster=slurm_local2", "--probe", "--json", registry=reg).stdout)
    checks = {c["name"]: c for c in out["checks"]}
    assert out["ok"] and checks["nodes"]["status"] == "ok", out
    assert re.search(r"2 usable nodes: node1 \(\w+\), node2 \(\w+\)", checks["nodes"]["detail"]), checks["nodes"]
    # the port is the job's own, as a multi-node training job of that allocation would take it
    met = re.search(r"probe job (\d+): 2 nodes met at node1:(\d+): node1 node2", checks["rendezvous"]["detail"])
    assert checks["rendezvous"]["status"] == "ok" and met, checks["rendezvous"]
    assert int(met[2]) == 29500 + int(met[1]) % 1000
    # more nodes than the partition has: said before any job waits for them
    proc = run_hpcft("cluster", "check", "cluster=slurm_local2", "cluster.nodes=3", "--no-probe", "--json", registry=reg,
                     check=False)
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert proc.returncode == 1 and checks["nodes"]["status"] == "fail"
    assert "cluster.nodes=3: partition multi has 2 usable node(s)" in checks["nodes"]["detail"]
