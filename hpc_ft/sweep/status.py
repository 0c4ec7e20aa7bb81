"""A sweep's status: one row per point (TP, PP, MBS, GBS, state, s/step, tokens/s, peak memory, cause).

The scheduler is asked once for the whole array (`sacct -j <array job>`, squeue as the fallback), not once
per point; each kept point's run directory is then read like any run's (`state_from_run_dir`). Points the
planner pruned come from points.json (state PRUNED, with its reason); points the dispatcher cancelled after
a smaller micro-batch of the same layout ran out of GPU memory are CANCELLED_OOM.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

from hpc_ft.errors import UserError
from hpc_ft.executors.slurm import LEFT_QUEUE
from hpc_ft.submit.rundir import POINTS_JSON, SWEEP_JSON

PRUNED = "PRUNED"
CANCELLED_OOM = "CANCELLED_OOM"
SUCCESS = "COMPLETED"


# ---- finding the sweep ----------------------------------------------------------------------------


def resolve_sweep(registry, ref: Optional[str]) -> Dict[str, Any]:
    """The sweep named by an id prefix (default: the latest), or a sweep directory (holding sweep.json)."""
    if ref and os.path.isfile(os.path.join(ref, SWEEP_JSON)):
        meta = json.loads(Path(ref, SWEEP_JSON).read_text(encoding="utf-8"))
        found = registry.get_sweep(meta.get("sweep_id", "")) if meta.get("sweep_id") else None
        return found or {"sweep_id": meta.get("sweep_id"), "name": meta.get("name"),
                         "sweep_dir": str(Path(ref).resolve()), "job_id": meta.get("array_job_id"),
                         "points": meta.get("points"), "unregistered": True}
    row = registry.get_sweep(ref) if ref else registry.latest_sweep()
    if row is None:
        if ref:
            raise UserError(f"sweep '{ref}': not found in the registry ({registry.path}). Give the sweep id printed "
                            "by `hpc-ft train -m` (a prefix is enough) or the sweep directory.")
        raise UserError("no sweeps registered yet. Start one: `hpc-ft train -m key=a,b ...`.")
    return row


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing; the sweep directory is incomplete ({what}).") from None
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc}).") from None


# ---- one point --------------------------------------------------------------------------------------


def peak_memory_mb(run_dir: Path, backend: str) -> Optional[float]:
    """Peak memory the backend reported (hf: host RSS summed over ranks; nemo reports none)."""
    from hpc_ft.backends import get_backend

    return get_backend(backend).peak_memory_mb(run_dir)


def _oom_cause(point: Dict[str, Any], oom_task: str, by_task: Dict[int, Dict[str, Any]]) -> str:
    other = by_task.get(int(oom_task)) if oom_task.isdigit() else None
    if other is None:
        return f"cancelled: task {oom_task} ran out of GPU memory with the same TP and a smaller MBS"
    return (f"cancelled: point {other['index']} ran out of GPU memory with the same TP and a smaller MBS "
            f"(TP={other.get('tp')}, MBS={other.get('mbs')}; this point: MBS={point.get('mbs')})")


def _point_row(point: Dict[str, Any], run: Optional[Dict[str, Any]], sched: Dict[str, str],
               by_task: Dict[int, Dict[str, Any]]) -> Dict[str, Any]:
    from hpc_ft.executors.local import local_state
    from hpc_ft.sweep.launch import OOM_MARKER
    from hpc_ft.track.status import SchedulerSnapshot, run_status

    row: Dict[str, Any] = {k: point.get(k) for k in ("index", "task", "run_id", "run_dir", "overrides", "swept",
                                                      "tp", "pp", "mbs", "gbs", "lr")}
    row.update(job_id=None, state=None, step=None, max_steps=None, step_time_s=None, tokens_per_s=None,
               peak_mem_mb=None, end_cause=None, cause=None, train_loss=None, best_val_loss=None,
               best_checkpoint=None, early_stopped=None, accuracy=None, base_accuracy=None, monitor=None,
               best_metric=None, metrics=None)
    if not point.get("kept"):
        row.update(state=PRUNED, cause=point.get("reason") or "pruned")
        return row
    run_dir = Path(point["run_dir"])
    try:
        rec = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        rec = {}
    row["job_id"] = (rec.get("jobs") or {}).get("train") or ((run or {}).get("job_ids") or [None])[0]
    marker = run_dir / "state" / OOM_MARKER
    if marker.is_file() and not (run_dir / "state" / "started").exists():
        oom_task = marker.read_text(encoding="utf-8").strip()
        row.update(state=CANCELLED_OOM, end_cause="CANCELLED", cause=_oom_cause(point, oom_task, by_task))
        return row
    if sched.get("Reason") == LEFT_QUEUE and (run_dir / "state" / "started").exists():
        # no record in sacct/squeue at the moment of asking (accounting lags a task that just ran):
        # the task's own state files say what happened
        sched = dict(local_state(run_dir, None))
        if sched["State"] == "FAILED" and not (run_dir / "state" / "exit_code").exists():
            sched = {"State": "RUNNING", "ExitCode": ""}
    backend = rec.get("backend") or (run or {}).get("backend") or "hf"
    # the point is read like any run (track/status), with the scheduler's row fetched for the whole array
    job = str(row["job_id"] or "")
    st = run_status({"run_id": point.get("run_id"), "run_dir": str(run_dir), "backend": backend,
                     "executor": rec.get("executor"), "job_ids": [job], "unregistered": True},
                    snap=SchedulerSnapshot(jobs={job: {**sched, "State": sched.get("State") or "UNKNOWN"}}, nodes={}))
    state = st.get("state")
    row.update(state=state, step=st.get("step"), max_steps=st.get("max_steps"), step_time_s=st.get("step_time_s"),
               tokens_per_s=st.get("tokens_per_s"), peak_mem_mb=peak_memory_mb(run_dir, backend),
               end_cause=st.get("end_cause"), train_loss=st.get("train_loss"), best_val_loss=st.get("best_val_loss"),
               best_checkpoint=st.get("best_checkpoint"), early_stopped=st.get("early_stopped"),
               accuracy=st.get("accuracy"), base_accuracy=st.get("base_accuracy"), monitor=st.get("monitor"),
               best_metric=st.get("best_metric"), metrics=st.get("metrics"))
    if state not in (SUCCESS, "RUNNING", "PENDING", "REQUEUED", "CONFIGURING", "COMPLETING"):
        reason = st.get("end_reason") or sched.get("Reason") or ""
        row["cause"] = f"{st.get('end_cause')}: {reason}" if reason else st.get("end_cause")
    return row


# ---- the sweep --------------------------------------------------------------------------------------


def sweep_status(sweep: Dict[str, Any], registry=None) -> Dict[str, Any]:
    """The status object `hpc-ft sweep status --json` prints (and the registry rows brought up to date)."""
    from hpc_ft.executors import executor_named

    sweep_dir = Path(sweep["sweep_dir"])
    meta = _read_json(sweep_dir / SWEEP_JSON, "sweep.json")
    points = _read_json(sweep_dir / POINTS_JSON, "points.json")
    runs = {r["run_id"]: r for r in registry.list(sweep_id=meta["sweep_id"])} if registry is not None else {}
    kept = [p for p in points if p.get("kept") and p.get("task") is not None]
    by_task = {p["task"]: p for p in kept}
    array_job = meta.get("array_job_id") or sweep.get("job_id")
    sched: Dict[int, Dict[str, str]] = {}
    if array_job:
        sched = executor_named(str(meta.get("executor") or "slurm")).array_states(
            str(array_job), {p["task"]: Path(p["run_dir"]) for p in kept})
    rows = [_point_row(p, runs.get(p.get("run_id")), sched.get(p.get("task"), {}), by_task) for p in points]
    if registry is not None:
        _record(registry, rows, runs)
    counts = Counter(r["state"] for r in rows)
    return {
        "sweep_id": meta["sweep_id"], "name": meta.get("name"), "sweep_dir": str(sweep_dir),
        "array_job_id": array_job, "executor": meta.get("executor"), "cluster": meta.get("cluster"),
        "backend": meta.get("backend"), "steps": meta.get("steps"), "parallelism": meta.get("parallelism"),
        "total": len(points), "tasks": len(kept), "counts": dict(sorted(counts.items())), "points": rows,
    }


def _record(registry, rows: List[Dict[str, Any]], runs: Dict[str, Dict[str, Any]]) -> None:
    """Registry rows follow the points (CANCELLED_OOM is recorded as CANCELLED, a state `hpc-ft runs` knows)."""
    from hpc_ft.track.status import STATUS_KEYS

    for r in rows:
        run = runs.get(r.get("run_id") or "")
        if run is None or r["state"] in (None, PRUNED):
            continue
        state = "CANCELLED" if r["state"] == CANCELLED_OOM else r["state"]
        if state != run.get("state"):
            summary = {k: r.get(k) for k in STATUS_KEYS}
            summary["state"] = state
            registry.update_run(r["run_id"], state=state, summary=summary)


def best_point(status: Dict[str, Any]) -> Dict[str, Any]:
    """The fastest successful point: most tokens/s, ties (or no tokens/s reported) by fewest s/step; for a
    classification/NER/preference sweep, the point whose monitored metric (val_f1, val_log_loss, ...) is best."""
    scored = [r for r in status["points"] if r["state"] == SUCCESS and r.get("monitor") and r.get("best_metric") is not None]
    if scored and status.get("steps") is None:
        lower = scored[0]["monitor"].endswith("loss")
        return (min if lower else max)(scored, key=lambda r: r["best_metric"])
    done = [r for r in status["points"] if r["state"] == SUCCESS
            and (r.get("tokens_per_s") is not None or r.get("step_time_s") is not None)]
    if not done:
        states = ", ".join(f"{n} {s}" for s, n in status["counts"].items())
        raise UserError(f"sweep {status['sweep_id']}: no point has finished successfully with a throughput yet "
                        f"({states}). `hpc-ft sweep status {status['sweep_id']}` shows why.")

    def speed(r):
        tok = r.get("tokens_per_s")
        st = r.get("step_time_s")
        return (tok is not None, tok or 0.0, -(st if st is not None else float("inf")))

    return max(done, key=speed)


# ---- text -------------------------------------------------------------------------------------------


def _num(v: Optional[float], fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _metric(r: Dict[str, Any]) -> str:
    """'val_f1 0.9512': a task point's monitored metric at its best checkpoint ('-' for SFT)."""
    return f"{r['monitor']} {r['best_metric']:.4f}" if r.get("monitor") and r.get("best_metric") is not None else "-"


