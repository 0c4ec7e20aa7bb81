"""Finds runs that Slurm knows and the registry does not: the submitting shell died right after sbatch.

`launch_run` writes the run directory and its run.json before it submits, and records the job ids
(run.json `jobs`, the registry row) after sbatch returns. A submitter killed in between leaves a job in
Slurm that nothing points at. Every job hpc-ft submits is named `hpcft.<name>.<kind>.<run_id>` (a
sweep's array: `hpcft.<name>.sweep.<sweep_id>`), so the run id is read back from the job name, and the
run directory from where the job was submitted (sbatch's script lies in `<run_dir>/logs/submitit/`)
or, while Slurm still holds the job, from its StdOut (`<run_dir>/logs/job.out`). Reconciling writes
the job id into run.json and adds (or completes) the registry row.

Only orphans are taken: a job whose run.json already lists it was recorded by a submitter that lived
on, in the registry it used (several registries may share one Slurm account, e.g. one per project via
$HPC_FT_REGISTRY), and is left alone. A run.json that names its registry (`"registry": path`) is
taken only by that registry.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from hpc_ft.executors import executor_named, parse_job_name
from hpc_ft.executors.base import SchedulerJob
from hpc_ft.submit.record import RunRecord, register, write_record

DEFAULT_SINCE_DAYS = 7
SlurmJob = SchedulerJob  # the name this module's callers know


@dataclass
class Reconciled:
    run_id: str
    kind: str
    job_id: str
    state: str
    run_dir: Optional[str]
    action: str          # registered | job recorded | not found | elsewhere
    detail: str = ""

    def line(self) -> str:
        where = f" in {self.run_dir}" if self.run_dir else ""
        return f"{self.action}: run {self.run_id} ({self.kind} job {self.job_id}, {self.state}){where}" + (
            f": {self.detail}" if self.detail else "")


def slurm_jobs(since_days: float = DEFAULT_SINCE_DAYS) -> List[SchedulerJob]:
    """This user's hpc-ft jobs that Slurm knows (see `executors.slurm.list_jobs`)."""
    return executor_named("slurm").list_jobs(since_days)


def _candidates(job: SlurmJob) -> List[Path]:
    """Folders that may be the run (or sweep) directory of `job`, best first."""
    found: List[Path] = []
    if job.script:
        script = Path(job.script)
        try:
            real = script.resolve()  # a tag-free symlink made by executors.submitit_folder
        except OSError:
            real = script
        for s in (script, real):
            if s.parent.name == "submitit" and s.parent.parent.name == "logs":
                found.append(s.parent.parent.parent)
        try:
            text = real.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        m = re.search(r"^export HPC_FT_RUN_DIR=(.+)$", text, re.M)
        if m:
            try:
                found.append(Path(shlex.split(m.group(1))[0]))
            except (ValueError, IndexError):
                pass
    stdout = executor_named("slurm").job_stdout(job.job_id)
    if stdout:
        p = Path(stdout)
        if p.parent.name == "logs":
            found.append(p.parent.parent)
    out: List[Path] = []
    for p in found:
        if p not in out:
            out.append(p)
    return out


