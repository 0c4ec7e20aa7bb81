"""`hpc-ft plot SWEEP -o FILE.png`: throughput (tokens/s) per point, pruned and failed points marked."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

from hpc_ft.errors import UserError

_COLORS = {"COMPLETED": "tab:green", "RUNNING": "tab:blue", "PENDING": "lightgray", "FAILED": "tab:red",
           "CANCELLED_OOM": "tab:orange", "PRUNED": "gray"}


def plot_sweep(sweep_row: Dict, output: str, registry=None) -> Path:
    from hpc_ft.sweep.status import sweep_status
    from hpc_ft.track.plot import pyplot

    st = sweep_status(sweep_row, registry)
    rows = st["points"]
    if not rows:
        raise UserError(f"sweep {st['sweep_id']}: no points.")
    use_tokens = any(r.get("tokens_per_s") is not None for r in rows)
    if not use_tokens and not any(r.get("step_time_s") for r in rows):
        raise UserError(f"sweep {st['sweep_id']}: no point has reported its throughput yet. "
                        f"Try again once training has started (`hpc-ft sweep status {st['sweep_id']}`).")
    plt = pyplot()
    values = []
    for r in rows:
        if use_tokens:
            values.append(r.get("tokens_per_s") or 0.0)
        else:
            values.append(1.0 / r["step_time_s"] if r.get("step_time_s") else 0.0)
    labels = [f"#{r['index']} " + " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in (r.get("swept") or {}).items())
              for r in rows]
    colors = [_COLORS.get(r["state"], "tab:purple") for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(rows) + 2), 4.8))
    x = range(len(rows))
    ax.bar(x, values, color=colors)
    top = max(values) if max(values) > 0 else 1.0
    for i, r in enumerate(rows):
        if values[i] == 0.0:
            ax.text(i, top * 0.02, r["state"], rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("tokens/s" if use_tokens else "steps/s")
    ax.set_title(f"sweep {st['sweep_id']} ({st.get('name')})\nthroughput per point", fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for s, c in _COLORS.items() if any(r["state"] == s for r in rows)]
    names = [s for s in _COLORS if any(r["state"] == s for r in rows)]
    if handles:
        ax.legend(handles, names, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out = Path(output)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
