"""Trainable-parameter counts of each fine-tuning scheme (LoRA targets, p-tuning, adapters, IA3).

Counts follow NeMo 1.x's adapter modules (``parallel_adapters.py``) and HF peft:

* LoRA (and NeMo's sdlora): ``r x (in + out)`` per targeted matrix per layer. NeMo names
  ``attention_qkv`` (h -> q + 2 kv), ``attention_dense`` (q -> h), ``mlp_fc1`` (h -> 2f gated, f
  otherwise), ``mlp_fc2`` (f -> h), and the groups ``attention``, ``mlp``, ``all``. HF names are
  the family's module names (``q_proj`` ... ``down_proj``; ``query_key_value`` ... for GPT-NeoX)
  and ``all-linear``.
* adapter: two parallel adapters per layer (after attention and after the MLP), each
  ``h -> dim -> h`` without bias plus a LayerNorm (weight and bias).
* ia3: learned scales on keys and values (``kv_dim`` each) and on the MLP inner activation (``f``).
* ptuning: prompt encoder ``Embedding(virtual_tokens, emb) -> Linear(emb, bottleneck) ->
  Linear(bottleneck, hidden)`` with biases, on the first pipeline stage only.
* selective: NeMo's default ``tunable_base_param_names`` (self_attention, word_embeddings):
  the attention blocks and the embedding become trainable base weights.
* none: every parameter is trainable (full fine-tuning).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from hpc_ft.errors import UserError, did_you_mean
from hpc_ft.plan.arch import FAMILIES, ModelArch

NEMO_LORA_MODULES = ("attention_qkv", "attention_dense", "mlp_fc1", "mlp_fc2")
NEMO_LORA_GROUPS = {
    "attention": ("attention_qkv", "attention_dense"),
    "mlp": ("mlp_fc1", "mlp_fc2"),
    "all": NEMO_LORA_MODULES,
}
#: NeMo 24.03-era main (9d86acd5) default ``lora_tuning.target_modules``.
NEMO_LORA_DEFAULT = NEMO_LORA_MODULES
#: peft's default LoRA targets per family (``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``).
HF_LORA_DEFAULT = {"llama": ("q_proj", "v_proj"), "mistral": ("q_proj", "v_proj"), "gpt_neox": ("query_key_value",)}
HF_ALL_LINEAR = ("all-linear", "all_linear")


def _role_shape(arch: ModelArch, role: str) -> tuple[int, int]:
    h, f = arch.hidden, arch.ffn_hidden
    return {
        "q": (h, arch.q_dim),
        "k": (h, arch.kv_dim),
        "v": (h, arch.kv_dim),
        "qkv": (h, arch.qkv_out),
        "o": (arch.q_dim, h),
        "gate": (h, f),
        "up": (h, f),
        "fc1": (h, arch.fc1_out),
        "down": (f, h),
    }[role]


_NEMO_ROLE = {"attention_qkv": "qkv", "attention_dense": "o", "mlp_fc1": "fc1", "mlp_fc2": "down"}


def known_lora_targets(arch: ModelArch) -> tuple[str, ...]:
    """Every LoRA target name the planner understands for this architecture."""
    hf = tuple(FAMILIES[arch.family].hf_modules)
    return NEMO_LORA_MODULES + tuple(NEMO_LORA_GROUPS) + hf + HF_ALL_LINEAR


def default_lora_targets(arch: ModelArch, backend: str) -> tuple[str, ...]:
    if backend == "hf":
        return HF_LORA_DEFAULT.get(arch.family, ("all-linear",))
    return NEMO_LORA_DEFAULT


def target_naming(targets: tuple[str, ...], arch: ModelArch) -> str:
    """'nemo', 'hf' or 'mixed' — which naming a list of LoRA targets uses."""
    hf = set(FAMILIES[arch.family].hf_modules) | set(HF_ALL_LINEAR)
    kinds = {"hf" if t in hf else "nemo" for t in targets}
    return kinds.pop() if len(kinds) == 1 else "mixed"


@lru_cache(maxsize=1024)
def lora_shapes(arch: ModelArch, targets: tuple[str, ...]) -> tuple[tuple[str, int, int], ...]:
    """(name, in, out) of every matrix LoRA adapts in one layer. Unknown names raise UserError."""
    hf_modules = FAMILIES[arch.family].hf_modules
    out: dict[str, tuple[int, int]] = {}
    for raw in targets:
        t = str(raw).strip()
        if t in NEMO_LORA_GROUPS:
            for m in NEMO_LORA_GROUPS[t]:
                out[m] = _role_shape(arch, _NEMO_ROLE[m])
        elif t in _NEMO_ROLE:
            out[t] = _role_shape(arch, _NEMO_ROLE[t])
        elif t in HF_ALL_LINEAR:
            for m, role in hf_modules.items():
                out[m] = _role_shape(arch, role)
        elif t in hf_modules:
            out[t] = _role_shape(arch, hf_modules[t])
        else:
            raise UserError(
                f"model.peft.lora_tuning.target_modules: {t!r} is not a LoRA target for a "
                f"{arch.family} model.{did_you_mean(t, known_lora_targets(arch))} "
                f"Use one of: {', '.join(known_lora_targets(arch))}."
            )
    return tuple((name, i, o) for name, (i, o) in out.items())


def lora_roles(arch: ModelArch, targets: tuple[str, ...]) -> frozenset[str]:
    """Which block inputs LoRA reads: 'qkv_in', 'o_in', 'mlp_in', 'down_in' (for activation counts)."""
    hf_modules = FAMILIES[arch.family].hf_modules
    roles = set()
    for name, _, _ in lora_shapes(arch, targets):
        role = _NEMO_ROLE.get(name) or hf_modules.get(name)
        roles.add(
            {"q": "qkv_in", "k": "qkv_in", "v": "qkv_in", "qkv": "qkv_in", "o": "o_in",
             "gate": "mlp_in", "up": "mlp_in", "fc1": "mlp_in", "down": "down_in"}[role]
        )
    return frozenset(roles)


@dataclass(frozen=True)
class TrainableCount:
    """Trainable parameters of one scheme, laid out the way tensor/pipeline parallel split them.

    * ``new_per_layer``: new (adapter) parameters per transformer layer, split ~1/TP.
    * ``new_first_stage_split`` / ``new_first_stage_replicated``: new parameters on the first
      pipeline stage only (the p-tuning prompt encoder), split by TP or replicated.
    * ``base_per_layer``: base parameters per layer that become trainable (split 1/TP).
    * ``base_embedding``: whether the embedding (and, untied, the LM head) is trainable.
    """

    new_per_layer: int = 0
    new_first_stage_split: int = 0
    new_first_stage_replicated: int = 0
    base_per_layer: int = 0
    base_embedding: bool = False
    base_output: bool = False

    def total(self, arch: ModelArch) -> int:
        n = self.new_per_layer * arch.num_layers + self.new_first_stage_split + self.new_first_stage_replicated
        n += self.base_per_layer * arch.num_layers
        n += arch.embedding_params if self.base_embedding else 0
        n += arch.output_params if self.base_output else 0
        return n


def trainable_count(
    arch: ModelArch,
    scheme: str,
    *,
    lora_r: int = 32,
    lora_targets: tuple[str, ...] = NEMO_LORA_DEFAULT,
    adapter_dim: int = 32,
    virtual_tokens: int = 10,
    bottleneck_dim: int = 1024,
    embedding_dim: int = 1024,
) -> TrainableCount:
    """The trainable parameters of ``scheme`` on ``arch`` (see the module docstring)."""
    h = arch.hidden
    if scheme in ("lora", "sdlora"):
        per_layer = sum(lora_r * (i + o) for _, i, o in lora_shapes(arch, tuple(lora_targets)))
        return TrainableCount(new_per_layer=per_layer)
    if scheme == "adapter":
        return TrainableCount(new_per_layer=2 * (2 * h * adapter_dim + 2 * h))
    if scheme == "ia3":
        return TrainableCount(new_per_layer=2 * arch.kv_dim + arch.ffn_hidden)
    if scheme == "ptuning":
        e, b = embedding_dim, bottleneck_dim
        return TrainableCount(
            new_first_stage_split=e * b + b + b * h,
            new_first_stage_replicated=virtual_tokens * e + h,
        )
    if scheme == "selective":
        return TrainableCount(base_per_layer=arch.attention_params, base_embedding=True)
    if scheme == "none":
        return TrainableCount(base_per_layer=arch.layer_params, base_embedding=True, base_output=True)
    raise UserError(f"model.peft.peft_scheme={scheme!r}: unknown scheme.")
