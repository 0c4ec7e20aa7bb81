"""submitit executors that submit OUR rendered script (not one of submitit's making).

Slurm: `sbatch job.sbatch` through submitit's SlurmExecutor, so that job ids, arrays and state via
sacct stay submitit's. Local: submitit's LocalExecutor runs `bash job.sbatch`, the same job body.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from hpc_ft.errors import UserError

TRANSIENT = re.compile(
    r"Socket timed out|Unable to contact slurm controller|Connection refused|"
    r"Transient|try again|Resource temporarily unavailable|Zero Bytes were transmitted",
    re.I,
)
SUBMIT_RETRIES = 3


@dataclass
class Submitted:
    job_id: str
    task_ids: List[str]      # array: "<id>_<i>"; single job: [job_id]
    executor: str            # slurm | local


def _slurm_executor_class():
    from submitit.slurm.slurm import SlurmExecutor

    class ScriptSlurmExecutor(SlurmExecutor):
        """A SlurmExecutor whose submission file is the script we rendered."""

        def __init__(self, folder: Path, script_text: str) -> None:
            super().__init__(folder=folder)
            self._script_text = script_text

        def _make_submission_file_text(self, command: str, uid: str) -> str:
            return self._script_text

    return ScriptSlurmExecutor


def require_slurm() -> None:
    if shutil.which("sbatch") is None:
        raise UserError(
            "cluster.executor=slurm: sbatch is not on PATH, Slurm is not reachable from here. "
            "Submit from a login node, or use cluster=local."
        )


def slurm_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    err = [ln for ln in lines if "error" in ln.lower()]
    return (err or lines or ["(no message)"])[-1]


def test_only(script_path: Path) -> None:
    """`sbatch --test-only`: Slurm checks partition, account, GPUs and limits without queueing."""
    require_slurm()
    for attempt in range(SUBMIT_RETRIES):
        proc = subprocess.run(["sbatch", "--test-only", str(script_path)], capture_output=True, text=True)
        out = proc.stdout + proc.stderr
        if proc.returncode == 0 or "to start at" in out:
            return
        if TRANSIENT.search(out) and attempt + 1 < SUBMIT_RETRIES:
            time.sleep(1.5 * (attempt + 1))
            continue
        raise UserError(
            f"sbatch --test-only refused the job: {slurm_error(out)}. "
            "Check cluster.partition, cluster.account, cluster.time and the GPU request (cluster.gpu.*)."
        )


def submit_slurm(script_text: str, folder: Path, array_size: Optional[int] = None) -> Submitted:
    require_slurm()
    from submitit.core.utils import FailedJobError

    executor = _slurm_executor_class()(folder, script_text)
    last = ""
    for attempt in range(SUBMIT_RETRIES):
        try:
            job = executor._submit_command("hpc-ft")
            break
        except FailedJobError as exc:
            last = str(exc)
            if TRANSIENT.search(last) and attempt + 1 < SUBMIT_RETRIES:
                time.sleep(1.5 * (attempt + 1))
                continue
            raise UserError(f"sbatch failed: {slurm_error(last)}. Is slurmctld up? (`sinfo`, `scontrol ping`)") from None
    job_id = str(job.job_id)
    tasks = [f"{job_id}_{i}" for i in range(array_size)] if array_size else [job_id]
    return Submitted(job_id=job_id, task_ids=tasks, executor="slurm")


def submit_local(script_path: Path, folder: Path, timeout_min: float, signal_delay_s: int):
    """Start `bash job.sbatch` under submitit's local controller. Returns (Submitted, submitit job)."""
    from submitit.local.local import LocalExecutor

    executor = LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=timeout_min, signal_delay_s=signal_delay_s, stderr_to_stdout=True)
    job = executor._submit_command("bash " + shlex.quote(str(script_path)))
    return Submitted(job_id=str(job.job_id), task_ids=[str(job.job_id)], executor="local"), job
