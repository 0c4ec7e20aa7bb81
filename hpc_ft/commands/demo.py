"""`hpc-ft demo`: the main job on the embedded default (local executor, tiny Llama, LoRA), then a report."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List

from hpc_ft.errors import UserError


def _require_hf_extra() -> None:
    import importlib.util

    missing = [m for m in ("torch", "transformers", "peft") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(
            f"the demo trains for real and needs the hf extra ({', '.join(missing)} missing). Install it: "
            "`pip install torch==2.13.0 && pip install 'hpc-ft[hf]'` (or run `make demo`)."
        )


def run_demo(overrides: List[str]) -> int:
    from hpc_ft.commands.common import registry
    from hpc_ft.compose import compose_job
    from hpc_ft.submit.launch import launch_run
    from hpc_ft.submit.preflight import preflight
    from hpc_ft.track.follow import progress_line
    from hpc_ft.track.status import run_status, wait_for_end

    _require_hf_extra()
    t0 = time.time()
    # one thread: on a small shared machine a second thread costs more than it brings
    base = ["cluster=local", "eval=true", "backend.threads=1"]
    spec = compose_job([*base, *overrides])
    from hpc_ft.executors import get_executor

    if spec.backend.name != "hf" or get_executor(spec).queues_jobs:
        raise UserError("the demo runs the hf backend on the local executor; drop backend=/cluster= overrides "
                        "(use `hpc-ft train` for other setups).")
    for w in preflight(spec, force=False):
        print(f"hpc-ft: warning: {w}", file=sys.stderr)
    reg = registry()
    launch = launch_run(spec, [*base, *overrides], with_eval=True, registry=reg)
    print(f"hpc-ft demo: run {launch.run_id} started on this machine (local executor, pid {launch.job_ids['train']})")
    print(f"  run dir {launch.run_dir}")
    if spec.task.name == "sft":
        print("  steps: build the tiny Llama (if missing), LoRA fine-tune with early stopping, then greedy eval")
    else:
        es = spec.exp_manager.early_stopping_callback_params
        print(f"  steps: build the tiny {spec.model.family} base (if missing), train the {spec.task.name} head "
              f"({spec.model.peft.peft_scheme}) with early stopping on {es.monitor}, then score the test split "
              "beside the untuned model")
    row = reg.get(launch.run_id)
    last = [""]

    def show(st):
        line = progress_line(st)
        if line != last[0]:
            print("  " + line, flush=True)
            last[0] = line

    st = wait_for_end(row, poll_s=2.0, registry=reg, on_update=show)
    launch.local_job.wait() if hasattr(launch.local_job, "wait") else None
    st = run_status(row, reg)
    print(report(st, time.time() - t0, launch.run_dir))
    done = st.get("metrics") if spec.task.name != "sft" else st.get("accuracy") is not None
    return 0 if st["state"] == "COMPLETED" and done else 1


def _val_curve(run_dir: Path):
    from hpc_ft.track.events import ValLoss
    from hpc_ft.track.hf_events import read_hf_events

    vals = [(e.step, e.val_loss) for e in read_hf_events(run_dir / "events.jsonl", run_dir) if isinstance(e, ValLoss)]
    return vals


def report(st, wall_s: float, run_dir: Path) -> str:
    vals = _val_curve(run_dir)
    lines = ["", "== hpc-ft demo report =="]
    lines.append(f"run             {st['run_id']}  ({st['state']}, {st.get('end_cause')})")
    stop = f"early-stopped at step {st.get('step')} of max {st.get('max_steps')}" if st.get("early_stopped") \
        else f"step {st.get('step')} of max {st.get('max_steps')}"
    lines.append(f"training        {stop}")
    if vals:
        first, best = vals[0], min(vals, key=lambda v: v[1])
        lines.append(f"val loss        {first[1]:.4f} at step {first[0]} -> best {best[1]:.4f} at step {best[0]}"
                     f" ({len(vals)} validations)")
    lines.append(f"best checkpoint {st.get('best_checkpoint') or '-'}")
    if st.get("monitor"):
        lines.append(f"best {st['monitor']:10} {st['best_metric']:.4f} (the metric early stopping followed)"
                     if st.get("best_metric") is not None else f"monitor         {st['monitor']}")
    acc, base = st.get("accuracy"), st.get("base_accuracy")
    if st.get("metrics"):
        from hpc_ft.track.status import HEADLINE_METRICS

        tuned, untuned = st["metrics"], st.get("base_metrics") or {}
        for name in HEADLINE_METRICS:
            if name in tuned:
                was = f" vs untuned {untuned[name]:.4f}" if name in untuned else ""
                lines.append(f"{name:15} fine-tuned {tuned[name]:.4f}{was} on the held-out test split")
    elif acc is not None:
        gain = f"  ({(acc - base) * 100:+.1f} points)" if base is not None else ""
        lines.append(f"accuracy        fine-tuned {acc:.1%} vs untuned base {base:.1%}{gain} on the held-out test split"
                     if base is not None else f"accuracy        fine-tuned {acc:.1%}")
    lines.append(f"wall time       {wall_s:.0f} s")
    lines.append(f"next            hpc-ft status {st['run_id']} | hpc-ft logs {st['run_id']} | "
                 f"hpc-ft plot {st['run_id']} -o loss.png")
    return "\n".join(lines)
