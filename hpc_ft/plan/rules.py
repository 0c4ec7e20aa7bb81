"""Parallelism and precision rules checked before submission, as pure functions returning `Violation`s.

Each rule returns a list (empty when satisfied) of :class:`Violation` naming the override key,
the value, the rule (NeMo's own message where NeMo enforces it, reference notes §1.10) and a
fix. ``severity='error'`` means NeMo/HF would refuse or crash; ``'warning'`` means it runs but
is slow, wasteful or surprising (bf16 on V100 ran to completion in the reference job, so it is
a warning). :func:`check` runs them all.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpc_ft.errors import UserError, did_you_mean
from hpc_ft.plan import adapters
from hpc_ft.plan.gpus import Gpu
from hpc_ft.plan.request import (
    BACKENDS,
    HF_ATTENTION,
    HF_PEFT_SCHEMES,
    OPTIMIZERS,
    PEFT_SCHEMES,
    PRECISIONS,
    QUANTIZATIONS,
    RECOMPUTE,
    WEIGHT_DTYPES,
    PlanRequest,
    precision_dtype,
)

#: The override keys the messages use (NeMo's names), one source of truth for the planner.
KEYS = {
    "backend": "backend",
    "gpu": "cluster.gpu.model",
    "devices": "trainer.devices",
    "num_nodes": "trainer.num_nodes",
    "tp": "model.tensor_model_parallel_size",
    "pp": "model.pipeline_model_parallel_size",
    "virtual_pipeline": "model.virtual_pipeline_model_parallel_size",
    "mbs": "model.micro_batch_size",
    "gbs": "model.global_batch_size",
    "seq_len": "model.data.train_ds.max_seq_length",
    "packed_sequence": "model.data.train_ds.packed_sequence",
    "precision": "trainer.precision",
    "o2": "model.megatron_amp_O2",
    "peft_scheme": "model.peft.peft_scheme",
    "lora_targets": "model.peft.lora_tuning.target_modules",
    "lora_r": "model.peft.lora_tuning.adapter_dim",
    "optimizer": "model.optim.name",
    "sequence_parallel": "model.sequence_parallel",
    "recompute": "model.activations_checkpoint_granularity",
    "gradient_checkpointing": "model.activations_checkpoint_granularity",
    "quantization": "peft",
    "hf_attention": "attn_implementation",
    "flash_attention": "backend.env.NVTE_FLASH_ATTN",
    "hf_weights_dtype": "hf_weights_dtype",
    "headroom": "plan.headroom",
}


@dataclass(frozen=True)
class Violation:
    """One broken rule: the key and value, the rule as the framework states it, and a fix."""

    key: str
    value: object
    rule: str
    fix: str
    severity: str = "error"  # 'error' or 'warning'

    def __str__(self) -> str:
        return f"{self.key}={_show(self.value)}: {self.rule}. Fix: {self.fix}"

    def as_dict(self) -> dict:
        return {
            "severity": self.severity,
            "key": self.key,
            "value": _jsonable(self.value),
            "rule": self.rule,
            "fix": self.fix,
        }


def _show(value: object) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def _jsonable(value: object):
    if isinstance(value, tuple):
        return list(value)
    if value is None or isinstance(value, (bool, int, float, str, list)):
        return value
    return str(value)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _err(key: str, value, rule: str, fix: str) -> Violation:
    return Violation(KEYS.get(key, key), value, rule, fix, "error")


def _warn(key: str, value, rule: str, fix: str) -> Violation:
    return Violation(KEYS.get(key, key), value, rule, fix, "warning")


# ---- value checks ---------------------------------------------------------------------------
def check_values(req: PlanRequest, gpu: Gpu | None = None) -> list[Violation]:
    """Field values are in their sets and sizes are positive."""
    out: list[Violation] = []
    for name in ("devices", "num_nodes", "tp", "pp", "mbs", "gbs", "seq_len"):
        v = getattr(req, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            out.append(_err(name, v, "must be a positive integer", f"set {KEYS.get(name, name)} to 1 or more"))
    choices = (
        ("backend", req.backend, BACKENDS),
        ("precision", str(req.precision), PRECISIONS),
        ("peft_scheme", req.peft, PEFT_SCHEMES),
        ("recompute", req.recompute, RECOMPUTE),
        ("quantization", req.quantization, QUANTIZATIONS),
        ("hf_attention", req.hf_attention, HF_ATTENTION),
        ("hf_weights_dtype", req.hf_weights_dtype, WEIGHT_DTYPES),
    )
    for name, value, allowed in choices:
        if value not in allowed:
            shown = [str(a) for a in allowed if a is not None]
            out.append(_err(
                name, value, f"unknown value; allowed: {', '.join(shown)}" + (", null" if None in allowed else ""),
                f"use one of the allowed values.{did_you_mean(str(value), shown)}".strip(),
            ))
    if str(req.optimizer).lower() not in OPTIMIZERS:
        out.append(_warn(
            "optimizer", req.optimizer, "optimizer unknown to the memory model (Adam states, 8 B/param, assumed)",
            f"use one of {', '.join(OPTIMIZERS)} for an exact estimate",
        ))
    if not 0.0 <= req.headroom < 0.9:
        out.append(_err("headroom", req.headroom, "safety margin must be a fraction in [0, 0.9)", "use e.g. 0.1 (10 %)"))
    return out


# ---- parallel layout ------------------------------------------------------------------------
def check_devices(req: PlanRequest, gpu: Gpu) -> list[Violation]:
    """trainer.devices must not exceed the GPUs a node has."""
    if not gpu.is_cpu and req.devices > req.gpus_per_node:
        return [_err(
            "devices", req.devices, f"a node of this cluster has {req.gpus_per_node} GPUs",
            f"trainer.devices={req.gpus_per_node} and trainer.num_nodes="
            f"{-(-req.world_size // req.gpus_per_node)}",
        )]
    return []


def tp_choices(req: PlanRequest, pp: int | None = None) -> list[int]:
    """TP values that work for this model and job: divide the attention and KV heads, stay inside one
    node (at most the GPUs a node gives the job) and, with PP, divide the world size."""
    a, pp = req.arch, req.pp if pp is None else pp
    per_node = max(1, min(req.devices, req.gpus_per_node) if req.gpus_per_node else req.devices)
    ws = max(1, req.world_size)
    return [
        d for d in range(1, per_node + 1)
        if a.heads % d == 0 and a.kv_heads % d == 0 and ws % (d * max(1, pp)) == 0
    ]


def pp_choices(req: PlanRequest, tp: int | None = None) -> list[int]:
    """PP values that work for this model and job: divide the layer count and, with TP, the world size."""
    tp = req.tp if tp is None else tp
    ws = max(1, req.world_size)
    return [d for d in _divisors(req.arch.num_layers) if ws % (max(1, tp) * d) == 0]


def _choices(values: list[int]) -> str:
    return "{" + ",".join(map(str, values)) + "}"


def check_world_size(req: PlanRequest, gpu: Gpu | None = None) -> list[Violation]:
    """world_size (devices x nodes) must be divisible by TP x PP; the message blames the factor that breaks it."""
    ws, tp, pp = req.world_size, req.tp, req.pp
    if tp < 1 or pp < 1 or ws % (tp * pp) == 0:
        return []
    rule = (f"world_size: {ws} must be divisible by tensor_model_parallel_size: {tp} times "
            f"pipeline_model_parallel_size {pp}")
    grow = f"or set trainer.devices x trainer.num_nodes to a multiple of {tp * pp}"
    if ws % pp:  # PP alone does not divide the GPUs: it is PP's fault, whatever TP is
        pps = pp_choices(req, tp=1)
        return [_err("pp", pp, rule, f"with trainer.devices={req.devices} trainer.num_nodes={req.num_nodes} use "
                     f"{KEYS['pp']} in {_choices(pps)}, {grow}")]
    tps = tp_choices(req)
    fix = f"with trainer.devices={req.devices} trainer.num_nodes={req.num_nodes} use {KEYS['tp']} in {_choices(tps)}, {grow}" \
        if tps else grow.removeprefix("or ")
    return [_err("tp", tp, rule, fix)]


def check_batch(req: PlanRequest, gpu: Gpu | None = None) -> list[Violation]:
    """global_batch_size must be divisible by micro_batch_size x data-parallel size."""
    if req.mbs < 1 or req.gbs < 1 or req.tp * req.pp < 1:
        return []
    dp = req.dp
    unit = req.mbs * dp
    if req.gbs % unit == 0:
        return []
    lower = max(unit, req.gbs // unit * unit)
    mbss = [m for m in _divisors(req.gbs) if (req.gbs // m) % dp == 0]
    return [_err(
        "gbs", req.gbs,
        f"`global_batch_size` ({req.gbs}) is not divisible by `micro_batch_size ({req.mbs}) x "
        f"data_parallel_size ({dp})`",
        f"model.global_batch_size={lower} or {lower + unit} (a multiple of {req.mbs} x {dp})"
        + (f", or model.micro_batch_size in {{{','.join(map(str, mbss))}}}" if mbss else ""),
    )]


def check_heads(req: PlanRequest, gpu: Gpu | None = None) -> list[Violation]:
    """Attention heads and KV heads (num_query_groups) must be divisible by TP; the fix offers only TP
    values that also fit the node and the job."""
    a, tp = req.arch, req.tp
    if tp < 1:
        return []
    out = []
    fix = f"{KEYS['tp']} in {_choices(tp_choices(req))}"
    if a.heads % tp:
        out.append(_err("tp", tp, f"num_attention_heads {a.heads} is not divisible by {tp}", fix))
    elif a.kv_heads % tp:
        out.append(_err("tp", tp, f"num_query_groups (KV heads) {a.kv_heads} is not divisible by {tp}", fix))
    return out


def check_pipeline(req: PlanRequest, gpu: Gpu | None = None) -> list[Violation]:
    """Megatron needs num_layers divisible by PP; PEFT refuses virtual pipeline."""
    out = []
    L = req.arch.num_layers
    fix = f"{KEYS['pp']} in {_choices(pp_choices(req))}"
    if req.pp > L:
        out.append(_err(
            "pp", req.pp, f"pipeline_model_parallel_size {req.pp} is larger than the model's {L} layers "
            "(every pipeline stage needs at least one layer)", fix,
        ))
    elif req.pp >= 1 and L % req.pp:
        out.append(_err(
            "pp", req.pp, f"num_layers {L} must be divisible by pipeline_model_parallel_size {req.pp}", fix,
        ))
    if req.virtual_pipeline and req.peft != "none":
        out.append(_err(
            "virtual_pipeline", req.virtual_pipeline,
            "virtual pipeline parallel is not supported for PEFT (NeMo add_adapter)",
            "remove model.virtual_pipeline_model_parallel_size (set it to null)",
        ))
    return out


def check_tp_within_node(req: PlanRequest, gpu: Gpu | None = None) -> list[Violation]:
    """The multi-node layout: tensor parallel stays inside a node, data (or pipeline) parallel goes across nodes.

    TP all-reduces activations in every layer, forward and backward; inside a node that traffic stays on
    NVLink/PCIe, across nodes it crosses the network, which is many times slower. Refused (an error: the
    job is not submitted unless --force) when TP is larger than a node's share of the job.
    """
    per_node = min(req.devices, req.gpus_per_node)
    if req.tp > per_node and req.num_nodes > 1:
        return [_err(
            "tp", req.tp,
            f"tensor parallel {req.tp} spans nodes ({per_node} GPUs per node x {req.num_nodes} nodes): every "
            "layer all-reduces its activations over the inter-node network, many times slower than inside "
            "a node",
            f"keep model.tensor_model_parallel_size <= {per_node} (TP inside a node) and let data parallel (or "
            f"model.pipeline_model_parallel_size) span the {req.num_nodes} nodes; --force submits it anyway",
        )]
    return []


def check_sequence_parallel(req: PlanRequest, gpu: Gpu | None = None) -> list[Violation]:
    """sequence_parallel needs TP > 1 (NeMo turns it off otherwise)."""
    if req.sequence_parallel and req.tp <= 1:
        return [_warn(
            "sequence_parallel", True, "sequence parallel needs tensor parallel > 1; NeMo turns it off at TP=1",
            "set model.sequence_parallel=False, or use model.tensor_model_parallel_size > 1",
        )]
    return []


# ---- precision ------------------------------------------------------------------------------
def check_precision(req: PlanRequest, gpu: Gpu) -> list[Violation]:
    """fp16 + O2 refused; bf16 on a GPU without bf16 warned; fp16 on CPU refused (hf)."""
    out = []
    dtype = precision_dtype(req.precision)
    if req.backend == "nemo" and req.megatron_amp_O2 and dtype == "fp16":
        out.append(_err(
            "o2", True,
            "fp16 training is not yet supported with O2. Please set megatron_amp_O2 to False in the model config",
            "model.megatron_amp_O2=False (or trainer.precision=bf16 on a GPU with bf16)",
        ))
    if req.backend == "nemo" and req.megatron_amp_O2 and dtype == "fp32":
        out.append(_warn(
            "o2", True, "megatron_amp_O2 has no effect with trainer.precision=32",
            "model.megatron_amp_O2=False",
        ))
    if dtype == "bf16" and not gpu.bf16 and not gpu.is_cpu:
        out.append(_warn(
            "precision", req.precision,
            f"{gpu.name} (sm{gpu.compute_capability[0]}{gpu.compute_capability[1]}) has no bf16 hardware; "
            "bf16 runs through emulated, slower paths",
            "trainer.precision=16 (fp16 with loss scaling"
            + (", keep model.megatron_amp_O2=False)" if req.backend == "nemo" else ")"),
        ))
    if gpu.is_cpu and dtype == "fp16":
        out.append(_err(
            "precision", req.precision, "fp16 training is not supported on CPU",
            "trainer.precision=32 (or bf16)",
        ))
    return out


# ---- backends and methods -------------------------------------------------------------------
def check_backend(req: PlanRequest, gpu: Gpu) -> list[Violation]:
    """Backend-specific limits: NeMo needs GPUs; hf is data parallel only, LoRA or full."""
    out = []
    if req.backend == "nemo":
        if gpu.is_cpu:
            out.append(_err(
                "gpu", "cpu", "the nemo backend needs NVIDIA GPUs (Megatron/TransformerEngine)",
                "pick a GPU partition (cluster.gpu.model=V100-16GB, ...) or backend=hf for a CPU run",
            ))
        if req.quantization:
            out.append(_err(
                "quantization", "qlora", "4-bit quantisation (QLoRA) is an hf-backend (bitsandbytes) feature",
                "peft=lora, or backend=hf",
            ))
    if req.backend == "hf":
        if req.tp > 1 or req.pp > 1:
            key, val = ("tp", req.tp) if req.tp > 1 else ("pp", req.pp)
            out.append(_err(
                key, val, "the hf backend runs data parallel only (torchrun + DDP); tensor/pipeline "
                "parallel is not supported with the HF Trainer and peft",
                "model.tensor_model_parallel_size=1 model.pipeline_model_parallel_size=1, or backend=nemo",
            ))
        if req.peft not in HF_PEFT_SCHEMES and req.peft in PEFT_SCHEMES:
            out.append(_err(
                "peft_scheme", req.peft, f"the hf backend supports {', '.join(HF_PEFT_SCHEMES)}",
                "model.peft.peft_scheme=lora, or backend=nemo",
            ))
        if req.quantization == "4bit":
            if req.peft == "none":
                out.append(_err(
                    "quantization", "qlora", "4-bit weights cannot be trained directly (QLoRA trains adapters)",
                    "peft=qlora trains LoRA adapters: keep model.peft.peft_scheme=qlora, or use peft=lora",
                ))
            if gpu.is_cpu:
                out.append(_err(
                    "quantization", "qlora",
                    f"QLoRA's 4-bit weights (bitsandbytes) need an NVIDIA GPU; cluster.gpu.model={gpu.name} has none",
                    "peft=lora (16/32-bit base weights), or a cluster with GPUs (e.g. cluster=nig)",
                ))
        if req.hf_attention == "flash_attention_2" and not gpu.flash_attention:
            out.append(_err(
                "hf_attention", req.hf_attention, f"FlashAttention-2 needs sm80+; {gpu.name} does not have it",
                "attn_implementation=sdpa",
            ))
    return out


def check_peft(req: PlanRequest, gpu: Gpu | None = None) -> list[Violation]:
    """PEFT limits: no distributed_fused_adam; LoRA target names valid for the backend."""
    out = []
    if req.peft != "none" and str(req.optimizer) == "distributed_fused_adam":
        out.append(_err(
            "optimizer", req.optimizer, "distributed_fused_adam is not supported for PEFT. Please use fused_adam",
            "model.optim.name=fused_adam",
        ))
    if req.peft in ("lora", "sdlora") and req.lora_targets:
        try:
            adapters.lora_shapes(req.arch, tuple(req.lora_targets))
        except UserError as exc:
            out.append(_err("lora_targets", list(req.lora_targets), str(exc).split(": ", 1)[-1], "see the names above"))
            return out
        naming = adapters.target_naming(tuple(req.lora_targets), req.arch)
        want = "hf" if req.backend == "hf" else "nemo"
        if naming != want:
            example = "attention_qkv,attention_dense,mlp_fc1,mlp_fc2" if want == "nemo" else "q_proj,v_proj"
            out.append(_err(
                "lora_targets", list(req.lora_targets),
                f"the {req.backend} backend names LoRA targets the {'NeMo' if want == 'nemo' else 'HF module'} way",
                f"use names like [{example}]",
            ))
    if req.lora_r < 1 and req.peft in ("lora", "sdlora"):
        out.append(_err("lora_r", req.lora_r, "LoRA rank must be >= 1", "model.peft.lora_tuning.adapter_dim=32"))
    return out


def check_sequence(req: PlanRequest, gpu: Gpu) -> list[Violation]:
    """Sequence length beyond the model's positions; flash attention asked for on pre-sm80."""
    out = []
    if req.seq_len > req.arch.max_positions:
        out.append(_err(
            "seq_len", req.seq_len,
            f"longer than the model's max_position_embeddings {req.arch.max_positions}",
            f"model.data.train_ds.max_seq_length={req.arch.max_positions}",
        ))
    if req.backend == "nemo" and req.flash_attention and not gpu.is_cpu and not gpu.flash_attention:
        out.append(_warn(
            "flash_attention", 1, f"{gpu.name} has no flash/fused attention (sm80+); TE falls back to unfused attention",
            "plan with unfused attention (it stores the s x s scores): lower the sequence length or use recompute",
        ))
    return out


