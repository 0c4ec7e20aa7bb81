"""A run's status: Slurm's (or the local executor's) state + the parsed log/events + checkpoints.

`run_status(row)` returns the JSON object that `hpc-ft status --json` prints and `hpc-ft runs --json`
lists; it also writes the latest summary back to the registry.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Dict, Optional

from hpc_ft.track import slurm as sl
from hpc_ft.track.registry import FINAL_STATES

# The state shown when the scheduler has nothing to say (a run directory read on its own).
CAUSE_STATE = {"COMPLETED": "COMPLETED", "EARLY_STOPPED": "COMPLETED", "TIMEOUT": "TIMEOUT",
               "PREEMPTED": "PREEMPTED", "CANCELLED": "CANCELLED", "GPU_OOM": "FAILED", "HOST_OOM": "OUT_OF_MEMORY",
               "NCCL_TIMEOUT": "FAILED", "NCCL_ERROR": "FAILED", "CONFIG_ERROR": "FAILED", "NODE_FAIL": "NODE_FAIL",
               "ERROR": "FAILED", "RUNNING": "RUNNING"}

STATUS_KEYS = ("run_id", "job_id", "state", "step", "max_steps", "train_loss", "best_val_loss", "best_checkpoint",
               "early_stopped", "accuracy", "base_accuracy")


def _record(run_dir: Path) -> Dict[str, Any]:
    from hpc_ft.submit.rundir import read_run_json

    try:
        return read_run_json(run_dir)
    except (FileNotFoundError, ValueError):
        return {}


def scheduler_state(row: Dict[str, Any], rec: Dict[str, Any]) -> Dict[str, Dict[str, str]]:
    """kind ('train'/'eval') -> the scheduler's row for that job."""
    jobs: Dict[str, str] = dict(rec.get("jobs") or {})
    if not jobs and row.get("job_ids"):
        jobs = {"train": row["job_ids"][0]}
        if len(row["job_ids"]) > 1:
            jobs["eval"] = row["job_ids"][1]
    if row.get("executor") == "local":
        return {k: sl.local_state(Path(row["run_dir"]), v) for k, v in jobs.items()}
    states = sl.job_states(jobs.values())
    return {k: states.get(str(v), {"State": "UNKNOWN"}) for k, v in jobs.items()}


def run_status(row: Dict[str, Any], registry=None) -> Dict[str, Any]:
    from hpc_ft.track.run_state import state_from_run_dir

    run_dir = Path(row["run_dir"])
    rec = _record(run_dir)
    sched = scheduler_state(row, rec)
    train = sched.get("train", {})
    restarts = train.get("Restarts")
    rs = state_from_run_dir(run_dir, row.get("backend") or rec.get("backend", "hf"),
                            slurm_state=train.get("State") or None, exit_code=sl.exit_code(train),
                            run_id=row["run_id"], requeues=int(restarts) if restarts and restarts.isdigit() else None,
                            **_nemo_kwargs(rec, run_dir))
    out = rs.to_dict()
    if not out.get("state") or out["state"] == "UNKNOWN":
        out["state"] = CAUSE_STATE.get(out.get("end_cause"), out.get("state") or "UNKNOWN")
    out = {k: (v.value if hasattr(v, "value") else v) for k, v in out.items()}
    out.update({
        "run_id": row["run_id"],
        "job_id": (rec.get("jobs") or {}).get("train") or (row.get("job_ids") or [None])[0],
        "jobs": {k: {"job_id": (rec.get("jobs") or {}).get(k), "state": v.get("State"),
                     "reason": v.get("Reason", "")} for k, v in sched.items()},
        "name": row.get("name"),
        "run_dir": str(run_dir),
        "backend": row.get("backend"),
        "cluster": row.get("cluster"),
    })
    if "eval" in sched and out.get("state") == "COMPLETED":
        ev = sched["eval"].get("State", "UNKNOWN")
        if ev not in ("COMPLETED",) and ev not in FINAL_STATES:
            out["state"] = "RUNNING"  # training done, eval still to come
    for k in STATUS_KEYS:
        out.setdefault(k, None)
    if registry is not None and not row.get("unregistered"):
        registry.update_run(row["run_id"], state=out["state"], summary={k: out.get(k) for k in STATUS_KEYS})
    return out


def _nemo_kwargs(rec: Dict[str, Any], run_dir: Path) -> Dict[str, Any]:
    """Where NeMo wrote (exp_manager.exp_dir/name), how many rank folders a checkpoint has, max_steps."""
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        return {}
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.load(cfg_path)
        kw: Dict[str, Any] = {"max_steps": int(cfg.sweep.steps or cfg.trainer.max_steps)}
        if cfg.backend.name == "nemo":
            kw.update(exp_name=cfg.exp_manager.name, nemo_exp_root=cfg.exp_manager.exp_dir,
                      expected_ranks=int(cfg.model.tensor_model_parallel_size) * int(cfg.model.pipeline_model_parallel_size),
                      mode=cfg.exp_manager.early_stopping_callback_params.mode)
        return kw
    except Exception:  # noqa: BLE001 - a hand-edited config.yaml must not break status
        return {}


def is_final(status: Dict[str, Any]) -> bool:
    return status.get("state") in FINAL_STATES


def wait_for_end(row: Dict[str, Any], poll_s: float = 2.0, registry=None, on_update=None) -> Dict[str, Any]:
    while True:
        st = run_status(row, registry)
        if on_update:
            on_update(st)
        if is_final(st):
            return st
        time.sleep(poll_s)


def _fmt(v: Optional[float], nd: int = 4) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


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
    if st.get("requeues"):
        lines.append(f"requeues {st['requeues']}")
    lines.append(f"dir      {st['run_dir']}")
    if st.get("state") in ("FAILED", "OUT_OF_MEMORY", "NODE_FAIL") and st.get("log_tail"):
        lines.append("log tail:")
        lines.extend("  " + ln for ln in str(st["log_tail"]).splitlines()[-15:])
    return "\n".join(lines)
