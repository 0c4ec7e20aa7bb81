"""`hpc-ft runs`: the registry's rows, refreshed cheaply (one sacct call for all live runs).

Each object of `hpc-ft runs --json` has exactly the keys of `hpc-ft status --json` (STATUS_FIELDS):
a live run is rebuilt by `run_status` (with Slurm's answers for all live runs fetched at once); a
finished one is its last recorded status, read from the registry without touching Slurm or its files.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from hpc_ft.executors import FINAL_STATES
from hpc_ft.track.status import STATUS_FIELDS, read_record, run_status, snapshot


#: the states a run can be listed in (`hpc-ft runs --state`): Slurm's end states, and the live ones
RUN_STATES = tuple(sorted(FINAL_STATES | {"PENDING", "RUNNING", "UNKNOWN"}))


def state_filter(state: str) -> str:
    """`--state` as the registry spells it; an unknown state is refused naming the known ones."""
    from hpc_ft.errors import UserError, did_you_mean

    wanted = state.strip().upper()
    if wanted not in RUN_STATES:
        raise UserError(f"--state {state}: no such run state.{did_you_mean(wanted, RUN_STATES)} "
                        f"States: {', '.join(RUN_STATES)}.")
    return wanted


def list_runs(registry, state: Optional[str] = None, name: Optional[str] = None,
              limit: Optional[int] = None) -> List[Dict[str, Any]]:
    if state:
        state = state_filter(state)
    rows = registry.list(name=name, limit=None if state else limit)
    live = [r for r in rows if r["state"] not in FINAL_STATES]
    out: List[Dict[str, Any]] = []
    if live:
        recs = {r["run_id"]: read_record(Path(r["run_dir"])) for r in live}
        snap = snapshot(live, recs)  # one sacct (+ squeue, + sinfo) call for every live run together
        fresh = {r["run_id"]: run_status(r, registry, snap=snap) for r in live}
    else:
        fresh = {}
    for r in rows:
        out.append(fresh.get(r["run_id"]) or recorded_status(r))
    if state:
        out = [r for r in out if r["state"] == state.upper()]
        if limit:
            out = out[:limit]
    return out


def recorded_status(r: Dict[str, Any]) -> Dict[str, Any]:
    """A finished run's status as last recorded (a summary written by an older version lacks some keys: None)."""
    summary = r.get("summary") or {}
    d = {k: summary.get(k) for k in STATUS_FIELDS}
    d.update({
        "run_id": r["run_id"],
        "job_id": d.get("job_id") or (r.get("job_ids") or [None])[0],
        "state": r["state"],
        "name": r["name"],
        "run_dir": r["run_dir"],
        "backend": r["backend"],
        "cluster": r["cluster"],
        "sweep_id": r.get("sweep_id"),
        "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created"])),
    })
    return d


def format_runs(rows: List[Dict[str, Any]]) -> str:
    if not rows:
        return "no runs (start one with `hpc-ft train` or `hpc-ft demo`)"
    width = max(26, *(len(r["run_id"]) for r in rows))
    head = f"{'RUN':{width}} {'NAME':22} {'STATE':11} {'STEP':>11} {'BEST VAL':>9} {'ACC':>6} {'BEST METRIC':>18}  CREATED"
    lines = [head]
    for r in rows:
        step = f"{r['step'] if r['step'] is not None else '-'}/{r['max_steps'] or '-'}"
        val = f"{r['best_val_loss']:.4f}" if r.get("best_val_loss") is not None else "-"
        acc = f"{r['accuracy']:.0%}" if r.get("accuracy") is not None else "-"
        metric = "-"  # a task's monitored metric (val_f1, val_log_loss, ...) at its best checkpoint
        if r.get("monitor") and r.get("best_metric") is not None:
            metric = f"{r['monitor']} {r['best_metric']:.4f}"
        lines.append(f"{r['run_id']:{width}} {(r['name'] or '')[:22]:22} {r['state']:11} {step:>11} {val:>9} "
                     f"{acc:>6} {metric:>18}  {r['created']}")
    return "\n".join(lines)