def check_packing(req: PlanRequest, gpu: Gpu) -> list[Violation]:
    """NeMo 1.x (24.03-era main) packed sequences: GPTSFTPackedDataset and the THD attention path it feeds."""
    if not (req.packed_sequence and req.backend == "nemo"):
        return []
    out = []
    if req.mbs != 1:
        out.append(_err(
            "mbs", req.mbs, "NeMo: 'Micro batch size must be 1 if using packed sequence' (a pack is the batch)",
            "model.micro_batch_size=1; raise model.data.train_ds.max_seq_length (the pack size) instead",
        ))
    if req.peft == "ptuning":
        out.append(_err(
            "packed_sequence", True, "NeMo: 'P-Tuning with packed sequence is not supported.'",
            "model.data.train_ds.packed_sequence=false, or model.peft.peft_scheme=lora",
        ))
    if req.flash_attention is False or (not gpu.is_cpu and not gpu.flash_attention):
        why = ("NVTE_FLASH_ATTN=0 and NVTE_FUSED_ATTN=0 are set" if req.flash_attention is False
               else f"{gpu.name} has no flash/fused attention (sm80+)")
        out.append(_err(
            "packed_sequence", True,
            f"NeMo passes packed rows to TransformerEngine as THD (cu_seqlens), which needs flash or fused "
            f"attention; {why}",
            "model.data.train_ds.packed_sequence=false (padded batches), or an sm80+ GPU with flash attention on",
        ))
    return out