def _created(rec: Dict) -> Optional[float]:
    try:
        return datetime.strptime(str(rec.get("created")), "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


def _belongs_elsewhere(registry, rec: Dict, job_id: str) -> bool:
    """The run was recorded by a submitter that lived past sbatch, in another registry than this one."""
    owner = rec.get("registry")
    if owner:
        return os.path.abspath(str(owner)) != os.path.abspath(str(registry.path))
    return job_id in [str(j) for j in (rec.get("jobs") or {}).values()] and registry.get(rec["run_id"]) is None


def _record_run(registry, run_dir: Path, rec: Dict, kind: str, job_id: str, *, sweep_id: Optional[str] = None,
                point: Optional[int] = None) -> str:
    """Write `kind: job_id` into run.json and the registry; returns what was done."""
    if _belongs_elsewhere(registry, rec, job_id):
        return "elsewhere"
    record = RunRecord.from_json(rec)
    record.run_dir = str(run_dir)  # where the run is now
    changed_json = record.jobs.get(kind) != job_id
    if changed_json:
        record.set_jobs({**record.jobs, kind: job_id})
        write_record(record)
    row = registry.get(record.run_id)
    if row is None:
        record.name = record.name or "?"
        record.backend, record.cluster = record.backend or "hf", record.cluster or "?"
        record.sweep_id, record.point = sweep_id, point
        try:
            register(registry, [record], new=True, created=_created(rec))
            return "registered"
        except sqlite3.IntegrityError:  # another reconcile (or the submitter itself) got there first
            row = registry.get(record.run_id)
    if row is not None and list(row["job_ids"]) != record.job_ids:
        registry.update_run(record.run_id, job_ids=record.job_ids)
        return "job recorded"
    return "job recorded" if changed_json else "known"


def _read_json(path: Path) -> Optional[Dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _reconcile_run(registry, job: SlurmJob, ids: Dict[str, str]) -> Reconciled:
    run_id, kind = ids["run_id"], ids["kind"]
    tried = _candidates(job)
    for run_dir in tried:
        rec = _read_json(run_dir / "run.json")
        if rec is not None and rec.get("run_id") == run_id:
            action = _record_run(registry, run_dir, rec, kind, job.job_id)
            return Reconciled(run_id, kind, job.job_id, job.state, str(run_dir), action)
    return Reconciled(run_id, kind, job.job_id, job.state, None, "not found",
                      "no run.json with this run id at " + (", ".join(map(str, tried)) or "any known place"))


def _reconcile_sweep(registry, job: SlurmJob, ids: Dict[str, str]) -> List[Reconciled]:
    from hpc_ft.submit.rundir import SWEEP_JSON

    sweep_id = ids["run_id"]
    for sweep_dir in _candidates(job):
        meta = _read_json(sweep_dir / SWEEP_JSON)
        if meta is None or meta.get("sweep_id") != sweep_id:
            continue
        done: List[Reconciled] = []
        if meta.get("array_job_id") != job.job_id:
            meta["array_job_id"] = job.job_id
            from hpc_ft.submit.rundir import write_text

            write_text(sweep_dir / SWEEP_JSON, json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        if registry.get_sweep(sweep_id) is None:
            registry.add_sweep(sweep_id=sweep_id, name=meta.get("name") or ids["name"], sweep_dir=str(sweep_dir),
                               job_id=job.job_id, points=int(meta.get("points") or 0))
        for task_dir in sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
            rec = _read_json(task_dir / "run.json")
            if rec is None or rec.get("run_id") != f"{sweep_id}_{task_dir.name}":
                continue
            task_job = f"{job.job_id}_{task_dir.name}"
            action = _record_run(registry, task_dir, rec, "train", task_job, sweep_id=sweep_id, point=rec.get("point"))
            done.append(Reconciled(rec["run_id"], "sweep", task_job, job.state, str(task_dir), action))
        return done
    return [Reconciled(sweep_id, "sweep", job.job_id, job.state, None, "not found", "no sweep.json with this sweep id")]


def reconcile(registry, since_days: float = DEFAULT_SINCE_DAYS, only: Optional[str] = None,
              jobs: Optional[Iterable[SlurmJob]] = None) -> List[Reconciled]:
    """Bring every hpc-ft job Slurm knows (this user's, ended within `since_days` or still queued) into
    run.json and the registry. `only`: just the runs whose run id starts with it, or the job with this id.
    Returns one entry per job (or sweep task) that was not recorded yet; jobs already known are left out."""
    results: List[Reconciled] = []
    for job in (slurm_jobs(since_days) if jobs is None else jobs):
        ids = parse_job_name(job.name)
        if ids is None:
            continue
        if only and not (ids["run_id"].startswith(only) or job.job_id == only):
            continue
        if ids["kind"] == "sweep":
            sweep = registry.get_sweep(ids["run_id"])
            if sweep is not None and sweep.get("job_id") == job.job_id:
                continue
            results.extend(r for r in _reconcile_sweep(registry, job, ids) if r.action not in ("known", "elsewhere"))
            continue
        row = registry.get(ids["run_id"])
        if row is not None and job.job_id in [str(j) for j in row["job_ids"]]:
            continue
        r = _reconcile_run(registry, job, ids)
        if r.action not in ("known", "elsewhere"):
            results.append(r)
    return results


def reconcile_quietly(registry, ref: str) -> bool:
    """`hpc-ft status RUN` for a RUN the registry does not know: look for it in Slurm. True if found."""
    if not ref or os.sep in ref:
        return False
    return any(r.action in ("registered", "job recorded") for r in reconcile(registry, only=ref))
