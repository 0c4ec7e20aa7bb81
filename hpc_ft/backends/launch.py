"""How a step's command is launched on the node: container prefix, torchrun, multi-node srun."""

from __future__ import annotations

import sys
from typing import List

from omegaconf import DictConfig

from hpc_ft.render.shell import ShellVar, Token


def runtime_env_prefix(spec: DictConfig) -> str:
    """The prefix under which the container runtime passes environment variables into the container."""
    return {"singularity": "SINGULARITYENV_", "apptainer": "APPTAINERENV_"}.get(spec.cluster.container_runtime, "")


def in_container(spec: DictConfig, argv: List[Token], gpus: bool = True) -> List[Token]:
    """Prefix argv with `singularity exec --nv --bind … IMAGE` when the cluster uses a container."""
    runtime = spec.cluster.container_runtime
    if runtime == "none" or not spec.container.image:
        return list(argv)
    from hpc_ft.containers.runtime import exec_argv

    return list(exec_argv(runtime, spec.container.image, list(spec.cluster.binds), nv=gpus)) + list(argv)


def python_exe(spec: DictConfig) -> str:
    """The interpreter of a step: the container's `python`, or this very Python when there is none."""
    if spec.cluster.container_runtime != "none" and spec.container.image:
        return "python"
    return sys.executable


def launcher(spec: DictConfig) -> List[Token]:
    """torchrun itself: the container's `torchrun` (as the reference tutorial calls it), or, without a
    container, the run's own interpreter with `-m torch.distributed.run`, so that nothing depends on
    the submitting shell's PATH (a bare `torchrun` is found only where torch is installed outside the venv)."""
    py = python_exe(spec)
    return ["torchrun"] if py == "python" else [py, "-m", "torch.distributed.run"]


def distributed(spec: DictConfig, target: List[Token], module: bool = False) -> List[Token]:
    """torchrun for devices x nodes processes; one srun task per node when num_nodes > 1.

    `target` is a script path (or, with module=True, a `-m module`) followed by its arguments.
    A single-node job runs `--standalone` (a rendezvous on a free local port): torch before pytorch#175699
    (2026; NeMo 24.03's container has 2.3) binds port 29500 by default, so two jobs sharing a node (two
    2-GPU jobs on a 4-GPU node) would fail with "address already in use" in the second.
    """
    t = spec.trainer
    head: List[Token] = launcher(spec) + [f"--nproc_per_node={t.devices}"]
    if t.num_nodes == 1:
        head.append("--standalone")
    else:
        head += [
            f"--nnodes={t.num_nodes}",
            "--rdzv_backend=c10d",
            ShellVar("HPCFT_RDZV_ENDPOINT", prefix="--rdzv_endpoint="),
            ShellVar("SLURM_JOB_ID", prefix="--rdzv_id="),
        ]
    if module:
        head.append("-m")
    return head + list(target)


def multinode_prefix(spec: DictConfig) -> List[Token]:
    """srun, one task per node, for multi-node jobs (the rendezvous host is the allocation's first node)."""
    from hpc_ft.executors import get_executor

    return get_executor(spec).multinode_launcher(int(spec.trainer.num_nodes))


def python_module_step(spec: DictConfig, name: str, module: str, args: List[Token]):
    """A step running `python -m module args`: under torch.distributed.run when the job has several ranks, in the
    container, behind the executor's multi-node launcher."""
    from hpc_ft.render import Step

    t = spec.trainer
    if t.devices * t.num_nodes > 1:
        cmd = distributed(spec, [module] + args, module=True)
    else:
        cmd = [python_exe(spec), "-m", module] + args
    return Step(name, multinode_prefix(spec) + in_container(spec, cmd))


def prologue(spec: DictConfig) -> List[str]:
    """Shell lines a job needs before its steps: the rendezvous host and port of a multi-node job."""
    from hpc_ft.executors import get_executor

    return get_executor(spec).multinode_prologue(int(spec.trainer.num_nodes))
