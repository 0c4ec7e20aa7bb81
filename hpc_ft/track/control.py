"""Acting on runs: cancel (Slurm: scancel; local: the job's controller gets SIGTERM) and resume (resubmit
the run's job script in its own run directory, which continues from the newest checkpoint)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Dict, List

from hpc_ft.errors import UserError
from hpc_ft.track import slurm as sl
from hpc_ft.track.registry import FINAL_STATES


def _jobs(row: Dict) -> Dict[str, str]:
    from hpc_ft.submit.rundir import read_run_json

    try:
        jobs = read_run_json(Path(row["run_dir"])).get("jobs") or {}
    except (FileNotFoundError, ValueError):
        jobs = {}
    if not jobs:
        jobs = {f"job{i}": j for i, j in enumerate(row.get("job_ids") or [])}
    return {k: str(v) for k, v in jobs.items()}


def cancel_run(row: Dict, registry=None) -> List[str]:
    jobs = _jobs(row)
    done: List[str] = []
    if row.get("executor") == "local":
        state_dir = Path(row["run_dir"]) / "state"
        for kind, pid in jobs.items():
            if sl.local_state(Path(row["run_dir"]), pid)["State"] in ("RUNNING", "PENDING"):
                state_dir.mkdir(exist_ok=True)
                (state_dir / "cancelled").touch()
                try:
                    os.kill(int(pid), signal.SIGTERM)
                    done.append(f"{kind} (pid {pid})")
                except (ProcessLookupError, ValueError):
                    pass
    else:
        states = sl.job_states(jobs.values())
        live = {k: j for k, j in jobs.items() if states.get(j, {}).get("State", "UNKNOWN") not in FINAL_STATES}
        if live:
            proc = subprocess.run(["scancel", *live.values()], capture_output=True, text=True)
            if proc.returncode != 0:
                raise UserError(f"scancel failed: {proc.stderr.strip() or proc.stdout.strip()}. Is Slurm reachable?")
            done = [f"{k} {j}" for k, j in live.items()]
    if registry is not None and done and not row.get("unregistered"):
        registry.update_run(row["run_id"], state="CANCELLED")
    return done


_AFTEROK = re.compile(r"--dependency=afterok:[^\s]+")
LIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING", "COMPLETING", "SUSPENDED",
               "RESIZING", "SIGNALING", "STAGE_OUT")


def resume_run(row: Dict, registry=None, force: bool = False) -> Dict[str, str]:
    """Submit the run's own job.sbatch again, in the same run directory: the backend resumes from the
    newest checkpoint there (hf: `--resume auto`; NeMo: exp_manager's resume_if_exists). An eval job that
    never ran is submitted again too, with afterok on the new training job. The new job ids replace the
    old ones in run.json (the old ones move to `previous_jobs`) and in the registry.

    Refused while a job of the run is still queued or running, and (without `force`) when training
    already completed."""
    from hpc_ft.submit import executors
    from hpc_ft.submit.rundir import read_run_json, write_run_json, write_text
    from hpc_ft.track.status import run_status

    run_dir = Path(row["run_dir"])
    script = run_dir / "job.sbatch"
    if not script.is_file():
        raise UserError(f"run {row['run_id']}: {script} is missing, there is nothing to resubmit.")
    try:
        rec = read_run_json(run_dir)
    except (FileNotFoundError, ValueError):
        raise UserError(f"run {row['run_id']}: {run_dir}/run.json is missing or unreadable.") from None
    st = run_status(row)
    live = [f"{k} {v['job_id']} {v['state']}" for k, v in (st.get("jobs") or {}).items() if v.get("state") in LIVE_STATES]
    if live:
        raise UserError(f"run {row['run_id']} is still in the queue ({', '.join(live)}). "
                        f"Wait for it (`hpc-ft status {row['run_id']} --wait`) or cancel it first.")
    if st.get("end_cause") in ("COMPLETED", "EARLY_STOPPED") and not force:
        raise UserError(f"run {row['run_id']}: training already finished ({st['end_cause']}); nothing to resume. "
                        "Use --force to submit it again anyway.")
    old = {k: str(v) for k, v in (rec.get("jobs") or {}).items()}
    eval_state = ((st.get("jobs") or {}).get("eval") or {}).get("state")
    executor = rec.get("executor") or row.get("executor") or "slurm"
    folder = run_dir / "logs" / "submitit"
    new: Dict[str, str] = {}
    if executor == "slurm":
        executors.test_only(script)
        new["train"] = executors.submit_slurm(script.read_text(encoding="utf-8"), folder).job_id
        eval_script = run_dir / "eval.sbatch"
        if "eval" in old and eval_state != "COMPLETED" and eval_script.is_file():
            text = _AFTEROK.sub(f"--dependency=afterok:{new['train']}", eval_script.read_text(encoding="utf-8"))
            write_text(eval_script, text, 0o755)
            new["eval"] = executors.submit_slurm(text, folder).job_id
    else:
        from omegaconf import OmegaConf

        from hpc_ft.submit.launch import timeout_minutes

        cfg = OmegaConf.load(run_dir / "config.yaml")
        for marker in ("cancelled", "exit_code"):
            (run_dir / "state" / marker).unlink(missing_ok=True)
        sub, _job = executors.submit_local(script, folder, timeout_minutes(cfg.cluster.time),
                                           int(cfg.cluster.signal_before_timeout_s))
        new["train"] = sub.job_id
    rec["previous_jobs"] = list(rec.get("previous_jobs") or []) + ([old] if old else [])
    rec["jobs"] = new
    rec["job_ids"] = list(new.values())
    rec["resumes"] = int(rec.get("resumes") or 0) + 1
    write_run_json(run_dir, rec)
    if registry is not None and not row.get("unregistered"):
        registry.update_run(row["run_id"], state="PENDING", job_ids=rec["job_ids"])
    return new
