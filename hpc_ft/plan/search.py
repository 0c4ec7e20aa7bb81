"""Search the (TP, PP, MBS) layouts of a job on its GPUs, rank them, and find levers when nothing fits.

:func:`search` keeps the world size (``trainer.devices x trainer.num_nodes``), the global batch
and everything else of the request, and tries every TP and PP that divide the world size (hf:
TP = PP = 1) with every micro-batch size that keeps ``GBS % (MBS x DP) == 0``. Each layout is
checked against the rules and the memory model; infeasible ones carry their reason.

Ranking (best first):

1. runnable (no rule error and fits in memory) before not runnable;
2. TP inside a node before TP across nodes (a cross-node all-reduce per layer is slow);
3. fewer GPUs per model replica (TP x PP), i.e. more data parallel: DP needs one gradient
   all-reduce per step, TP/PP communicate every layer / micro-batch;
4. smaller PP for the same TP x PP: pipeline bubbles cost (PP-1)/micro-batches of the step;
5. larger MBS: better GEMM efficiency and fewer micro-batch launches;
6. less memory per GPU (more headroom).

Not-runnable layouts follow, memory failures (closest to fitting first) before rule errors.

:func:`levers` answers "what would make this request fit?" with a few one-step changes
(recompute, O2 + bf16, more GPUs of the node, QLoRA or gradient checkpointing on hf), each as
overrides of real job keys, with its best layout (the layout search already covers smaller
micro-batches).
"""

from __future__ import annotations

from dataclasses import dataclass

from hpc_ft.plan import memory, rules
from hpc_ft.plan.gpus import Gpu
from hpc_ft.plan.request import PlanRequest, precision_dtype

#: rule checks that depend on the layout (the others do not change across a search)
_LAYOUT_RULES = (
    rules.check_world_size,
    rules.check_batch,
    rules.check_heads,
    rules.check_pipeline,
    rules.check_backend,
    rules.check_tp_within_node,
)


@dataclass(frozen=True)
class Alternative:
    """One layout tried by the search. ``ok`` = no rule error and ``fits`` in memory."""

    tp: int
    pp: int
    mbs: int
    dp: int
    ok: bool
    fits: bool
    per_gpu_gib: float
    reason: str
    cross_node_tp: bool = False

    def overrides(self) -> str:
        """The layout as Hydra overrides (NeMo key names)."""
        return (
            f"{rules.KEYS['tp']}={self.tp} {rules.KEYS['pp']}={self.pp} {rules.KEYS['mbs']}={self.mbs}"
        )

    def sort_key(self) -> tuple:
        if self.ok:
            return (0, self.cross_node_tp, self.tp * self.pp, self.pp, -self.mbs, self.per_gpu_gib)
        rule_failure = self.fits  # fits in memory but broke a rule
        return (1, rule_failure, self.per_gpu_gib, self.tp * self.pp, self.pp, -self.mbs)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _fixed_errors(req: PlanRequest, gpu: Gpu) -> list[rules.Violation]:
    """Rule errors that no layout change can fix (precision, PEFT, optimizer...)."""
    others = [r for r in rules.ALL_RULES if r not in _LAYOUT_RULES]
    return [v for rule in others for v in rule(req, gpu) if v.severity == "error"]


def evaluate(req: PlanRequest, gpu: Gpu, fixed: list[rules.Violation] | None = None) -> Alternative:
    """Rules and memory for one request, as an :class:`Alternative`.

    ``fixed``: errors already known not to depend on the layout (computed once per search).
    """
    if fixed is None:
        fixed = _fixed_errors(req, gpu)
    errors = [v for rule in _LAYOUT_RULES for v in rule(req, gpu) if v.severity == "error"] + list(fixed)
    est = memory.estimate(req, gpu)
    if errors:
        reason = f"{errors[0].key}={errors[0].value}: {errors[0].rule}"
    elif not est.fits:
        usable = est.capacity_gib - est.margin_gib
        reason = f"needs {est.per_gpu_gib:.2f} GiB, {usable:.2f} GiB usable ({est.reason.split(';')[0]})" \
            if "alone" in est.reason else f"needs {est.per_gpu_gib:.2f} GiB, {usable:.2f} GiB usable"
    else:
        reason = ""
    per_node = min(req.devices, req.gpus_per_node)
    return Alternative(
        tp=req.tp,
        pp=req.pp,
        mbs=req.mbs,
        dp=req.dp,
        ok=not errors and est.fits,
        fits=est.fits,
        per_gpu_gib=est.per_gpu_gib,
        reason=reason,
        cross_node_tp=req.num_nodes > 1 and req.tp > per_node,
    )


