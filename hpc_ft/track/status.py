"""A run's status: Slurm's (or the local executor's) state + the parsed log/events + checkpoints.

`run_status(row)` returns the JSON object that `hpc-ft status --json` prints and `hpc-ft runs --json`
lists; it also writes the latest summary back to the registry.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from hpc_ft.executors import FINAL_STATES, executor_named, executor_of
from hpc_ft.executors.slurm import exit_code, node_problem

# The state shown when the scheduler has nothing to say (a run directory read on its own).
CAUSE_STATE = {"COMPLETED": "COMPLETED", "EARLY_STOPPED": "COMPLETED", "TIMEOUT": "TIMEOUT",
               "PREEMPTED": "PREEMPTED", "CANCELLED": "CANCELLED", "GPU_OOM": "FAILED", "HOST_OOM": "OUT_OF_MEMORY",
               "NCCL_TIMEOUT": "FAILED", "NCCL_ERROR": "FAILED", "CONFIG_ERROR": "FAILED", "NODE_FAIL": "NODE_FAIL",
               "ERROR": "FAILED", "RUNNING": "RUNNING"}

STATUS_KEYS = ("run_id", "job_id", "state", "step", "max_steps", "train_loss", "best_val_loss", "best_checkpoint",
               "early_stopped", "accuracy", "base_accuracy")

# Every key of `hpc-ft status --json`, and so of each object of `hpc-ft runs --json` (one schema for both):
# the RunState fields, then the run's identity and its scheduler jobs.
STATUS_FIELDS = (
    "run_id", "job_id", "state", "step", "max_steps", "train_loss", "val_loss", "best_val_loss", "best_checkpoint",
    "last_checkpoint", "final_artifact", "early_stopped", "end_cause", "end_reason", "accuracy", "base_accuracy",
    "monitor", "val_metric", "best_metric", "metrics", "base_metrics",
    "step_time_s", "tokens_per_s", "log_tail", "requeues", "attempts", "backend", "notes",
    "jobs", "name", "run_dir", "cluster", "sweep_id", "created",
)


def read_record(run_dir: Path) -> Dict[str, Any]:
    from hpc_ft.submit.rundir import read_run_json

    try:
        return read_run_json(run_dir)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return {}


def run_jobs(row: Dict[str, Any], rec: Dict[str, Any]) -> Dict[str, str]:
    """kind ('train'/'eval'/...) -> job id, from run.json (the registry's job_ids when run.json has none)."""
    jobs: Dict[str, str] = {k: str(v) for k, v in (rec.get("jobs") or {}).items() if v}
    if not jobs and row.get("job_ids"):
        jobs = {"train": str(row["job_ids"][0])}
        if len(row["job_ids"]) > 1:
            jobs["eval"] = str(row["job_ids"][1])
    return jobs


@dataclasses.dataclass
class SchedulerSnapshot:
    """Slurm's answers for many runs at once: one sacct call (squeue for what it misses), one sinfo call."""

    jobs: Dict[str, Dict[str, str]]
    nodes: Dict[str, str]


def snapshot(rows: Iterable[Dict[str, Any]], recs: Optional[Dict[str, Dict[str, Any]]] = None) -> SchedulerSnapshot:
    """The scheduler's state of every Slurm job of `rows` (registry rows), in one round of calls."""
    ids: List[str] = []
    for row in rows:
        if not executor_of(row).queues_jobs:  # the local executor's states come from the run folder
            continue
        rec = (recs or {}).get(row["run_id"])
        if rec is None:
            rec = read_record(Path(row["run_dir"]))
        ids.extend(run_jobs(row, rec).values())
    scheduler = executor_named("slurm")
    jobs = scheduler.states(ids) if ids else {}
    running = [r.get("NodeList", "") for r in jobs.values() if r.get("State") in ("RUNNING", "COMPLETING")]
    return SchedulerSnapshot(jobs=jobs, nodes=scheduler.node_states(running) if running else {})


def scheduler_state(row: Dict[str, Any], rec: Dict[str, Any],
                    snap: Optional[SchedulerSnapshot] = None) -> Dict[str, Dict[str, str]]:
    """kind ('train'/'eval') -> the scheduler's row for that job."""
    jobs = run_jobs(row, rec)
    executor = executor_of(row)
    if not executor.queues_jobs:
        return {k: executor.states([v], Path(row["run_dir"]))[v] for k, v in jobs.items()}
    if snap is None:
        snap = snapshot([row], {row["run_id"]: rec})
    return {k: snap.jobs.get(str(v), {"State": "UNKNOWN"}) for k, v in jobs.items()}


def scheduler_kwargs(sched: Dict[str, Dict[str, str]]) -> Dict[str, Any]:
    """What state_from_run_dir / state_from_events take from the train job's scheduler row."""
    train = sched.get("train", {})
    restarts = train.get("Restarts")
    state = train.get("State") or None
    if state == "UNKNOWN":  # neither sacct nor squeue knows the job: no word from Slurm (not a failure)
        state = None
    return {"slurm_state": state, "exit_code": exit_code(train),
            "requeues": int(restarts) if restarts and restarts.isdigit() else None}


def run_status(row: Dict[str, Any], registry=None, *, snap: Optional[SchedulerSnapshot] = None) -> Dict[str, Any]:
    """The status object of one run (the keys of STATUS_FIELDS). `snap`: Slurm's answers fetched for many
    runs at once (`hpc-ft runs`); without it this run's jobs are looked up on their own."""
    from hpc_ft.track.run_state import state_from_run_dir

    run_dir = Path(row["run_dir"])
    rec = read_record(run_dir)
    sched = scheduler_state(row, rec, snap)
    rs = state_from_run_dir(run_dir, row.get("backend") or rec.get("backend", "hf"), run_id=row["run_id"],
                            **scheduler_kwargs(sched), **run_kwargs(rec, run_dir))
    return compose_status(row, rec, sched, rs, registry=registry, nodes=snap.nodes if snap else None)


def compose_status(row: Dict[str, Any], rec: Dict[str, Any], sched: Dict[str, Dict[str, str]], rs,
                   registry=None, nodes: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """The status object from a RunState and the scheduler's rows (shared by `status` and `watch`)."""
    out = rs.to_dict()
    if not out.get("state") or out["state"] == "UNKNOWN":
        out["state"] = CAUSE_STATE.get(out.get("end_cause"), out.get("state") or "UNKNOWN")
    out = {k: (v.value if hasattr(v, "value") else v) for k, v in out.items()}
    jobs = run_jobs(row, rec)
    out.update({
        "run_id": row["run_id"],
        "job_id": jobs.get("train") or (row.get("job_ids") or [None])[0],
        "jobs": _jobs_view(jobs, sched, nodes),
        "name": row.get("name") or rec.get("name"),
        "run_dir": str(row["run_dir"]),
        "backend": row.get("backend") or rec.get("backend"),
        "cluster": row.get("cluster") or rec.get("cluster"),
        "sweep_id": row.get("sweep_id"),
        "created": _created(row, rec),
    })
    if "eval" in sched and out.get("state") == "COMPLETED":
        ev = sched["eval"].get("State", "UNKNOWN")
        if ev not in ("COMPLETED",) and ev not in FINAL_STATES:
            out["state"] = "RUNNING"  # training done, eval still to come
    for k in STATUS_FIELDS:
        out.setdefault(k, None)
    if registry is not None and not row.get("unregistered"):
        registry.update_run(row["run_id"], state=out["state"], summary={k: out.get(k) for k in STATUS_FIELDS})
    return out


_NEVER_MET = ("DependencyNeverSatisfied",)


def _jobs_view(jobs: Dict[str, str], sched: Dict[str, Dict[str, str]],
               nodes: Optional[Dict[str, str]]) -> Dict[str, Dict[str, Any]]:
    """kind -> {job_id, state, reason, previous}: Slurm's word, with the reason a person needs.

    * the eval job of a training that did not complete: Slurm cancels it (afterok can never be met,
      --kill-on-invalid-dep=yes); the reason says so instead of Slurm's bare "None";
    * a running job whose node stopped answering (slurmd killed, node lost) is still RUNNING to Slurm
      until SlurmdTimeout passes; the reason says the node is not responding;
    * a requeued job lists the end states of its earlier allocations (`previous`, e.g. NODE_FAIL).
    """
    train_state = (sched.get("train") or {}).get("State", "")
    view: Dict[str, Dict[str, Any]] = {}
    for kind, row in sched.items():
        state = row.get("State")
        reason = row.get("Reason", "") or ""
        if reason in ("None", "(null)"):
            reason = ""
        previous = [p for p in (row.get("Previous") or "").split(",") if p]
        if kind != "train" and train_state in FINAL_STATES and train_state != "COMPLETED":
            if state == "CANCELLED":
                reason = (f"training {train_state}: the afterok dependency can never be met, "
                          "so Slurm cancelled this job" + (f" ({reason})" if reason else ""))
            elif state == "PENDING" and reason in _NEVER_MET:
                reason = f"training {train_state}: the afterok dependency can never be met; cancel it (`hpc-ft cancel`)"
        if state in ("RUNNING", "COMPLETING"):
            if nodes is None:
                nodes = executor_named("slurm").node_states(
                    [r.get("NodeList", "") for r in sched.values() if r.get("State") in ("RUNNING", "COMPLETING")])
            sick = node_problem(row.get("NodeList", ""), nodes)
            if sick:
                reason = sick
        failed_before = [p for p in previous if p != "REQUEUED"]  # REQUEUED: hpc-ft's own requeue on the time limit
        if failed_before and state != "COMPLETED":
            reason = "; ".join(x for x in (reason, f"requeued after {', '.join(failed_before)}") if x)
        view[kind] = {"job_id": jobs.get(kind), "state": state, "reason": reason, "previous": previous}
    return view


def _created(row: Dict[str, Any], rec: Dict[str, Any]) -> Optional[str]:
    if row.get("created"):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["created"]))
    created = rec.get("created")
    return str(created)[:19].replace("T", " ") if created else None


