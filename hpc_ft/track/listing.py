"""`hpc-ft runs`: the registry's rows, refreshed cheaply (one sacct call for all live runs)."""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

from hpc_ft.track.registry import FINAL_STATES
from hpc_ft.track.status import STATUS_KEYS, run_status


def list_runs(registry, state: Optional[str] = None, name: Optional[str] = None,
              limit: Optional[int] = None) -> List[Dict[str, Any]]:
    rows = registry.list(name=name, limit=None if state else limit)
    out = []
    for r in rows:
        if r["state"] not in FINAL_STATES:
            st = run_status(r, registry)  # live runs only: final ones keep their recorded summary
            r["state"] = st["state"]
            r["summary"] = {k: st.get(k) for k in STATUS_KEYS}
        out.append(_public(r))
    if state:
        out = [r for r in out if r["state"] == state.upper()]
        if limit:
            out = out[:limit]
    return out


def _public(r: Dict[str, Any]) -> Dict[str, Any]:
    summary = dict(r.get("summary") or {})
    d = {k: summary.get(k) for k in STATUS_KEYS}
    d.update({
        "run_id": r["run_id"],
        "job_id": (r.get("job_ids") or [None])[0],
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
    head = f"{'RUN':24} {'NAME':22} {'STATE':11} {'STEP':>11} {'BEST VAL':>9} {'ACC':>6}  CREATED"
    lines = [head]
    for r in rows:
        step = f"{r['step'] if r['step'] is not None else '-'}/{r['max_steps'] or '-'}"
        val = f"{r['best_val_loss']:.4f}" if r.get("best_val_loss") is not None else "-"
        acc = f"{r['accuracy']:.0%}" if r.get("accuracy") is not None else "-"
        lines.append(f"{r['run_id']:24} {r['name'][:22]:22} {r['state']:11} {step:>11} {val:>9} {acc:>6}  {r['created']}")
    return "\n".join(lines)
