"""cluster check for multi-node profiles: the partition's nodes, and a probe job whose nodes meet at the rendezvous host.

The probe is a job rendered from sbatch.j2 like a training job of `trainer.num_nodes=cluster.nodes`: the same
prologue picks the rendezvous host (the allocation's first node), the same srun starts one task per node,
and each task runs this module with the job's recorded interpreter. The first node listens on the
rendezvous port, the others connect to it by name and say who they are: what torch's c10d rendezvous
needs (the host name resolves on every node, the port is reachable across nodes), without torch.
Run as `python -m hpc_ft.commands.cluster_nodes --port N` inside such a job.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path
from typing import List, Tuple

USABLE = ("idle", "mixed", "allocated", "completing")
PROBE_MARK = "hpc-ft probe:"

CheckTuple = Tuple[str, str, str]  # (name, ok|fail|skip|warn, detail)


def partition_nodes(out: str) -> List[Tuple[str, str]]:
    """`sinfo -h -N -p P -o '%N %T'` -> [(node, state)], each node once."""
    seen = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 2:
            seen.setdefault(fields[0], fields[1])
    return list(seen.items())


def check_nodes(spec, part: str | None) -> List[CheckTuple]:
    """Enough usable nodes in the partition for cluster.nodes (named, with their states)."""
    from hpc_ft.executors.slurm import partition_node_states

    want = int(spec.cluster.nodes)
    if part is None:
        return [("nodes", "skip", "no usable partition to look at")]
    rc, out, err = partition_node_states(part)
    if rc != 0:
        return [("nodes", "fail", f"sinfo -N -p {part} failed: {(err or out).strip().splitlines()[-1:] or ['?']}")]
    nodes = partition_nodes(out)
    listing = ", ".join(f"{n} ({s})" for n, s in nodes) or "(none)"
    usable = [n for n, s in nodes if s in USABLE]
    if len(usable) < want:
        return [("nodes", "fail", f"cluster.nodes={want}: partition {part} has {len(usable)} usable node(s): {listing}; "
                                  "a multi-node job would pend. Ask the admins, or lower cluster.nodes/trainer.num_nodes")]
    return [("nodes", "ok", f"cluster.nodes={want}: partition {part} has {len(usable)} usable nodes: {listing}")]


def render_probe(spec, folder: Path) -> Path:
    """folder/probe.sbatch: a cluster.nodes-node job whose one step runs the probe on every node."""
    from omegaconf import OmegaConf

    from hpc_ft.backends.launch import multinode_prefix, prologue, python_exe
    from hpc_ft.render import Step, render_job_script
    from hpc_ft.render.render import sbatch_options
    from hpc_ft.render.shell import ShellVar

    spec = OmegaConf.create(OmegaConf.to_container(spec, resolve=True))
    n = int(spec.cluster.nodes)
    spec.trainer.num_nodes = n
    # the port a multi-node training job of this allocation would rendezvous on (the executor's prologue)
    argv = multinode_prefix(spec) + [python_exe(spec), "-m", "hpc_ft.commands.cluster_nodes",
                                     "--port", ShellVar("HPCFT_RDZV_PORT")]
    sbatch = sbatch_options(spec, job_name="hpcft.cluster-probe", output=str(folder / "probe.out"), nodes=n,
                            gpus_per_node=0, time="00:05:00", comment="hpc-ft:cluster-probe")
    script = render_job_script(spec, run_dir=str(folder), run_id="cluster-probe", steps=[Step("probe", argv)],
                               sbatch=sbatch, env={}, description=f"cluster check: {n}-node rendezvous probe",
                               prologue=prologue(spec))
    path = folder / "probe.sbatch"
    path.write_text(script.text, encoding="utf-8")
    return path


def check_probe(spec, timeout_s: int) -> List[CheckTuple]:
    """Submit the probe (sbatch --wait) and report whether every node met the first one."""
    import tempfile

    from hpc_ft.executors.slurm import submit_and_wait

    n = int(spec.cluster.nodes)
    with tempfile.TemporaryDirectory(prefix="hpc-ft-cluster-probe-", dir=os.path.expanduser("~")) as tmp:
        folder = Path(tmp)
        path = render_probe(spec, folder)
        rc, stdout, stderr = submit_and_wait(path, timeout_s)
        if rc == 124:
            return [("rendezvous", "fail", f"the {n}-node probe job did not end within {timeout_s} s "
                                           "(still pending? see squeue); raise --probe-timeout")]
        job = stdout.strip().split(";")[0] or "?"
        out = (folder / "probe.out").read_text(errors="replace") if (folder / "probe.out").exists() else ""
    lines = [ln[len(PROBE_MARK):].strip() for ln in out.splitlines() if ln.startswith(PROBE_MARK)]
    met = [ln for ln in lines if ln.startswith(f"{n} nodes met")]
    if rc == 0 and met:
        return [("rendezvous", "ok", f"probe job {job}: {met[0]}")]
    tail = " | ".join(ln.strip() for ln in (out or stderr).strip().splitlines()[-4:])
    return [("rendezvous", "fail", f"probe job {job} (exit {rc}): the nodes did not all meet at the "
                                   f"rendezvous host: {tail or '(no output)'}")]


# ----------------------------------------------------------------------------- the probe itself, on each node


def _serve(me: str, head: str, port: int, n: int, deadline: float) -> str:
    names = [me]
    with socket.create_server(("", port), reuse_port=False) as srv:
        srv.settimeout(max(1.0, deadline - time.time()))
        conns = []
        while len(conns) < n - 1:
            conn, _ = srv.accept()
            names.append(conn.recv(256).decode(errors="replace").strip())
            conns.append(conn)
        reply = " ".join(names)
        for conn in conns:
            conn.sendall(reply.encode())
            conn.close()
    return f"{n} nodes met at {head}:{port}: {reply}"


def _join(me: str, head: str, port: int, deadline: float) -> str:
    last = None
    while time.time() < deadline:
        try:
            with socket.create_connection((head, port), timeout=5) as conn:
                conn.sendall(me.encode())
                return f"{me} reached {head}:{port}; the nodes: {conn.recv(4096).decode(errors='replace')}"
        except OSError as exc:  # the first node may not listen yet
            last = exc
            time.sleep(0.5)
    raise SystemExit(f"{PROBE_MARK} {me} could not reach {head}:{port}: {last}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--timeout", type=float, default=120.0)
    a = p.parse_args(argv)
    head = os.environ.get("HPCFT_HEAD_NODE", "")
    n = int(os.environ.get("SLURM_NNODES", "1"))
    me = socket.gethostname()
    deadline = time.time() + a.timeout
    if os.environ.get("SLURM_NODEID", "0") == "0":
        line = _serve(me, head, a.port, n, deadline)
    else:
        line = _join(me, head, a.port, deadline)
    print(f"{PROBE_MARK} {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
