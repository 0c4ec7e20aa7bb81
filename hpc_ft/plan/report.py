"""Render a `PlanResult` for people (a text report) and for programs (a stable JSON dict).

The JSON is a documented interface (``SCHEMA``): keys always present, in this order, GiB rounded
to 3 decimals, alternatives in ranked order::

    schema, ok, fits, memory_fits, per_gpu_gib, capacity_gib, headroom_gib, margin_gib, headroom_fraction,
    device, backend, model, stage, layout{tp,pp,dp,mbs,gbs,micro_batches,world_size,seq_len,packed_sequence},
    breakdown{weights,weight_copies,trainable_params,gradients,optimizer_states,activations,
              logits,framework},
    reason, notes[], violations[{severity,key,value,rule,fix}], warnings[...same],
    alternatives[{tp,pp,mbs,dp,ok,fits,memory_fits,per_gpu_gib,reason}], best{...,overrides}|null,
    levers[{overrides,ok,per_gpu_gib,why}]

``fits`` is false whenever a rule error stands (a job that breaks a rule fits nowhere);
``memory_fits`` is the memory model's verdict alone.
"""

from __future__ import annotations

import json

from hpc_ft.plan.memory import COMPONENT_LABELS, COMPONENTS
from hpc_ft.plan.result import PlanResult
from hpc_ft.plan.search import Alternative

SCHEMA = "hpc-ft.plan/1"
DECIMALS = 3


def _r(x: float) -> float:
    v = round(float(x), DECIMALS)
    return 0.0 if v == 0 else v  # no '-0.0'


def _alt_dict(alt: Alternative) -> dict:
    return {
        "tp": alt.tp,
        "pp": alt.pp,
        "mbs": alt.mbs,
        "dp": alt.dp,
        "ok": alt.ok,
        "fits": alt.ok,
        "memory_fits": alt.fits,
        "per_gpu_gib": _r(alt.per_gpu_gib),
        "reason": alt.reason,
    }


def to_dict(result: PlanResult) -> dict:
    """The JSON-able form, with a fixed key order and rounding (see the module docstring)."""
    req, est = result.request, result.estimate
    best = result.best
    return {
        "schema": SCHEMA,
        "ok": result.ok,
        "fits": result.fits,
        "memory_fits": result.memory_fits,
        "per_gpu_gib": _r(result.per_gpu_gib),
        "capacity_gib": _r(result.capacity_gib),
        "headroom_gib": _r(result.headroom_gib),
        "margin_gib": _r(est.margin_gib if est else 0.0),
        "headroom_fraction": _r(req.headroom),
        "device": result.gpu.name,
        "backend": req.backend,
        "model": req.arch.name or req.arch.family,
        "stage": est.stage if est else "",
        "layout": {
            "tp": req.tp,
            "pp": req.pp,
            "dp": req.dp,
            "mbs": req.mbs,
            "gbs": req.gbs,
            "micro_batches": req.num_microbatches,
            "world_size": req.world_size,
            "seq_len": req.seq_len,
            "packed_sequence": req.packed_sequence,
        },
        "breakdown": {name: _r(result.breakdown.get(name, 0.0)) for name in COMPONENTS},
        "reason": result.reason,
        "notes": list(est.notes) if est else [],
        "violations": [v.as_dict() for v in result.violations],
        "warnings": [v.as_dict() for v in result.warnings],
        "alternatives": [_alt_dict(a) for a in result.alternatives],
        "best": None if best is None else {**_alt_dict(best), "overrides": best.overrides()},
        "levers": [
            {"overrides": lv.overrides, "ok": lv.ok, "per_gpu_gib": _r(lv.per_gpu_gib), "why": lv.why}
            for lv in result.levers
        ],
    }


def to_json(result: PlanResult, indent: int | None = 2) -> str:
    """:func:`to_dict` as JSON text; the same result gives byte-identical text."""
    return json.dumps(to_dict(result), indent=indent, ensure_ascii=False)


def tokens_line(req) -> str:
    """What one optimizer step processes, and how much of it is real tokens (packed or padded)."""
    per_step = req.gbs * req.seq_len
    if req.packed_sequence:
        return (f"Tokens: {req.mbs} packed sequence{'s' if req.mbs != 1 else ''} x {req.seq_len} per micro-batch, "
                f"{per_step:,} per step (several rows per sequence; only the unfilled tail of a pack is padding)")
    return (f"Tokens: up to {req.mbs} rows x {req.seq_len} per micro-batch, {per_step:,} per step as padded "
            "(each micro-batch is padded to its longest row; model.data.train_ds.packed_sequence=true avoids it)")