def run_kwargs(rec: Dict[str, Any], run_dir: Path) -> Dict[str, Any]:
    """max_steps, and what the backend's run reader needs (NeMo: where it wrote, how many rank folders a
    checkpoint has)."""
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        return {}
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.load(cfg_path)
        from hpc_ft.backends import get_backend

        kw: Dict[str, Any] = {"max_steps": int(cfg.sweep.steps or cfg.trainer.max_steps)}
        if OmegaConf.select(cfg, "task.name", default="sft") != "sft":  # a task's own metric drives the best checkpoint
            es = cfg.exp_manager.early_stopping_callback_params
            kw.update(monitor=es.monitor, monitor_mode=es.mode)
        kw.update(get_backend(cfg.backend.name).reader_kwargs(cfg, run_dir))  # where the backend's logs and checkpoints are
        return kw
    except Exception:  # noqa: BLE001 - a hand-edited config.yaml must not break status
        return {}


def is_final(status: Dict[str, Any]) -> bool:
    return status.get("state") in FINAL_STATES


UNDECIDED_POLLS = 3  # polls in a row with no word from anything before a run's state counts as undecidable


def undecided_reason(st: Dict[str, Any]) -> Optional[str]:
    """Why the state of a run cannot be decided, or None: the state is UNKNOWN, no scheduler knows any job
    of the run, and its log and files show no end (a run folder copied from elsewhere, a purged job)."""
    if st.get("state") not in (None, "UNKNOWN"):
        return None
    jobs = st.get("jobs") or {}
    if any((j.get("state") or "UNKNOWN") != "UNKNOWN" for j in jobs.values()):
        return None
    ids = ", ".join(f"{k} {j.get('job_id')}" for k, j in jobs.items()) or "none recorded"
    return (f"state UNKNOWN: no scheduler knows its jobs ({ids}) and nothing in {st.get('run_dir')} says "
            "how it ended")


