"""The run record: `RunRecord` (run.json) and its registry row, written in one place.

Every submission (a single run, the eval chain, a resubmission, every point of a sweep, a run adopted
by `hpc-ft runs --reconcile`) records itself through `write_record` and `register`.
"""

from __future__ import annotations

import dataclasses
import getpass
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hpc_ft.submit import rundir as rd


@dataclass
class RunRecord:
    """What run.json says about a run (unknown keys of an older or newer run.json are kept in `extra`)."""

    run_id: str
    name: str
    run_dir: str
    backend: str
    cluster: str
    executor: str
    config_hash: str = ""
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    hpc_ft_version: str = field(default_factory=rd.code_version)
    overrides: List[str] = field(default_factory=list)
    jobs: Dict[str, str] = field(default_factory=dict)
    job_ids: List[str] = field(default_factory=list)
    dry_run: bool = False
    kind: Optional[str] = None           # a job alone (eval, convert, export) in a new run directory
    eval: Optional[bool] = None
    container: Optional[Dict[str, Any]] = None
    data: Optional[Dict[str, Any]] = None
    submitted_by: Optional[Dict[str, str]] = None
    requeues: Optional[int] = None
    registry: Optional[str] = None      # which registry owns this run: `hpc-ft runs --reconcile` adopts only orphans
    sweep_id: Optional[str] = None
    sweep_dir: Optional[str] = None
    point: Optional[int] = None
    task: Optional[int] = None
    previous_jobs: Optional[List[Dict[str, str]]] = None
    resumes: Optional[int] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra" and v is not None}
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "RunRecord":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        for k in ("run_id", "name", "run_dir", "backend", "cluster", "executor"):
            known.setdefault(k, "" if k != "executor" else "slurm")
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    @classmethod
    def read(cls, run_dir: Path) -> "RunRecord":
        return cls.from_json(rd.read_run_json(run_dir))

    def set_jobs(self, jobs: Dict[str, str]) -> None:
        """kind -> job id, train first, then eval, then the rest."""
        self.jobs = {k: str(jobs[k]) for k in sorted(jobs, key=lambda k: (k != "train", k != "eval", k))}
        self.job_ids = list(self.jobs.values())


def submitter() -> Dict[str, str]:
    """Who submitted, where, with which interpreter (jobs start from this interpreter)."""
    return {"user": getpass.getuser(), "host": socket.gethostname(), "python": sys.executable}


def write_record(record: RunRecord, *, new: bool = False) -> None:
    """run.json of the record's run directory. `new`: a file made just now (a sweep writes many), written in place."""
    text = rd.json_text(record.to_json())
    path = Path(record.run_dir) / rd.RUN_JSON
    if new:
        rd.write_new(path, text)
    else:
        rd.write_text(path, text)


def register(registry, records: List[RunRecord], *, new: bool = True, state: str = "PENDING",
             created: Optional[float] = None) -> None:
    """The registry rows of these runs: added (`new`, in one transaction), or their job ids brought up to date."""
    if registry is None or not records:
        return
    fresh = records if new else [r for r in records if registry.get(r.run_id) is None]
    for r in records:
        if r not in fresh:
            registry.update_run(r.run_id, state=state, job_ids=r.job_ids)
    if fresh:
        registry.add_runs([{"run_id": r.run_id, "name": r.name, "config_hash": r.config_hash, "run_dir": r.run_dir,
                            "backend": r.backend, "cluster": r.cluster, "executor": r.executor,
                            "job_ids": r.job_ids, "sweep_id": r.sweep_id, "point": r.point, "state": state,
                            "created": created}
                           for r in fresh])
