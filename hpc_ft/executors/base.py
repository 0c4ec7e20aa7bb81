"""The executor seam: where a rendered job script runs (Slurm or this machine), behind one `Executor` class.

`get_executor(spec)` (or `executor_named(name)`) is the only place that turns `cluster.executor` into
behaviour; no module outside `hpc_ft.executors` compares executor names or runs a Slurm command.
An executor submits a script or an array (submitit does the submitting), reports job states in ONE
vocabulary (Slurm's: PENDING, RUNNING, COMPLETED, FAILED, ...), cancels and lists jobs.
"""

from __future__ import annotations

import abc
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

# ---- one state vocabulary (Slurm's words; the local executor answers in the same words) --------------

FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
                          "BOOT_FAIL", "DEADLINE", "EARLY_STOPPED"})
LIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING", "COMPLETING", "SUSPENDED",
               "RESIZING", "SIGNALING", "STAGE_OUT")

# ---- job naming: every job hpc-ft submits is `hpcft.<name>.<kind>.<run_id>` ----------------------------

JOB_NAME = re.compile(r"^hpcft\.(?P<name>.+)\.(?P<kind>[A-Za-z][\w-]*)\.(?P<run_id>\d{8}-\d{6}-[0-9a-f]+)$")


def job_name(name: str, kind: str, run_id: str) -> str:
    """The scheduler's name of a job: `hpcft.<name>.<kind>.<run_id>` (a sweep's array: kind `sweep`)."""
    return f"hpcft.{name}.{kind}.{run_id}"


def parse_job_name(name: str) -> Optional[Dict[str, str]]:
    m = JOB_NAME.match(name.strip())
    return m.groupdict() if m else None


@dataclass
class Submitted:
    job_id: str
    task_ids: List[str]      # array: "<id>_<i>"; single job: [job_id]
    executor: str            # slurm | local
    handle: Any = None       # the submitit job (local: to wait on it)


@dataclass
class SchedulerJob:
    """A job the scheduler knows (for `hpc-ft runs --reconcile`)."""

    job_id: str          # "123", or an array's "123" (task rows are folded into the array)
    name: str
    state: str
    script: str = ""     # the path sbatch was given (squeue %o, sacct SubmitLine)


class Executor(abc.ABC):
    """Where jobs run. Subclasses: `SlurmExecutor` (executors/slurm.py), `LocalExecutor` (executors/local.py)."""

    name = ""
    # Slurm queues jobs: an eval job waits on its train job (afterok); multi-node jobs get srun and a head node
    queues_jobs = False
    # the job script tees its own log (no scheduler writes --output)
    script_writes_log = False

    def multinode_launcher(self, nodes: int) -> List[str]:
        """The argv prefix that starts one task per node of a multi-node job ([] when there is none)."""
        return []

    def multinode_prologue(self, nodes: int) -> List[str]:
        """Shell lines a multi-node job runs first (the rendezvous host: the allocation's first node)."""
        return []

    def check(self, script_path: Path) -> None:
        """Ask the scheduler whether it would accept the script, without queueing it (no-op locally)."""

    @abc.abstractmethod
    def submit(self, script_path: Path, folder: Path, *, timeout_min: float, signal_delay_s: int,
               after: Optional[str] = None) -> Submitted:
        """Submit one job script (after: a job id it waits for with afterok)."""

    @abc.abstractmethod
    def submit_array(self, script_path: Path, folder: Path, size: int, *, timeout_min: float,
                     signal_delay_s: int) -> Submitted:
        """Submit one array job of `size` tasks."""

    @abc.abstractmethod
    def states(self, job_ids: List[str], run_dir: Optional[Path] = None) -> Dict[str, Dict[str, str]]:
        """job id -> {State, ExitCode, Reason, NodeList, Restarts, Previous} (what the executor knows)."""

    @abc.abstractmethod
    def array_states(self, array_job_id: str, tasks: Dict[int, Path]) -> Dict[int, Dict[str, str]]:
        """task -> row for the tasks of an array job (task -> its run directory)."""

    @abc.abstractmethod
    def cancel(self, jobs: Dict[str, str], run_dir: Path) -> List[str]:
        """Cancel the live jobs of a run (kind -> job id); returns "kind id" for each one cancelled."""

    def take_back(self, job_ids: List[str]) -> None:
        """Cancel jobs just submitted, quietly (a later submission of the same run was refused)."""

    def job_stdout(self, job_id: str) -> str:
        """Where the scheduler writes a job's output ('' when unknown)."""
        return ""

    def list_jobs(self, since_days: float) -> List[SchedulerJob]:
        """This user's hpc-ft jobs that the scheduler knows (nothing for the local executor)."""
        return []

    def node_states(self, nodelists: List[str]) -> Dict[str, str]:
        return {}

    def where(self, job_id: str, parallelism: int = 1) -> str:
        """How a submitted sweep runs, in words."""
        return f"job {job_id}"


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