def to_text(result: PlanResult, max_alternatives: int = 10) -> str:
    """A human report: the layout, a per-device breakdown, the verdict, findings and alternatives."""
    req, est, gpu = result.request, result.estimate, result.gpu
    a = req.arch
    lines: list[str] = []
    where = (
        f"{req.devices} x {gpu.name}" + (f" x {req.num_nodes} nodes" if req.num_nodes > 1 else "")
        if not gpu.is_cpu
        else f"cpu ({gpu.memory_gib:.1f} GiB host, {req.devices} process{'es' if req.devices > 1 else ''})"
    )
    lines.append(
        f"Plan: {a.name or a.family} ({a.num_params / 1e9:.2f} B params) | backend {req.backend} | "
        f"peft {req.peft} | {where}"
    )
    seq = f"seq {req.seq_len}" + (" packed" if req.packed_sequence else "") + (
        f" (+{req.ptuning_virtual_tokens} virtual tokens)" if req.peft == "ptuning" else ""
    )
    prec = f"precision {req.precision}" + (
        f", O2 {'on' if req.megatron_amp_O2 else 'off'}" if req.backend == "nemo" else ""
    )
    lines.append(
        f"Layout: TP={req.tp} PP={req.pp} DP={req.dp} | MBS={req.mbs} GBS={req.gbs} "
        f"({req.num_microbatches} micro-batch{'es' if req.num_microbatches != 1 else ''}/step) | {seq} | {prec}"
    )
    lines.append(tokens_line(req))
    lines.append("")
    unit = "host RSS per process" if gpu.is_cpu else "per GPU"
    title = "Peak host RSS per process" if gpu.is_cpu else "Memory per GPU"
    if est is not None:
        stage = "" if est.stage == "all" else f", {est.stage} pipeline stage"
        lines.append(f"{title} (GiB{stage})")
        width = max(len(label) for label in COMPONENT_LABELS.values())
        for name in COMPONENTS:
            lines.append(f"  {COMPONENT_LABELS[name]:<{width}}  {est.breakdown[name]:8.2f}")
        lines.append(f"  {'-' * width}  {'-' * 8}")
        lines.append(f"  {'total':<{width}}  {est.per_gpu_gib:8.2f}  of {est.capacity_gib:.2f}")
        lines.append("")
        if result.violations:
            n = len(result.violations)
            memory = (f"memory alone would fit ({est.headroom_gib:.2f} GiB free {unit})" if est.fits
                      else f"memory does not fit either: {est.reason}")
            lines.append(f"Verdict: REFUSED - {n} rule error{'s' if n > 1 else ''} (below); {memory}")
        elif est.fits:
            lines.append(
                f"Verdict: FITS - {est.headroom_gib:.2f} GiB free {unit} "
                f"(safety margin {req.headroom:.0%} = {est.margin_gib:.2f} GiB)"
            )
        else:
            lines.append(f"Verdict: DOES NOT FIT - {est.reason}")
    elif result.violations:
        lines.append("Verdict: REFUSED - invalid request (errors below)")
    else:
        lines.append("Verdict: no estimate (invalid request)")
    if result.violations:
        lines.append("")
        lines.append("Errors:")
        lines.extend(f"  - {v}" for v in result.violations)
    if result.warnings:
        lines.append("")
        lines.append("Warnings:")
        lines.extend(f"  - {v}" for v in result.warnings)
    if est is not None and est.notes:
        lines.append("")
        lines.append("Assumptions:")
        lines.extend(f"  - {n}" for n in est.notes)
    if result.alternatives:
        lines.append("")
        lines.append(f"Alternatives on the same {'host' if gpu.is_cpu else 'GPUs'} (best first):")
        lines.append(f"  {'TP':>3} {'PP':>3} {'DP':>3} {'MBS':>4} {'GiB':>7}  verdict")
        for alt in result.alternatives[:max_alternatives]:
            verdict = "ok" if alt.ok else alt.reason
            lines.append(f"  {alt.tp:>3} {alt.pp:>3} {alt.dp:>3} {alt.mbs:>4} {alt.per_gpu_gib:>7.2f}  {verdict}")
        rest = len(result.alternatives) - max_alternatives
        if rest > 0:
            lines.append(f"  ... {rest} more (see --json)")
        best = result.best
        lines.append("")
        if best is None:
            lines.append(f"No layout of this job fits on {'this host' if gpu.is_cpu else 'these GPUs'}.")
        elif (best.tp, best.pp, best.mbs) == (req.tp, req.pp, req.mbs):
            lines.append(f"Best layout is the requested one: {best.overrides()}")
        else:
            lines.append(f"Best feasible: {best.overrides()}")
    if result.levers:
        lines.append("")
        lines.append("Levers (one change each, with its best layout):")
        for lv in result.levers:
            mark = "fits" if lv.ok else "still too big"
            lines.append(f"  - {lv.overrides}  -> {lv.per_gpu_gib:.2f} GiB, {mark}: {lv.why}")
    return "\n".join(lines)