#: model families NeMo 1.x can convert from HF (``scripts/checkpoint_converters/convert_*_hf_to_nemo.py``)
NEMO_CONVERTIBLE_FAMILIES = ("llama", "mistral")


def check_family(req: PlanRequest, gpu: Gpu | None = None) -> list[Violation]:
    """The nemo backend needs a .nemo checkpoint; NeMo 1.x converts only some HF families."""
    if req.backend == "nemo" and req.arch.family not in NEMO_CONVERTIBLE_FAMILIES:
        return [_warn(
            "backend", "nemo",
            f"NeMo 1.x ships no HF-to-NeMo converter for model_type {req.arch.family}; the job needs "
            "an existing .nemo checkpoint",
            "backend=hf (transformers + peft), or provide a converted .nemo",
        )]
    return []


ALL_RULES = (
    check_family,
    check_devices,
    check_pipeline,  # before the world size: PP beyond the layer count is named as such
    check_world_size,
    check_batch,
    check_heads,
    check_tp_within_node,
    check_sequence_parallel,
    check_precision,
    check_backend,
    check_peft,
    check_sequence,
    check_packing,
)


def check(req: PlanRequest, gpu: Gpu) -> list[Violation]:
    """Every rule, values first; layout rules only once the values are sane."""
    out = check_values(req)
    if any(v.severity == "error" for v in out):
        return out
    for rule in ALL_RULES:
        out.extend(rule(req, gpu))
    return out