class EndWatch:
    """Decides when to stop polling a run: it ended, or its state stayed undecidable UNDECIDED_POLLS times."""

    def __init__(self) -> None:
        self.undecided = 0
        self.reason: Optional[str] = None

    def done(self, st: Dict[str, Any]) -> bool:
        if is_final(st):
            return True
        why = undecided_reason(st)
        self.undecided = self.undecided + 1 if why else 0
        if self.undecided >= UNDECIDED_POLLS:
            self.reason = why
            return True
        return False


def wait_for_end(row: Dict[str, Any], poll_s: float = 2.0, registry=None, on_update=None) -> Dict[str, Any]:
    """Poll until the run ends; a run whose state cannot be decided ends the wait with `undecided` set."""
    ends = EndWatch()
    while True:
        st = run_status(row, registry)
        if on_update:
            on_update(st)
        if ends.done(st):
            st["undecided"] = ends.reason
            return st
        time.sleep(poll_s)


def _fmt(v: Optional[float], nd: int = 4) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


HEADLINE_METRICS = ("accuracy", "precision", "recall", "f1", "log_loss")


def format_metrics(metrics: Dict[str, float], base: Optional[Dict[str, float]] = None) -> str:
    """'f1 0.9512 (untuned 0.0421)  accuracy ...' for the headline metrics of a task's eval."""
    parts = []
    for name in HEADLINE_METRICS:
        if name in metrics:
            was = f" (untuned {base[name]:.4f})" if base and name in base else ""
            parts.append(f"{name} {metrics[name]:.4f}{was}")
    return "   ".join(parts)


