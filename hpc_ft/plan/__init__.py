"""The planner: decide before submission whether a fine-tuning job fits in memory and which TP x PP x MBS to use.

Pure Python, no torch: the submit side calls it for every point of a sweep. One entry point::

    from hpc_ft.plan import PlanRequest, plan, load_arch
    result = plan(PlanRequest(arch=load_arch("models/ELYZA-japanese-Llama-2-7b"), gpu="V100-16GB",
                              devices=4, tp=4, mbs=4, gbs=16, seq_len=256, precision="bf16",
                              peft_scheme="ptuning"))
    result.ok, result.per_gpu_gib, to_text(result), to_dict(result)

Modules: ``gpus`` (the GPU catalogue), ``arch`` (model shapes from config.json), ``adapters``
(trainable parameters per PEFT scheme), ``rules`` (NeMo/HF constraints as `Violation`s),
``memory`` (per-GPU breakdown and verdict), ``search`` (ranked layouts and levers), ``report``
(text and JSON).
"""

from __future__ import annotations

from hpc_ft.errors import UserError
from hpc_ft.plan import memory, rules, search
from hpc_ft.plan.arch import ModelArch, arch_from_hf_config, load_arch
from hpc_ft.plan.gpus import GPUS, Gpu, get_gpu
from hpc_ft.plan.memory import COMPONENTS, Estimate
from hpc_ft.plan.report import to_dict, to_json, to_text
from hpc_ft.plan.request import PlanRequest
from hpc_ft.plan.result import PlanResult
from hpc_ft.plan.rules import Violation
from hpc_ft.plan.search import Alternative, Lever

__all__ = [
    "COMPONENTS",
    "GPUS",
    "Alternative",
    "Estimate",
    "Gpu",
    "Lever",
    "ModelArch",
    "PlanRequest",
    "PlanResult",
    "Violation",
    "arch_from_hf_config",
    "estimate",
    "get_gpu",
    "load_arch",
    "plan",
    "to_dict",
    "to_json",
    "to_text",
]


def estimate(request: PlanRequest) -> Estimate:
    """Only the memory estimate of the request as given (no rules, no search): the fast path."""
    gpu = get_gpu(request.gpu, cpu_memory_gib=request.cpu_memory_gib)
    return memory.estimate(request, gpu)


def plan(request: PlanRequest, *, alternatives: bool = True, suggest: bool = True) -> PlanResult:
    """Check the rules, estimate memory, and (optionally) rank alternative layouts and levers.

    ``alternatives``: search the (TP, PP, MBS) layouts of the same job on the same GPUs.
    ``suggest``: when the request is not ok, evaluate one-step levers (recompute, O2, more GPUs...).
    Raises :class:`UserError` only for an unknown GPU name; everything else is reported.
    """
    gpu = get_gpu(request.gpu, cpu_memory_gib=request.cpu_memory_gib)
    found = rules.check(request, gpu)
    errors = tuple(v for v in found if v.severity == "error")
    warnings = tuple(v for v in found if v.severity != "error")
    values_ok = not any(v for v in rules.check_values(request, gpu) if v.severity == "error")
    est = None
    if values_ok:
        try:
            est = memory.estimate(request, gpu)
        except UserError as exc:  # e.g. an unknown LoRA target: already a violation
            if not errors:
                errors = (Violation("plan", "", str(exc), "fix the request"),)
    alts: tuple = ()
    levers: tuple = ()
    if values_ok and est is not None:
        if alternatives:
            alts = tuple(search.search(request, gpu))
        if suggest and not (est.fits and not errors):
            levers = tuple(search.levers(request, gpu))
    return PlanResult(
        request=request,
        gpu=gpu,
        estimate=est,
        violations=errors,
        warnings=warnings,
        alternatives=alts,
        levers=levers,
    )