def format_sweep_status(st: Dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in st["counts"].items())
    from hpc_ft.executors import executor_named

    queued = executor_named(str(st.get("executor") or "slurm")).queues_jobs
    where = f"{'array' if queued else 'local'} job {st['array_job_id']}"
    lines = [f"sweep {st['sweep_id']}  ({st.get('name')}, {st.get('backend')} on {st.get('cluster')}, {where})",
             f"points   {st['total']} ({counts})",
             f"{'POINT':>5} {'TASK':>4} {'TP':>3} {'PP':>3} {'MBS':>4} {'GBS':>5} {'LR':>8}  {'STATE':13} "
             f"{'STEP':>9} {'S/STEP':>8} {'TOKENS/S':>10} {'PEAK MB':>8} {'BEST METRIC':>18}  CAUSE"]
    for r in st["points"]:
        cells = ["-" if r.get(k) is None else str(r[k]) for k in ("task", "tp", "pp", "mbs", "gbs")]
        step = "-" if r.get("step") is None else f"{r['step']}/{r.get('max_steps') or '-'}"
        lines.append(
            f"{r['index']:>5} {cells[0]:>4} {cells[1]:>3} {cells[2]:>3} {cells[3]:>4} {cells[4]:>5} "
            f"{_num(r.get('lr'), 'g'):>8}  {r['state']:13} {step:>9} {_num(r.get('step_time_s'), '.4f'):>8} "
            f"{_num(r.get('tokens_per_s'), ',.0f'):>10} {_num(r.get('peak_mem_mb'), '.0f'):>8} "
            f"{_metric(r):>18}  {r.get('cause') or ''}")
    lines.append(f"dir      {st['sweep_dir']}")
    return "\n".join(lines)


def format_best(st: Dict[str, Any], best: Dict[str, Any]) -> str:
    import shlex

    swept = " ".join(f"{k}={v}" for k, v in (best.get("swept") or {}).items())
    return "\n".join([
        f"best point {best['index']} (task {best['task']}, run {best['run_id']}): "
        f"{_num(best.get('tokens_per_s'), ',.0f')} tokens/s, {_num(best.get('step_time_s'), '.4f')} s/step "
        f"(TP {best.get('tp')}, PP {best.get('pp')}, MBS {best.get('mbs')}, GBS {best.get('gbs')})"
        + (f"; best {_metric(best)}" if best.get("monitor") else ""),
        f"  swept:     {swept}",
        f"  overrides: {' '.join(best.get('overrides') or [])}",
        f"  run it:    hpc-ft train {shlex.join(best.get('overrides') or [])}",
    ])