def format_status(st: Dict[str, Any]) -> str:
    lines = [f"run      {st['run_id']}  ({st.get('name')}, {st.get('backend')} on {st.get('cluster')})"]
    jobs = ", ".join(f"{k} {v['job_id']} {v['state']}" + (f" ({v['reason']})" if v.get("reason") not in ("", None, "None") else "")
                     for k, v in (st.get("jobs") or {}).items())
    lines.append(f"state    {st['state']}" + (f"  [{jobs}]" if jobs else ""))
    if st.get("end_cause"):
        lines.append(f"cause    {st['end_cause']}")
    step = "-" if st.get("step") is None else str(st["step"])
    lines.append(f"step     {step}/{st.get('max_steps') or '-'}")
    lines.append(f"loss     train {_fmt(st.get('train_loss'))}   best val {_fmt(st.get('best_val_loss'))}")
    lines.append(f"best     {st.get('best_checkpoint') or '-'}")
    lines.append(f"early    {'yes' if st.get('early_stopped') else 'no'}")
    if st.get("accuracy") is not None:
        base = st.get("base_accuracy")
        lines.append(f"accuracy {st['accuracy']:.1%}" + (f"   (untuned base {base:.1%})" if base is not None else ""))
    if st.get("monitor"):
        lines.append(f"metric   {st['monitor']} {_fmt(st.get('val_metric'))}   best {_fmt(st.get('best_metric'))}")
    if st.get("metrics"):
        lines.append("metrics  " + format_metrics(st["metrics"], st.get("base_metrics")))
    if st.get("requeues"):
        lines.append(f"requeues {st['requeues']}")
    lines.append(f"dir      {st['run_dir']}")
    for note in st.get("notes") or []:
        lines.append(f"note     {note}")
    if st.get("state") in ("FAILED", "OUT_OF_MEMORY", "NODE_FAIL") and st.get("log_tail"):
        lines.append("log tail:")
        lines.extend("  " + ln for ln in str(st["log_tail"]).splitlines()[-15:])
    return "\n".join(lines)
