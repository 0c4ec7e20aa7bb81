"""Executors: where job scripts run (Slurm, this machine), behind one `Executor` seam (see base.py).

`get_executor(spec)` is the only place that turns `cluster.executor` into behaviour.
"""

from __future__ import annotations

from typing import Any, Dict

from hpc_ft.executors.base import (FINAL_STATES, LIVE_STATES, Executor, Submitted, job_name,  # noqa: F401
                                   parse_job_name)
from hpc_ft.executors.local import LocalExecutor
from hpc_ft.executors.slurm import SlurmExecutor

EXECUTORS = {"slurm": SlurmExecutor, "local": LocalExecutor}


def executor_named(name: str) -> Executor:
    """The executor called `name` (cluster.executor; checked at compose time, so an unknown one is Slurm's)."""
    return EXECUTORS.get(name, SlurmExecutor)()


def get_executor(spec) -> Executor:
    """The executor of a JobSpec (or of its `cluster` section)."""
    cluster = spec.cluster if hasattr(spec, "cluster") else spec
    return executor_named(str(cluster.executor))


def executor_of(row: Dict[str, Any]) -> Executor:
    """The executor of a registry row or run.json record (older records without one ran on Slurm)."""
    return executor_named(str(row.get("executor") or "slurm"))
