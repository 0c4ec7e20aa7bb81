"""`hpc-ft plot`: a run's train and val loss against step (best checkpoint and early stop marked),
or a sweep's throughput per point. matplotlib is imported only here (the `plot` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

from hpc_ft.errors import UserError


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plotting needs matplotlib: `pip install 'hpc-ft[plot]'`.") from None
    return plt


def run_curves(row: Dict) -> Tuple[List[Tuple[int, float]], List[Tuple[int, float]], Dict]:
    """(train points, val points, status) of a run, from its events or NeMo log."""
    from hpc_ft.track.events import Progress, ValLoss
    from hpc_ft.track.status import run_status

    from hpc_ft.backends import get_backend

    run_dir = Path(row["run_dir"])
    events = get_backend(row.get("backend") or "hf").read_events(run_dir)
    train: Dict[int, float] = {}
    val: Dict[int, float] = {}
    for e in events:
        if isinstance(e, Progress) and e.step is not None and e.train_loss is not None:
            train[e.step] = e.train_loss
        if isinstance(e, ValLoss) and e.step is not None and e.val_loss is not None:
            val[e.step] = e.val_loss
    return sorted(train.items()), sorted(val.items()), run_status(row)


def metric_curve(row: Dict, monitor: str) -> List[Tuple[int, float]]:
    """(step, value) of a task's monitored validation metric (val_f1, ...) from the hf events file."""
    from hpc_ft.track.events import ValScores
    from hpc_ft.track.hf_events import read_hf_events

    run_dir = Path(row["run_dir"])
    points = {e.step: dict(e.scores)[monitor] for e in read_hf_events(run_dir / "events.jsonl", run_dir)
              if isinstance(e, ValScores) and monitor in dict(e.scores)}
    return sorted(points.items())


def best_marker(st: Dict, val: List[Tuple[int, float]]) -> Optional[Tuple[int, float]]:
    """(step, val loss) of the best checkpoint as `status` decided it (RunState.best_checkpoint), or None."""
    from hpc_ft.track.run_state import checkpoint_step

    step = checkpoint_step(st.get("best_checkpoint"))
    if step is None:
        return None
    value = st.get("best_val_loss")
    if value is None:
        value = dict(val).get(step)
    return None if value is None else (step, float(value))


def plot_run(row: Dict, output: str) -> Path:
    train, val, st = run_curves(row)
    if not train and not val:
        raise UserError(f"run {row['run_id']}: no losses logged yet. Try again once training has started.")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue", alpha=0.8)
    scores = metric_curve(row, st.get("monitor")) if st.get("monitor") else []
    if val:
        ax.plot(*zip(*val), "o-", label="val loss", color="tab:orange")
        if not scores:
            best = best_marker(st, val)
            if best is not None:
                ax.scatter([best[0]], [best[1]], s=120, facecolors="none", edgecolors="green", linewidths=2, zorder=5,
                           label=f"best checkpoint (step {best[0]}, {best[1]:.4f})")
    if scores:  # a task's monitored metric on its own axis; the best checkpoint is its best
        ax2 = ax.twinx()
        ax2.plot(*zip(*scores), "s-", color="tab:purple", label=st["monitor"])
        pick = min if st["monitor"].endswith("loss") else max
        best = pick(scores, key=lambda p: p[1])
        ax2.scatter([best[0]], [best[1]], s=120, facecolors="none", edgecolors="green", linewidths=2, zorder=5,
                    label=f"best checkpoint (step {best[0]}, {st['monitor']} {best[1]:.4f})")
        ax2.set_ylabel(st["monitor"])
        ax2.legend(loc="center right")
    if st.get("early_stopped") and st.get("step"):
        ax.axvline(st["step"], color="red", linestyle="--", label=f"early stop (step {st['step']})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{row.get('name')} / {row['run_id']} ({st['state']})")
    ax.legend()
    ax.grid(alpha=0.3)
    out = Path(output)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