def candidate_layouts(req: PlanRequest) -> list[tuple[int, int, int]]:
    """(TP, PP, MBS) triples worth trying for the request's world size and global batch."""
    ws = max(1, req.world_size)
    a = req.arch
    if req.backend == "hf":
        tps = [1]
    else:  # only TP values the model's heads allow and PP values its layers allow: nothing broken is offered
        tps = [t for t in _divisors(ws) if a.heads % t == 0 and a.kv_heads % t == 0]
    out = []
    for tp in tps:
        pps = [1] if req.backend == "hf" else [p for p in _divisors(ws // tp) if a.num_layers % p == 0]
        for pp in pps:
            dp = ws // (tp * pp)
            if req.gbs % dp == 0:
                mbss = _divisors(req.gbs // dp)
            else:
                mbss = [req.mbs]  # no MBS can satisfy the batch rule; keep one to report it
            for mbs in mbss:
                out.append((tp, pp, mbs))
    return out


def search(req: PlanRequest, gpu: Gpu, limit: int | None = None) -> list[Alternative]:
    """Every candidate layout, ranked best first (see the module docstring)."""
    fixed = _fixed_errors(req, gpu)
    alts = [evaluate(req.with_(tp=tp, pp=pp, mbs=mbs), gpu, fixed) for tp, pp, mbs in candidate_layouts(req)]
    alts.sort(key=Alternative.sort_key)
    return alts[:limit] if limit else alts


@dataclass(frozen=True)
class Lever:
    """A one-step change to the request, as overrides, with its best layout's estimate."""

    overrides: str
    ok: bool
    per_gpu_gib: float
    why: str


def _best(req: PlanRequest, gpu: Gpu) -> Alternative | None:
    ranked = search(req, gpu)
    return ranked[0] if ranked else None


def levers(req: PlanRequest, gpu: Gpu) -> list[Lever]:
    """One-step changes that could make the request fit; each evaluated with its best layout.

    Every lever is a set of overrides of keys the job config has (they compose with the user's own)."""
    trials: list[tuple[str, PlanRequest, str]] = []
    recompute_key = rules.KEYS["recompute"]
    if req.backend == "nemo":
        if req.recompute != "full":
            trials.append((
                f"{recompute_key}=full",
                req.with_(recompute="full"),
                "recompute every layer in backward: activations shrink to one layer's input each",
            ))
        dtype = precision_dtype(req.precision)
        if not req.megatron_amp_O2 and (dtype == "bf16" or gpu.bf16):
            note = "" if gpu.bf16 else " (bf16 is emulated on this GPU: slower)"
            trials.append((
                f"{rules.KEYS['precision']}=bf16 {rules.KEYS['o2']}=True",
                req.with_(precision="bf16", megatron_amp_O2=True),
                "16-bit weights instead of fp32 and no extra 16-bit copies" + note,
            ))
    else:
        if not req.gradient_checkpointing:
            trials.append((
                f"{recompute_key}=full",
                req.with_(gradient_checkpointing=True),
                "gradient checkpointing: recompute layers in backward, keep only each layer's input",
            ))
        if req.quantization is None and req.peft == "lora" and not gpu.is_cpu:
            trials.append((
                f"{rules.KEYS['quantization']}=qlora",
                req.with_(quantization="4bit"),
                "QLoRA: 4-bit base weights",
            ))
    if not gpu.is_cpu and req.devices < req.gpus_per_node and req.backend == "nemo":
        trials.append((
            f"{rules.KEYS['devices']}={req.gpus_per_node}",
            req.with_(devices=req.gpus_per_node),
            f"use all {req.gpus_per_node} GPUs of the node (more tensor parallel)",
        ))
    out = []
    for overrides, changed, why in trials:
        best = _best(changed, gpu)
        if best is None:
            continue
        layout = best.overrides() if req.backend == "nemo" else f"{rules.KEYS['mbs']}={best.mbs}"
        out.append(Lever(f"{overrides} {layout}", best.ok, best.per_gpu_gib, why))
    out.sort(key=lambda lv: (not lv.ok, lv.per_gpu_gib))
    return out
