"""The local executor: `bash job.sbatch` on this machine under submitit's local controller.

The job script writes its own state files (`<run_dir>/state/started`, `exit_code`, `cancelled`); the
states read from them are in Slurm's vocabulary, so nothing downstream tells the executors apart.
"""

from __future__ import annotations

import os
import shlex
import signal
from pathlib import Path
from typing import Dict, List, Optional

from hpc_ft.executors.base import Executor, Submitted, submitit_folder


def submit_local(script_path: Path, folder: Path, timeout_min: float, signal_delay_s: int) -> Submitted:
    """Start `bash job.sbatch` under submitit's local controller (the Submitted's handle: submitit's job)."""
    from submitit.local.local import LocalExecutor as SubmititLocal

    executor = SubmititLocal(folder=submitit_folder(folder))
    executor.update_parameters(timeout_min=timeout_min, signal_delay_s=signal_delay_s, stderr_to_stdout=True)
    # submitit has no public call that runs a ready-made shell command as the job; this one is its own
    job = executor._submit_command("bash " + shlex.quote(str(script_path)))
    return Submitted(job_id=str(job.job_id), task_ids=[str(job.job_id)], executor="local", handle=job)


def local_state(run_dir: Path, pid: Optional[str]) -> Dict[str, str]:
    """State of a run started by the local executor, from the files its job script writes."""
    state_dir = Path(run_dir) / "state"
    code_file = state_dir / "exit_code"
    if code_file.exists():
        code = code_file.read_text().strip()
        if code == "0":
            return {"State": "COMPLETED", "ExitCode": "0:0"}
        if (state_dir / "cancelled").exists():
            return {"State": "CANCELLED", "ExitCode": f"{code}:0"}
        if code == "143":
            return {"State": "TIMEOUT", "ExitCode": "143:0"}
        return {"State": "FAILED", "ExitCode": f"{code}:0"}
    if pid and alive(pid):
        return {"State": "RUNNING" if (state_dir / "started").exists() else "PENDING", "ExitCode": ""}
    if (state_dir / "cancelled").exists():
        return {"State": "CANCELLED", "ExitCode": ""}
    if (state_dir / "started").exists():
        return {"State": "FAILED", "ExitCode": "", "Reason": "the job process ended without an exit code"}
    return {"State": "UNKNOWN", "ExitCode": ""}


def alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    # a zombie child of this very process counts as ended
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class LocalExecutor(Executor):
    """Jobs run on this machine, one after another inside one job: no queue, no dependencies, no srun."""

    name = "local"
    queues_jobs = False
    script_writes_log = True

    def submit(self, script_path: Path, folder: Path, *, timeout_min: float, signal_delay_s: int,
               after: Optional[str] = None) -> Submitted:
        state = Path(script_path).parent / "state"
        for marker in ("cancelled", "exit_code"):  # a resubmitted run starts afresh
            (state / marker).unlink(missing_ok=True)
        return submit_local(Path(script_path), folder, timeout_min, signal_delay_s)

    def submit_array(self, script_path: Path, folder: Path, size: int, *, timeout_min: float,
                     signal_delay_s: int) -> Submitted:
        """The array's dispatcher runs the tasks one after another in one local job."""
        sub = submit_local(Path(script_path), folder, timeout_min * size, signal_delay_s)
        sub.task_ids = [sub.job_id] * size
        return sub

    def states(self, job_ids: List[str], run_dir: Optional[Path] = None) -> Dict[str, Dict[str, str]]:
        return {str(j): local_state(Path(run_dir) if run_dir else Path("."), str(j)) for j in job_ids}

    def array_states(self, array_job_id: str, tasks: Dict[int, Path]) -> Dict[int, Dict[str, str]]:
        return {t: local_state(Path(run_dir), array_job_id) for t, run_dir in tasks.items()}

    def cancel(self, jobs: Dict[str, str], run_dir: Path) -> List[str]:
        state_dir = Path(run_dir) / "state"
        done: List[str] = []
        for kind, pid in jobs.items():
            if local_state(Path(run_dir), pid)["State"] in ("RUNNING", "PENDING"):
                state_dir.mkdir(exist_ok=True)
                (state_dir / "cancelled").touch()
                try:
                    os.kill(int(pid), signal.SIGTERM)
                    done.append(f"{kind} (pid {pid})")
                except (ProcessLookupError, ValueError):
                    pass
        return done

    def where(self, job_id: str, parallelism: int = 1) -> str:
        return f"one local job (pid {job_id}), the points one after another"
