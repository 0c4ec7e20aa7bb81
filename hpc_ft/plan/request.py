"""The planner's input: one frozen `PlanRequest` describing a job as NeMo/HF would run it.

Defaults follow NeMo 1.x ``megatron_gpt_finetuning_config.yaml`` (TP=PP=1, MBS 4, GBS 128,
``trainer.precision=16``, O2 off, ``max_seq_length`` 2048, LoRA ``adapter_dim`` 32, p-tuning
10/1024/1024) except ``peft_scheme``, which defaults to ``lora`` here. The value sets (precision
spellings, PEFT schemes, recompute modes) live here once; rules and memory import them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from hpc_ft.plan.arch import ModelArch

BACKENDS = ("nemo", "hf")
#: ``trainer.precision`` as NeMo spells it (Lightning 2 also accepts '32-true', mapped to '32').
PRECISIONS = ("16", "16-mixed", "bf16", "bf16-mixed", "32", "32-true")
#: NeMo ``PEFT_CONFIG_MAP`` keys; 'none' is full fine-tuning (SFT).
PEFT_SCHEMES = ("adapter", "ia3", "ptuning", "lora", "selective", "sdlora", "none")
#: the schemes the hf backend (transformers + peft) runs.
HF_PEFT_SCHEMES = ("lora", "none")
#: NeMo ``model.activations_checkpoint_granularity`` (None = no recompute).
RECOMPUTE = (None, "selective", "full")
QUANTIZATIONS = (None, "4bit")
HF_ATTENTION = ("sdpa", "eager", "flash_attention_2")
#: optimizers the memory model knows: bytes of optimizer state per trainable parameter are in memory.py
OPTIMIZERS = ("fused_adam", "adam", "adamw", "adamw_torch", "distributed_fused_adam", "adamw_8bit", "sgd")
WEIGHT_DTYPES = (None, "fp32", "bf16", "fp16")


def precision_bits(precision: str) -> int:
    """16 for the 16-bit spellings, 32 otherwise."""
    return 32 if str(precision).startswith("32") else 16


def precision_dtype(precision: str) -> str:
    """'fp16', 'bf16' or 'fp32' for a ``trainer.precision`` value."""
    p = str(precision)
    if p.startswith("bf16"):
        return "bf16"
    if p.startswith("16"):
        return "fp16"
    return "fp32"


@dataclass(frozen=True)
class PlanRequest:
    """Everything the planner needs about one job. All fields are plain values.

    Cluster
      * ``backend``: 'nemo' (NeMo 1.x Megatron PEFT) or 'hf' (transformers + peft, data parallel).
      * ``gpu``: a name from the GPU catalogue (:mod:`hpc_ft.plan.gpus`), or 'cpu' for local runs.
      * ``gpus_per_node``: GPUs a node of the partition has (bounds TP within a node, and ``devices``).
      * ``num_nodes``: ``trainer.num_nodes``.
      * ``devices``: ``trainer.devices``, GPUs used per node (processes per node; on 'cpu', ranks).
      * ``cpu_memory_gib``: host memory for ``gpu='cpu'``; None reads the host's physical memory.
      * ``cpu_fixed_mmap_threshold``: ``gpu='cpu'``: the job exports ``MALLOC_MMAP_THRESHOLD_``
        (e.g. 1048576), so glibc returns freed activation buffers and the RSS follows live memory.

    Parallelism and batch
      * ``tp``, ``pp``: ``model.tensor_model_parallel_size``, ``model.pipeline_model_parallel_size``.
      * ``virtual_pipeline``: ``model.virtual_pipeline_model_parallel_size`` (refused with PEFT).
      * ``mbs``, ``gbs``: ``model.micro_batch_size``, ``model.global_batch_size``.
      * ``seq_len``: tokens per sample *as padded* (NeMo pads a batch to its longest sample rounded
        up to 16, capped at ``max_seq_length``): pass the expected padded length, or the cap to be safe.
      * ``sequence_parallel``: ``model.sequence_parallel`` (needs TP > 1).
      * ``packed_sequence``: ``model.data.train_ds.packed_sequence``: rows packed into sequences of
        ``max_seq_length`` tokens, so ``seq_len`` is that length and a micro-batch is ``mbs`` of them.

    Precision
      * ``precision``: ``trainer.precision`` as NeMo spells it: '16', '16-mixed', 'bf16', 'bf16-mixed', '32'.
      * ``megatron_amp_O2``: ``model.megatron_amp_O2``. Off (O1), NeMo 1.x keeps the base weights in
        fp32 and autocast keeps 16-bit copies for backward; on, weights are 16-bit (bf16 only: O2 +
        fp16 is refused by NeMo).
      * ``hf_weights_dtype``: hf backend only: dtype the base model is loaded in ('fp32', 'bf16',
        'fp16'); None = what the hf runtime does: bf16 for ``precision=bf16`` on a GPU, else fp32
        (trained under 16-bit autocast, which keeps 16-bit weight copies for backward).
      * ``quantization``: hf backend only: None or '4bit' (QLoRA, NF4 weights of the linear layers).
      * ``double_quant``: 4-bit only: quantise the quantisation constants too (QLoRA default).

    Fine-tuning method
      * ``peft_scheme``: ``model.peft.peft_scheme``: adapter, ia3, ptuning, lora, selective, sdlora,
        or 'none' (full fine-tuning).
      * ``lora_r``: LoRA rank (NeMo ``lora_tuning.adapter_dim``; peft ``r``).
      * ``lora_targets``: LoRA target modules, NeMo names (attention_qkv, attention_dense, mlp_fc1,
        mlp_fc2, attention, mlp, all) or HF module names (q_proj, v_proj, ...; query_key_value, ...).
        None = the backend default: NeMo 24.03-era main, all four; peft, q_proj and v_proj
        (query_key_value for GPT-NeoX).
      * ``adapter_dim``: bottleneck of the 'adapter' scheme (``adapter_tuning.adapter_dim``).
      * ``ptuning_virtual_tokens``, ``ptuning_bottleneck_dim``, ``ptuning_embedding_dim``:
        ``p_tuning.virtual_tokens``, ``.bottleneck_dim``, ``.embedding_dim``.
      * ``optimizer``: ``model.optim.name`` (NeMo) or the HF ``optim`` (adamw_torch, adamw_8bit).

    Activation memory
      * ``recompute``: NeMo ``model.activations_checkpoint_granularity``: None, 'selective' or 'full'
        (full = uniform, one layer per checkpoint).
      * ``gradient_checkpointing``: hf backend: ``TrainingArguments.gradient_checkpointing``.
      * ``flash_attention``: NeMo/TE: whether flash/fused attention is used. None = automatic (the
        GPU is sm80+); pass False when the job sets ``NVTE_FLASH_ATTN=0 NVTE_FUSED_ATTN=0``.
      * ``hf_attention``: hf backend ``attn_implementation``: 'sdpa', 'eager' or 'flash_attention_2'.
      * ``dropout``: hidden/attention dropout (NeMo fine-tuning default 0.0: no dropout masks stored).

    Head (hf backend, the classification tasks)
      * ``head_classes``: None for a causal LM (logits over the vocabulary); the number of classes of a
        sequence-classification head (one row of logits per sample) or of a token-classification head
        (``head_per_token``: logits over the tags at every position).

    Verdict
      * ``headroom``: fraction of the device memory kept free as a safety margin (0.10 = 10 %).
    """

    arch: ModelArch
    backend: str = "nemo"
    gpu: str = "V100-16GB"
    gpus_per_node: int = 4
    num_nodes: int = 1
    devices: int = 1
    cpu_memory_gib: Optional[float] = None
    cpu_fixed_mmap_threshold: bool = False
    tp: int = 1
    pp: int = 1
    virtual_pipeline: Optional[int] = None
    mbs: int = 4
    gbs: int = 128
    seq_len: int = 2048
    sequence_parallel: bool = False
    packed_sequence: bool = False
    precision: str = "16"
    megatron_amp_O2: bool = False
    hf_weights_dtype: Optional[str] = None
    quantization: Optional[str] = None
    double_quant: bool = True
    peft_scheme: str = "lora"
    lora_r: int = 32
    lora_targets: Optional[tuple[str, ...]] = None
    adapter_dim: int = 32
    ptuning_virtual_tokens: int = 10
    ptuning_bottleneck_dim: int = 1024
    ptuning_embedding_dim: int = 1024
    optimizer: str = "fused_adam"
    recompute: Optional[str] = None
    gradient_checkpointing: bool = False
    flash_attention: Optional[bool] = None
    hf_attention: str = "sdpa"
    dropout: float = 0.0
    headroom: float = 0.10
    head_classes: Optional[int] = None
    head_per_token: bool = False

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    @property
    def model_parallel(self) -> int:
        """GPUs per model replica (TP x PP)."""
        return self.tp * self.pp

    @property
    def dp(self) -> int:
        """Data-parallel size (world size // TP x PP; at least 1 for estimates of invalid layouts)."""
        return max(1, self.world_size // max(1, self.model_parallel))

    @property
    def num_microbatches(self) -> int:
        """Gradient-accumulation steps per optimizer step: GBS / (MBS x DP), at least 1."""
        return max(1, self.gbs // max(1, self.mbs * self.dp))

    @property
    def peft(self) -> str:
        """The scheme normalised: None/'null' mean full fine-tuning ('none')."""
        s = self.peft_scheme
        return "none" if s in (None, "null", "None") else str(s).lower()

    def with_(self, **changes) -> "PlanRequest":
        """A copy with some fields changed (``dataclasses.replace``)."""
        return replace(self, **changes)
