"""Acting on runs: cancel (through the run's executor) and resume (resubmit the run's job script in its own
run directory, which continues from the newest checkpoint), both through the one submit pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from hpc_ft.errors import UserError
from hpc_ft.executors import LIVE_STATES, executor_of
from hpc_ft.submit.record import RunRecord


def cancel_run(row: Dict, registry=None) -> List[str]:
    from hpc_ft.track.status import read_record, run_jobs

    run_dir = Path(row["run_dir"])
    done = executor_of(row).cancel(run_jobs(row, read_record(run_dir)), run_dir)
    if registry is not None and done and not row.get("unregistered"):
        registry.update_run(row["run_id"], state="CANCELLED")
    return done


def resume_run(row: Dict, registry=None, force: bool = False) -> Dict[str, str]:
    """Submit the run's own job.sbatch again, in the same run directory: the backend resumes from the
    newest checkpoint there (hf: `--resume auto`; NeMo: exp_manager's resume_if_exists). An eval job that
    never ran is submitted again too, with afterok on the new training job. The new job ids replace the
    old ones in run.json (the old ones move to `previous_jobs`) and in the registry.

    Refused while a job of the run is still queued or running, and (without `force`) when training
    already completed."""
    from omegaconf import OmegaConf

    from hpc_ft.submit.launch import submission_for, submit_and_record
    from hpc_ft.track.status import run_status

    run_dir = Path(row["run_dir"])
    script = run_dir / "job.sbatch"
    if not script.is_file():
        raise UserError(f"run {row['run_id']}: {script} is missing, there is nothing to resubmit.")
    try:
        rec = RunRecord.read(run_dir)
    except (FileNotFoundError, ValueError, TypeError):
        raise UserError(f"run {row['run_id']}: {run_dir}/run.json is missing or unreadable.") from None
    st = run_status(row)
    live = [f"{k} {v['job_id']} {v['state']}" for k, v in (st.get("jobs") or {}).items() if v.get("state") in LIVE_STATES]
    if live:
        raise UserError(f"run {row['run_id']} is still in the queue ({', '.join(live)}). "
                        f"Wait for it (`hpc-ft status {row['run_id']} --wait`) or cancel it first.")
    if st.get("end_cause") in ("COMPLETED", "EARLY_STOPPED") and not force:
        raise UserError(f"run {row['run_id']}: training already finished ({st['end_cause']}); nothing to resume. "
                        "Use --force to submit it again anyway.")
    old = dict(rec.jobs)
    eval_state = ((st.get("jobs") or {}).get("eval") or {}).get("state")
    if not rec.executor:
        rec.executor = row.get("executor") or "slurm"
    cfg = run_dir / "config.yaml"
    spec = OmegaConf.load(cfg) if cfg.is_file() else OmegaConf.create(
        {"cluster": {"time": "0", "signal_before_timeout_s": 0}})
    spec.cluster.executor = rec.executor
    scripts = {"train": script}
    if executor_of(rec.to_json()).queues_jobs and "eval" in old and eval_state != "COMPLETED" \
            and (run_dir / "eval.sbatch").is_file():
        scripts["eval"] = run_dir / "eval.sbatch"
    rec.previous_jobs = list(rec.previous_jobs or []) + ([old] if old else [])
    rec.jobs, rec.job_ids = {}, []
    rec.resumes = int(rec.resumes or 0) + 1
    reg = registry if registry is not None and not row.get("unregistered") else None
    done = submit_and_record(submission_for(spec, scripts, [rec], run_dir / "logs" / "submitit", new_runs=False), reg)
    return {k: s.job_id for k, s in done.items()}
