"""Per-GPU (or per-process host) memory of a fine-tuning job, by component, and the fit verdict.

Two backends:

``nemo`` (NeMo 1.x, Megatron-core + TransformerEngine), per GPU of the worst pipeline stage:

* **weights**: 4 B/param with ``megatron_amp_O2=False`` (O1 keeps fp32 params) or precision 32;
  2 B/param with O2 and a 16-bit precision. Layers are split 1/TP and ``ceil(L/PP)`` per stage;
  the embedding sits on the first stage, the final norm and LM head on the last (a tied
  embedding is duplicated on the last stage when PP > 1); the vocabulary is padded to a
  multiple of 128 x TP.
* **weight_copies**: under O1 with a 16-bit precision, autocast/TE cast each fp32 weight to
  16-bit and keep the copy for backward: 2 B per linear weight of the stage, per micro-batch in
  flight, plus the LM head's copy on the last stage. (Inferred size, reference notes §4.1.)
* **trainable_params / gradients / optimizer_states**: adapters are fp32 params (O1) or 16-bit
  params with fp32 master copies (O2); grads fp32; Adam m and v fp32 (8 B). Full fine-tuning and
  'selective' add fp32 grads and Adam states to the base weights they train;
  ``distributed_fused_adam`` shards optimizer states over DP (full fine-tuning only).
* **activations**: Korthikanti et al. 2022, per layer and micro-batch, generalised to GQA and
  SwiGLU: ``10 sbh`` replicated (norm and GEMM inputs; 8 without dropout masks) plus Q, K, V,
  core output and MLP internals split by TP; unfused attention (V100, or flash disabled) stores
  the ``s x s`` softmax (``2as²b``; ``5as²b`` with dropout); sequence parallel divides the
  replicated part by TP too; selective recompute drops the ``s²`` terms; full recompute keeps each
  layer's input, plus one layer's working set where it exceeds the loss buffers (both peaks
  happen at different times). The first stage holds ``min(PP, micro-batches)``
  micro-batches in flight (1F1B). P-tuning adds its virtual tokens to the sequence.
* **logits**: vocab-parallel cross entropy on the last stage: the 16-bit logits, an fp32 copy
  and the fp32 softmax, ``10 B x s x b x V/TP`` at peak.
* **framework**: CUDA context and library workspaces (GPU catalogue), NeMo/TE extras, NCCL
  buffers when more than one GPU talks.

``hf`` (transformers + peft, data parallel; TP = PP = 1): weights by dtype (4-bit NF4 for the
linear layers under QLoRA, with quantisation constants), autocast weight copies when fp32
weights train in 16-bit, LoRA params + fp32 grads + AdamW states, activations of the HF
modules (RMSNorm/LayerNorm keep an fp32 copy of their input; SDPA keeps Q, K, V and its output;
eager attention keeps the fp32 softmax; the MLP keeps its inner activations; inputs of LoRA
targets, or of every linear layer under full fine-tuning and 4-bit), or, with gradient checkpointing, each layer's input plus whatever one recomputed
layer needs beyond the (by then freed) loss buffers;
logits (16/32-bit logits, fp32 log-softmax and its gradient at the start of backward); the CUDA
context, or on ``cpu`` the resident size of the Python + torch + transformers runtime and the
heap glibc keeps after freeing activation buffers. On ``cpu`` the figures estimate the peak
resident set (RSS) of one training process, in the steady state after a few steps.

Constants marked *calibrated* were fitted with ``bench/bench_plan_calibration.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hpc_ft.plan import adapters
from hpc_ft.plan.gpus import Gpu
from hpc_ft.plan.request import PlanRequest, precision_bits, precision_dtype

GIB = float(2**30)

#: Component names, in the order every breakdown lists them (a documented interface).
COMPONENTS = (
    "weights",
    "weight_copies",
    "trainable_params",
    "gradients",
    "optimizer_states",
    "activations",
    "logits",
    "framework",
)

COMPONENT_LABELS = {
    "weights": "base weights",
    "weight_copies": "16-bit weight copies (autocast/TE)",
    "trainable_params": "trainable parameters",
    "gradients": "gradients",
    "optimizer_states": "optimizer states",
    "activations": "activations",
    "logits": "logits / loss",
    "framework": "framework (CUDA context, NCCL, runtime)",
}

# ---- constants of the model -----------------------------------------------------------------
#: NeMo/Lightning/TE extras on top of the CUDA context (cuBLAS workspaces, TE buffers), GiB.
NEMO_EXTRA_GIB = 0.35
#: NCCL communicator buffers when more than one GPU takes part, GiB.
NCCL_GIB = 0.30
#: HF on a GPU: workspaces on top of the CUDA context, GiB.
HF_GPU_EXTRA_GIB = 0.15
#: HF on the CPU: resident size of Python + torch + transformers + peft (+ Trainer, accelerate)
#: after import, GiB. *calibrated*: 0.38 measured on the dev host (torch 2.13 CPU,
#: transformers 5.23), rounded up for datasets/tokenizers.
HF_CPU_RUNTIME_GIB = 0.40
#: HF on the CPU: autograd graph, oneDNN scratch and Python objects of a training step, GiB. *calibrated*.
HF_CPU_STEP_GIB = 0.03
#: HF on the CPU: heap that glibc keeps per byte of live activations + logits. glibc raises its
#: mmap threshold (up to 32 MiB) each time a large buffer is freed, so later activation buffers
#: come from the heap and are not returned; the RSS grows for ~3 steps and plateaus 0.56-0.91x
#: the live activation memory above it, varying run to run. *calibrated*: 0.7 (leans to
#: over-estimating). With a fixed threshold (``MALLOC_MMAP_THRESHOLD_`` exported,
#: ``PlanRequest.cpu_fixed_mmap_threshold``) it is 0 and the estimate follows live memory.
HF_CPU_HEAP_SLACK = 0.7
#: Bytes per logit element at the loss peak: NeMo/Megatron vocab-parallel CE (16-bit logits,
#: fp32 copy, fp32 softmax) and HF (fp32 log-softmax, its input gradient and the output gradient).
NEMO_LOGIT_BYTES_16 = 10
HF_LOGIT_BYTES = 12

#: Adam-type optimizer state bytes per trainable fp32 parameter (m and v).
_OPT_STATE_BYTES = {
    "fused_adam": 8, "adam": 8, "adamw": 8, "adamw_torch": 8, "distributed_fused_adam": 8,
    "adamw_8bit": 2, "sgd": 0,
}


def optimizer_state_bytes(optimizer: str) -> int:
    """Bytes of optimizer state per trainable parameter (Adam: m and v in fp32 = 8)."""
    return _OPT_STATE_BYTES.get(str(optimizer).lower(), 8)


@dataclass(frozen=True)
class Estimate:
    """The memory verdict for one GPU (or one host process on ``cpu``).

    ``components`` are GiB in :data:`COMPONENTS` order; ``per_gpu_gib`` is their sum.
    ``fits`` is ``per_gpu_gib <= capacity_gib * (1 - headroom)``; ``headroom_gib`` is the memory
    left free (``capacity_gib - per_gpu_gib``, negative when short) and ``margin_gib`` the part of
    it the safety margin asks for. ``stage`` is the pipeline stage reported ('all' when PP = 1).
    """

    components: tuple[tuple[str, float], ...]
    per_gpu_gib: float
    capacity_gib: float
    margin_gib: float
    headroom_gib: float
    fits: bool
    stage: str
    reason: str
    notes: tuple[str, ...]

    @property
    def breakdown(self) -> dict[str, float]:
        return dict(self.components)


# ---- helpers --------------------------------------------------------------------------------
def _effective_seq(req: PlanRequest) -> int:
    """p-tuning prepends its virtual tokens to every sequence."""
    if req.peft == "ptuning":
        return req.seq_len + req.ptuning_virtual_tokens
    return req.seq_len


def _lora_targets(req: PlanRequest) -> tuple[str, ...]:
    if req.lora_targets:
        return tuple(req.lora_targets)
    return adapters.default_lora_targets(req.arch, req.backend)


def _trainable(req: PlanRequest) -> adapters.TrainableCount:
    scheme = req.peft
    return adapters.trainable_count(
        req.arch,
        scheme,
        lora_r=req.lora_r,
        lora_targets=_lora_targets(req) if scheme in ("lora", "sdlora") else (),
        adapter_dim=req.adapter_dim,
        virtual_tokens=req.ptuning_virtual_tokens,
        bottleneck_dim=req.ptuning_bottleneck_dim,
        embedding_dim=req.ptuning_embedding_dim,
    )


def _verdict(
    parts: dict[str, float], capacity_gib: float, headroom: float, stage: str, notes: list[str],
    device: str, labels: dict[str, str] | None = None,
) -> Estimate:
    components = tuple((name, parts.get(name, 0.0) / GIB) for name in COMPONENTS)
    total = sum(v for _, v in components)
    margin = capacity_gib * headroom
    free = capacity_gib - total
    fits = total <= capacity_gib - margin
    reason = ""
    if not fits:
        biggest, size = max(components, key=lambda kv: kv[1])
        label = (labels or {}).get(biggest) or COMPONENT_LABELS[biggest]
        if size > capacity_gib:
            reason = (
                f"{label} alone need {size:.2f} GiB per device, more than the "
                f"{capacity_gib:.2f} GiB of a {device}"
            )
        else:
            reason = (
                f"needs {total:.2f} GiB per device but a {device} has {capacity_gib:.2f} GiB "
                f"({capacity_gib - margin:.2f} GiB after the {headroom:.0%} safety margin); "
                f"largest part: {label} {size:.2f} GiB"
            )
    return Estimate(components, total, capacity_gib, margin, free, fits, stage, reason, tuple(notes))


# ---- NeMo -----------------------------------------------------------------------------------
def _nemo_layer_activation_bytes(req: PlanRequest, s: int, flash: bool) -> tuple[float, float]:
    """(bytes stored per layer for backward, bytes of one layer's full working set) for one micro-batch."""
    a = req.arch
    b, t = req.mbs, req.tp
    h, qd, kvd, f = a.hidden, a.q_dim, a.kv_dim, a.ffn_hidden
    e = 4 if precision_bits(req.precision) == 32 else 2
    mask = 1 if req.dropout > 0 else 0
    sb = s * b
    # replicated across TP (unless sequence parallel): two norm inputs, QKV and MLP GEMM inputs,
    # the attention-output and MLP dropout masks
    replicated = sb * (4 * e * h + 2 * mask * h)
    # split by TP: Q, K, V, the core-attention output (out-proj input), MLP internals
    kv_stored = 2 * kvd
    if not flash and a.kv_heads != a.heads:
        kv_stored += 2 * qd  # unfused GQA expands K and V to every head and keeps both
    attention = sb * e * (qd + kv_stored + qd)
    mlp = sb * e * (3 * f if a.gated_mlp else 2 * f)
    split = attention + mlp
    # the s x s terms: unfused attention keeps the softmax (and with dropout its mask and output)
    if flash:
        quadratic = 4.0 * a.heads * sb  # log-sum-exp only
    else:
        quadratic = float((e + mask * (1 + e)) * a.heads * s * sb)
    if req.sequence_parallel and t > 1:
        full_layer = (replicated + split + quadratic) / t
    else:
        full_layer = replicated + (split + quadratic) / t
    recompute = req.recompute
    if recompute == "selective" and not flash:
        stored = full_layer - (quadratic / t)
    elif recompute == "full":
        stored = e * sb * h / (t if (req.sequence_parallel and t > 1) else 1)
    else:
        stored = full_layer
    return stored, full_layer


def estimate_nemo(req: PlanRequest, gpu: Gpu) -> Estimate:
    """Per-GPU memory of a NeMo 1.x PEFT/SFT job on the worst pipeline stage."""
    a = req.arch
    t, p = max(1, req.tp), max(1, req.pp)
    notes: list[str] = []
    bits = precision_bits(req.precision)
    o2 = bool(req.megatron_amp_O2) and bits == 16
    w_bytes = 2 if o2 else 4
    if bits == 16 and not o2:
        notes.append("megatron_amp_O2=False: NeMo 1.x keeps the base weights in fp32 (4 B/param)")
    vpad = a.padded_vocab(t)
    layers_stage = math.ceil(a.num_layers / p)
    layer_w = (a.layer_linear_params + a.layer_bias_params) / t + 2 * a.norm_params
    vocab_w = vpad * a.hidden / t
    flash = gpu.flash_attention if req.flash_attention is None else (req.flash_attention and gpu.flash_attention)
    if not flash:
        notes.append("unfused attention: the s x s softmax is stored for backward")
    s = _effective_seq(req)
    stored_layer, working_layer = _nemo_layer_activation_bytes(req, s, flash)
    n_micro = req.num_microbatches
    in_flight_first = min(p, n_micro)

    tc = _trainable(req)
    scheme = req.peft
    # bytes per *new* (adapter) parameter: params, grads, optimizer states
    opt = optimizer_state_bytes(req.optimizer)
    new_param_b, new_grad_b, new_opt_b = (2, 4, opt + 4) if o2 else (4, 4, opt)
    # bytes per *base* parameter that trains (selective / none): grads and optimizer states
    base_grad_b, base_opt_b = (4, opt + 4) if o2 else (4, opt)
    if req.optimizer == "distributed_fused_adam" and scheme == "none":
        base_opt_b = base_opt_b / req.dp
        notes.append(f"distributed optimizer: optimizer states sharded over DP={req.dp}")

    def stage(first: bool, last: bool) -> dict[str, float]:
        in_flight = in_flight_first if first else 1
        weights = layers_stage * layer_w
        copies = 0.0
        if bits == 16 and not o2:
            copies = 2 * layers_stage * (a.layer_linear_params / t) * in_flight
        if first:
            weights += vocab_w
        if last:
            weights += a.norm_params
            if not a.tied_embeddings or p > 1:
                weights += vocab_w
            if bits == 16 and not o2:
                copies += 2 * vocab_w
        new_params = layers_stage * tc.new_per_layer / t
        base_trainable = layers_stage * tc.base_per_layer / t
        if first:
            new_params += tc.new_first_stage_split / t + tc.new_first_stage_replicated
            if tc.base_embedding:
                base_trainable += vocab_w
        if last and tc.base_output and (not a.tied_embeddings or p > 1):
            base_trainable += vocab_w
        activations = stored_layer * layers_stage * in_flight
        logits = 0.0
        if last:
            logit_b = NEMO_LOGIT_BYTES_16 if bits == 16 else 8
            logits = logit_b * s * req.mbs * vpad / t
        if req.recompute == "full":
            # one layer is recomputed at a time, after the loss buffers are freed: the two peaks
            # do not add up
            activations += max(0.0, working_layer - logits)
        framework = (gpu.cuda_context_gib + NEMO_EXTRA_GIB + (NCCL_GIB if req.world_size > 1 else 0.0)) * GIB
        return {
            "weights": weights * w_bytes,
            "weight_copies": copies,
            "trainable_params": new_params * new_param_b,
            "gradients": new_params * new_grad_b + base_trainable * base_grad_b,
            "optimizer_states": new_params * new_opt_b + base_trainable * base_opt_b,
            "activations": activations,
            "logits": logits,
            "framework": framework,
        }

    if p == 1:
        parts, name = stage(True, True), "all"
    else:
        first, last = stage(True, False), stage(False, True)
        parts, name = (first, "first") if sum(first.values()) >= sum(last.values()) else (last, "last")
        notes.append(f"pipeline: worst stage is the {name} ({in_flight_first} micro-batches in flight on the first)")
    if req.peft == "ptuning":
        notes.append(f"p-tuning: sequence length {req.seq_len} + {req.ptuning_virtual_tokens} virtual tokens")
    why = "trainer.precision=32" if bits == 32 else f"model.megatron_amp_O2={bool(req.megatron_amp_O2)}"
    labels = {"weights": f"base weights ({'fp32' if w_bytes == 4 else '16-bit'}, {why})"}
    return _verdict(parts, gpu.memory_gib, req.headroom, name, notes, gpu.name, labels)


# ---- HF (transformers + peft) -------------------------------------------------------------------
def hf_weight_dtype(req: PlanRequest, gpu: Gpu) -> str:
    """The dtype the hf backend loads the base weights in (see ``PlanRequest.hf_weights_dtype``).

    The default mirrors ``hpc_ft.backends.hf_runtime.train.base_weight_dtype``: a frozen base (LoRA)
    sits in the 16-bit type ``trainer.precision`` asks for (bf16 or fp16, CPU bf16 too); full
    fine-tuning and precision 32 keep fp32 weights. 4-bit loading is handled by the caller.
    """
    if req.hf_weights_dtype:
        return req.hf_weights_dtype
    dtype = precision_dtype(req.precision)
    if req.peft != "none" and dtype in ("bf16", "fp16"):
        return dtype
    return "fp32"


_DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def _hf_layer_activation_bytes(req: PlanRequest, s: int, e: int) -> float:
    """Bytes one HF decoder layer keeps for backward, one micro-batch (see the module docstring)."""
    a = req.arch
    b = req.mbs
    sb = s * b
    h, qd, kvd, f = a.hidden, a.q_dim, a.kv_dim, a.ffn_hidden
    # full fine-tuning keeps every linear layer's input for its weight gradient; bitsandbytes'
    # 4-bit matmul keeps its input too (MatMul4Bit saves A whenever a gradient flows through)
    full = req.peft == "none" or req.quantization == "4bit"
    roles = adapters.lora_roles(a, _lora_targets(req)) if req.peft in ("lora", "sdlora") else frozenset()
    n = 2 * 4 * sb * h  # two norms keep an fp32 copy of their input
    if full or "qkv_in" in roles:
        n += e * sb * h
    eager = req.hf_attention == "eager"
    if eager:
        n += e * sb * (qd + 2 * kvd)  # Q, K, V kept by the two matmuls
        n += (4 + (e if e < 4 else 0)) * a.heads * s * sb  # fp32 softmax (+ its 16-bit cast)
    else:
        kv = 2 * (qd if a.kv_heads != a.heads else kvd)  # repeat_kv copies before SDPA under GQA
        n += e * sb * (qd + kv + qd) + 4 * a.heads * sb  # Q, K, V, output, log-sum-exp
    if full or "o_in" in roles:
        n += e * sb * qd
    if full or "mlp_in" in roles:
        n += e * sb * h
    n += e * sb * (3 * f if a.gated_mlp else f)  # gate, up, act (gated) / pre-GELU
    if full or "down_in" in roles:
        n += e * sb * f
    if roles:
        n += e * sb * req.lora_r * len(adapters.lora_shapes(a, _lora_targets(req)))
    return float(n)


def estimate_hf(req: PlanRequest, gpu: Gpu) -> Estimate:
    """Per-GPU (or, on ``cpu``, per-process RSS) memory of a transformers + peft job."""
    a = req.arch
    notes: list[str] = []
    bits = precision_bits(req.precision)
    e = 2 if bits == 16 else 4  # bytes of an activation element (autocast dtype)
    wdtype = hf_weight_dtype(req, gpu)
    w_b = _DTYPE_BYTES[wdtype]
    linear = a.num_layers * a.layer_linear_params
    other = a.num_params - linear
    if req.quantization == "4bit":
        const_b = (1 / 64 + 4 / (64 * 256)) if req.double_quant else 4 / 64
        compute_b = 2 if bits == 16 else 4
        weights = linear * (0.5 + const_b) + other * compute_b
        copies = 0.0
        res_b = compute_b
        notes.append(f"4-bit NF4 linear weights ({0.5 + const_b:.3f} B/param incl. quantisation constants)")
    else:
        weights = a.num_params * w_b
        copies = 0.0
        if w_b == 4 and bits == 16:
            # autocast casts every fp32 weight that enters a matmul and keeps the copy for backward
            copies = 2 * (linear + (a.output_params or a.embedding_params))
            notes.append("fp32 weights under 16-bit autocast: 16-bit copies are kept for backward")
        res_b = w_b
    notes.append(f"base weights in {wdtype if req.quantization is None else '4-bit'}")
    opt = optimizer_state_bytes(req.optimizer)
    tc = _trainable(req)
    if req.peft == "none":
        # torch AdamW keeps m and v in the parameter's dtype; 8-bit optimizers 2 B/param
        trainable, grad_b, opt_b = a.num_params, w_b, (2 * w_b if opt == 8 else opt)
        params_b = 0  # the weights are the trainable parameters
    else:
        trainable, grad_b, opt_b = tc.total(a), 4, opt
        params_b = 4  # peft keeps adapters in fp32
    if req.peft == "none" and req.world_size > 1:
        grad_b *= 2  # DDP keeps gradient buckets beside the .grad tensors
        notes.append("DDP: gradient buckets double the gradient memory of full fine-tuning")
    s = _effective_seq(req)
    per_layer = _hf_layer_activation_bytes(req, s, e)
    sbh = s * req.mbs * a.hidden
    logits = HF_LOGIT_BYTES * s * req.mbs * a.vocab
    if req.head_classes:  # a classification head: no vocabulary logits; one row per sample, or per token (NER)
        logits = HF_LOGIT_BYTES * (s if req.head_per_token else 1) * req.mbs * req.head_classes
        notes.append(f"{'token' if req.head_per_token else 'sequence'}-classification head over "
                     f"{req.head_classes} classes (no vocabulary logits)")
    if req.gradient_checkpointing:
        # each layer's input is kept; one layer is recomputed at a time, after the loss buffers
        # are freed, so its working set counts only where it exceeds them
        activations = a.num_layers * res_b * sbh + max(0.0, per_layer - logits)
        notes.append("gradient checkpointing: each layer's input kept, one layer recomputed at a time")
    else:
        activations = a.num_layers * per_layer
    activations += 4 * sbh  # final norm's fp32 input
    if req.packed_sequence:
        notes.append(f"packed: every micro-batch is {req.mbs} x {s} tokens (max_seq_length), rows packed end to end")
        if req.hf_attention != "flash_attention_2":
            # sdpa/eager get a block-diagonal causal mask built from the position ids: s x s bools per sequence
            activations += req.mbs * s * s
            notes.append("packed with sdpa/eager: one s x s block-diagonal mask per sequence")
    if gpu.is_cpu:
        framework = (HF_CPU_RUNTIME_GIB + HF_CPU_STEP_GIB) * GIB
        if not req.cpu_fixed_mmap_threshold:
            framework += HF_CPU_HEAP_SLACK * (activations + logits)
            notes.append(
                "cpu: glibc heap growth included (export MALLOC_MMAP_THRESHOLD_=1048576 in the job "
                "and set cpu_fixed_mmap_threshold to drop it)"
            )
        notes.append("cpu: figures are the peak resident set (RSS) of one training process")
    else:
        framework = (gpu.cuda_context_gib + HF_GPU_EXTRA_GIB + (NCCL_GIB if req.world_size > 1 else 0.0)) * GIB
    parts = {
        "weights": weights,
        "weight_copies": copies,
        "trainable_params": trainable * params_b,
        "gradients": trainable * grad_b,
        "optimizer_states": trainable * opt_b,
        "activations": activations,
        "logits": logits,
        "framework": framework,
    }
    capacity = gpu.memory_gib
    device = gpu.name
    if gpu.is_cpu and req.devices > 1:
        capacity = gpu.memory_gib / req.devices
        device = f"cpu share (host {gpu.memory_gib:.1f} GiB / {req.devices} ranks)"
    labels = {"weights": f"base weights ({'4-bit' if req.quantization else wdtype})"}
    return _verdict(parts, capacity, req.headroom, "all", notes, device, labels)


def estimate(req: PlanRequest, gpu: Gpu) -> Estimate:
    """Dispatch on ``req.backend``."""
    if req.backend == "hf":
        return estimate_hf(req, gpu)
    return estimate_nemo(req, gpu)
