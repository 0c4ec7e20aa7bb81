"""Shared CLI plumbing: the registry, finding a run from what the user typed, printing a launch."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from hpc_ft.errors import UserError


def registry():
    import sqlite3

    from hpc_ft.track.registry import Registry, registry_path

    try:
        return Registry()
    except (OSError, sqlite3.Error) as exc:
        raise UserError(
            f"registry {registry_path()}: cannot open it ({exc}). Set HPC_FT_REGISTRY to a file in a folder you can write."
        ) from None


def resolve_run(ref: Optional[str]) -> Dict[str, Any]:
    """A registry row for RUN (id prefix, job id or run directory); without RUN, the latest run of the current
    work_dir (the newest run whose run directory lies under the current directory).

    A run directory that is not in the registry (copied from elsewhere, or a NeMo run written by hand)
    is read from its run.json. A run id or job id that the registry does not know is looked for in
    Slurm (`hpc_ft.submit.reconcile`): a run whose submitter died right after sbatch is found that way.
    """
    if ref and os.path.isdir(ref):
        p = Path(ref).resolve()
        reg = registry()
        rows = reg.find(str(p))
        if rows:
            return rows[0]
        return row_from_run_dir(p)
    reg = registry()
    if not ref:
        here = os.getcwd()
        row = reg.latest(under=here)
        if row is None:
            if reg.latest() is None:
                raise UserError("no runs registered yet. Start one: `hpc-ft train` (or `hpc-ft demo`).")
            raise UserError(f"no run of this work_dir ({here}) in the registry: the latest run is the latest one "
                            "under the current directory. Give the run (`hpc-ft runs` lists them), or cd to "
                            "its work_dir.")
        return row
    rows = reg.find(ref)
    if not rows:
        from hpc_ft.submit.reconcile import reconcile_quietly

        if reconcile_quietly(reg, ref):  # its submitting shell may have died right after sbatch
            rows = reg.find(ref)
    if not rows:
        raise UserError(f"run '{ref}': not found in the registry ({reg.path}). List runs with `hpc-ft runs`.")
    if len(rows) > 1 and not any(r["run_id"] == ref for r in rows):
        ids = ", ".join(r["run_id"] for r in rows[:5])
        raise UserError(f"run '{ref}' is ambiguous: {ids}. Give more of the run id.")
    return next((r for r in rows if r["run_id"] == ref), rows[0])


def row_from_run_dir(run_dir: Path) -> Dict[str, Any]:
    from hpc_ft.submit.rundir import read_run_json

    try:
        rec = read_run_json(run_dir)
    except FileNotFoundError:
        rec = {}
    except json.JSONDecodeError as exc:
        raise UserError(f"{run_dir}/run.json: not valid JSON ({exc.msg}, line {exc.lineno}).") from None
    backend = rec.get("backend")
    if backend is None:
        from hpc_ft.backends.base import detect_backend

        backend = detect_backend(run_dir)
    return {
        "run_id": rec.get("run_id", run_dir.name),
        "name": rec.get("name", run_dir.parent.name),
        "run_dir": str(run_dir),
        "backend": backend,
        "cluster": rec.get("cluster", "?"),
        "executor": rec.get("executor", "slurm"),
        "job_ids": rec.get("job_ids", []),
        "state": "UNKNOWN",
        "summary": {},
        "unregistered": True,
    }


def print_launch(launch, warnings: List[str], *, dry_run: bool, as_json: bool) -> None:
    for w in warnings + launch.notes:
        print(f"hpc-ft: warning: {w}", file=sys.stderr)
    for line in getattr(launch, "data_summary", []):
        print(f"hpc-ft: {line}", file=sys.stderr)
    if as_json:
        print(json.dumps({"run_id": launch.run_id, "run_dir": str(launch.run_dir), "jobs": launch.job_ids,
                          "dry_run": dry_run, "written": launch.written}, indent=2))
        return
    if dry_run:
        kinds = list(launch.scripts)
        for i, (kind, script) in enumerate(launch.scripts.items()):
            if i:
                sys.stdout.write(f"\n# ---- {kind}.sbatch (submitted with afterok on the {kinds[i - 1]} job) ----\n")
            sys.stdout.write(script.text)
        where = (f"rendered {launch.run_dir}" if launch.written
                 else "rendered, nothing written (--out DIR keeps the run folder)")
        print(f"hpc-ft: dry run: {where} (nothing submitted)", file=sys.stderr)
        return
    jobs = " ".join(f"{k}={v}" for k, v in launch.job_ids.items())
    print(f"run {launch.run_id} submitted: {jobs}")
    print(f"  run dir: {launch.run_dir}")
    print(f"  watch:   hpc-ft status {launch.run_id} [--wait]")
