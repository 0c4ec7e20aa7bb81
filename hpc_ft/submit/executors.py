"""submitit executors that submit OUR rendered script (not one of submitit's making).

Slurm: `sbatch job.sbatch` through submitit's SlurmExecutor, so that job ids, arrays and state via
sacct stay submitit's. Local: submitit's LocalExecutor runs `bash job.sbatch`, the same job body.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
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


_SUBMITIT_TAGS = ("%j", "%t", "%A", "%a")


def submitit_folder(folder: Path) -> Path:
    """The folder to hand to submitit for `folder`.

    submitit replaces %j/%t/%A/%a anywhere in its folder's path with job and task ids, and a run
    directory may hold them (work_dir and exp_manager.name are the user's). Such a folder is given
    to submitit through a tag-free symlink, so that its files still land in `folder`.
    """
    path = Path(folder).absolute()
    path.mkdir(parents=True, exist_ok=True)  # submitit's _submit_command writes into it without creating it
    if not any(tag in str(path) for tag in _SUBMITIT_TAGS):
        return path
    base = Path(tempfile.gettempdir()) / f"hpc-ft-submitit-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    link = base / hashlib.sha256(os.fsencode(path)).hexdigest()[:24]
    try:
        link.symlink_to(path, target_is_directory=True)
    except FileExistsError:
        pass
    return link


def require_slurm() -> None:
    if shutil.which("sbatch") is None:
        raise UserError(
            "cluster.executor=slurm: sbatch is not on PATH, Slurm is not reachable from here. "
            "Submit from a login node, or use cluster=local."
        )


_SBATCH_ERROR = re.compile(r"error|failure|invalid|unrecognized|denied|not available", re.I)


def slurm_error(stderr: str) -> str:
    """The line of sbatch's output that says what is wrong."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    err = [ln for ln in lines if _SBATCH_ERROR.search(ln)]
    return (err or lines or ["(no message)"])[0]


# sbatch's refusal -> the key to change (the first pattern that matches wins).
_SBATCH_HINTS = (
    (r"unrecognized option '--([\w-]+)", "cluster.sbatch_extra.{0}: not an option of this sbatch; remove or rename it"),
    (r"partition", "cluster.partition: use a partition that `sinfo -s` lists"),
    (r"time limit", "cluster.time: stay within the partition's limit (`sinfo -o '%P %l'`)"),
    (r"account", "cluster.account: use an account you belong to (`sacctmgr show assoc user=$USER`)"),
    (r"qos", "cluster.qos: use a QOS your account may use"),
    (r"node count", "trainer.num_nodes: ask for no more nodes than the partition has"),
    (r"processors", "cluster.cpus_per_task: ask for no more CPUs than a node has (`sinfo -o '%P %c'`)"),
    (r"node configuration|gres|gpu|memory",
     "trainer.devices, cluster.gpu.* or cluster.mem: ask for no more than a node has (`sinfo -o '%P %G %m'`)"),
)


def sbatch_hint(output: str) -> str:
    for pattern, hint in _SBATCH_HINTS:
        m = re.search(pattern, output, re.I)
        if m:
            return "Fix " + hint.format(*m.groups()) + "."
    return "Check cluster.partition, cluster.account, cluster.time and the GPU request (cluster.gpu.*)."


def test_only(script_path: Path) -> None:
    """`sbatch --test-only`: Slurm checks partition, account, GPUs and limits without queueing."""
    require_slurm()
    for attempt in range(SUBMIT_RETRIES):
        try:
            proc = subprocess.run(["sbatch", "--test-only", str(script_path)], capture_output=True, text=True)
        except OSError as exc:
            raise UserError(f"cluster.executor=slurm: cannot run sbatch ({exc.strerror}). "
                            "Submit from a login node, or use cluster=local.") from None
        out = proc.stdout + proc.stderr
        if proc.returncode == 0 or "to start at" in out:
            return
        if TRANSIENT.search(out):
            if attempt + 1 < SUBMIT_RETRIES:
                time.sleep(1.5 * (attempt + 1))
                continue
            raise UserError(
                f"Slurm is not reachable: {slurm_error(out)}. Is slurmctld up? (`sinfo`, `scontrol ping`) "
                "Try again later, or use cluster=local."
            )
        raise UserError(f"sbatch --test-only refused the job: {slurm_error(out)}. {sbatch_hint(out)}")


def submit_slurm(script_text: str, folder: Path, array_size: Optional[int] = None) -> Submitted:
    require_slurm()
    from submitit.core.utils import FailedJobError

    executor = _slurm_executor_class()(submitit_folder(folder), script_text)
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

    executor = LocalExecutor(folder=submitit_folder(folder))
    executor.update_parameters(timeout_min=timeout_min, signal_delay_s=signal_delay_s, stderr_to_stdout=True)
    job = executor._submit_command("bash " + shlex.quote(str(script_path)))
    return Submitted(job_id=str(job.job_id), task_ids=[str(job.job_id)], executor="local"), job
