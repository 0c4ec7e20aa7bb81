"""Model architectures for the planner: shapes and parameter counts read from a HF ``config.json``.

The reading is generic: every family's config.json names the same shapes (``hidden_size``,
``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``, ``intermediate_size``,
``vocab_size``, ``tie_word_embeddings``, ``max_position_embeddings``, ``head_dim``). A family is one
row of :data:`FAMILIES` saying how its blocks are built (gated SwiGLU/GeGLU vs a GELU MLP, RMSNorm
vs LayerNorm with bias, which projections carry biases and which config key switches them, norms
per layer) and what its linear modules are called in transformers. Supported ``model_type``
values: llama, mistral, qwen2, gemma, gemma2, gpt_neox, phi3, and the encoder bert (the classification
and NER tasks' heads). Unknown model types and missing
keys raise :class:`UserError` naming the file and the key.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from hpc_ft.errors import UserError, did_you_mean

#: the transformers module names of a Llama-style block (separate q/k/v, gated MLP), role per name
_LLAMA_MODULES = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
    "gate_proj": "gate", "up_proj": "up", "down_proj": "down",
}


@dataclass(frozen=True)
class Family:
    """How one HF ``model_type`` is laid out: one row of :data:`FAMILIES`."""

    name: str
    gated_mlp: bool = True  # SwiGLU/GeGLU (gate, up, down) vs a 2-matrix GELU MLP
    norm_bias: bool = False  # LayerNorm (weight + bias) vs RMSNorm (weight only)
    norms_per_layer: int = 2  # gemma2 adds a norm after attention and after the MLP
    qkv_bias_default: bool = False
    out_bias_default: bool = False
    mlp_bias_default: bool = False
    bias_key: str | None = "attention_bias"  # config key switching the attention biases (None: fixed)
    mlp_bias_key: str | None = None  # config key switching the MLP biases (None: fixed)
    parallel_residual_default: bool = False
    tied_default: bool = False
    kv_key: str | None = "num_key_value_heads"  # None: no GQA in this family
    # transformers module name -> role (q, k, v, qkv, o, gate, up, fc1 = gate+up fused, down):
    # every linear layer of a block, so "all" / "all-linear" LoRA means exactly these
    hf_modules: Mapping[str, str] = None  # type: ignore[assignment]


FAMILIES: Mapping[str, Family] = {
    "llama": Family("llama", mlp_bias_key="mlp_bias", hf_modules=_LLAMA_MODULES),
    "mistral": Family("mistral", bias_key=None, hf_modules=_LLAMA_MODULES),
    # Qwen2: biases on q, k, v (not on o), always; small checkpoints tie the embeddings (config says so)
    "qwen2": Family("qwen2", qkv_bias_default=True, bias_key=None, hf_modules=_LLAMA_MODULES),
    # Gemma: GeGLU MLP, RMSNorm, tied embeddings, head_dim given explicitly (256)
    "gemma": Family("gemma", tied_default=True, hf_modules=_LLAMA_MODULES),
    "gemma2": Family("gemma2", tied_default=True, norms_per_layer=4, hf_modules=_LLAMA_MODULES),
    # GPT-NeoX (rinna/japanese-gpt-neox-*): fused QKV, GELU MLP, LayerNorm with bias, parallel residual
    "gpt_neox": Family(
        "gpt_neox", gated_mlp=False, norm_bias=True, qkv_bias_default=True, out_bias_default=True,
        mlp_bias_default=True, parallel_residual_default=True, kv_key=None,
        hf_modules={"query_key_value": "qkv", "dense": "o", "dense_h_to_4h": "up", "dense_4h_to_h": "down"},
    ),
    # Phi-3: fused qkv_proj and gate_up_proj, no biases
    "phi3": Family(
        "phi3", bias_key=None,
        hf_modules={"qkv_proj": "qkv", "o_proj": "o", "gate_up_proj": "fc1", "down_proj": "down"},
    ),
    # an encoder (the classification/NER tasks): LayerNorm with bias, biased projections, a GELU MLP; as a
    # classifier it has no LM head (its MLM head shares the embedding). Module names as peft matches them.
    "bert": Family(
        "bert", gated_mlp=False, norm_bias=True, qkv_bias_default=True, out_bias_default=True,
        mlp_bias_default=True, bias_key=None, tied_default=True, kv_key=None,
        hf_modules={"query": "q", "key": "k", "value": "v", "attention.output.dense": "o",
                    "intermediate.dense": "up", "output.dense": "down"},
    ),
}


@dataclass(frozen=True)
class ModelArch:
    """The shapes of a decoder-only transformer, enough to count parameters and activations.

    ``ffn_hidden`` is the MLP inner width (``intermediate_size``); a gated MLP has three
    ``hidden x ffn_hidden`` matrices, a GELU MLP two. ``kv_heads < heads`` is GQA.
    """

    family: str
    num_layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn_hidden: int
    vocab: int
    max_positions: int
    head_dim: int
    tied_embeddings: bool = False
    gated_mlp: bool = True
    norm_bias: bool = False
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    parallel_residual: bool = False
    norms_per_layer: int = 2
    name: str = ""
    source: str = ""

    # ---- derived shapes -------------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def qkv_out(self) -> int:
        return self.q_dim + 2 * self.kv_dim

    @property
    def fc1_out(self) -> int:
        """Width of the first MLP projection as Megatron fuses it (gate and up together)."""
        return 2 * self.ffn_hidden if self.gated_mlp else self.ffn_hidden

    # ---- parameter counts -----------------------------------------------------------------
    @property
    def layer_linear_params(self) -> int:
        """Matrix weights of one transformer layer (the part tensor parallel splits)."""
        h, f = self.hidden, self.ffn_hidden
        attn = h * self.qkv_out + self.q_dim * h
        mlp = (3 if self.gated_mlp else 2) * h * f
        return attn + mlp

    @property
    def layer_bias_params(self) -> int:
        h, f = self.hidden, self.ffn_hidden
        n = 0
        if self.qkv_bias:
            n += self.qkv_out
        if self.out_bias:
            n += h
        if self.mlp_bias:
            n += (self.fc1_out if self.gated_mlp else f) + h
        return n

    @property
    def norm_params(self) -> int:
        """Parameters of one norm (RMSNorm: weight; LayerNorm: weight and bias)."""
        return self.hidden * (2 if self.norm_bias else 1)

    @property
    def layer_params(self) -> int:
        return self.layer_linear_params + self.layer_bias_params + self.norms_per_layer * self.norm_params

    @property
    def attention_params(self) -> int:
        """Attention block of one layer (projections and their biases), for selective tuning."""
        n = self.hidden * self.qkv_out + self.q_dim * self.hidden
        if self.qkv_bias:
            n += self.qkv_out
        if self.out_bias:
            n += self.hidden
        return n

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def output_params(self) -> int:
        """The LM head (0 when it shares the embedding matrix)."""
        return 0 if self.tied_embeddings else self.vocab * self.hidden

    @property
    def num_params(self) -> int:
        """Total parameters: embeddings, layers, final norm, LM head."""
        return (
            self.embedding_params
            + self.num_layers * self.layer_params
            + self.norm_params
            + self.output_params
        )

    def padded_vocab(self, tp: int, divisible_by: int = 128) -> int:
        """Megatron pads the vocabulary to a multiple of ``divisible_by * TP`` (32000 -> 32256 at TP=4)."""
        multiple = divisible_by * max(1, tp)
        return int(math.ceil(self.vocab / multiple) * multiple)

def _read_config(source: str | Path | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    if isinstance(source, Mapping):
        return dict(source), "<config dict>"
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(
            f"model config {path}: file not found. Point the model path at a HF model directory "
            "(with config.json) or at the config.json itself."
        ) from None
    except OSError as exc:
        raise UserError(f"model config {path}: cannot be read ({exc.strerror}).") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"model config {path}: not valid JSON (line {exc.lineno}: {exc.msg})."
        ) from None
    if not isinstance(data, dict):
        raise UserError(f"model config {path}: expected a JSON object at the top level.")
    return data, str(path)


def _require_int(cfg: Mapping[str, Any], key: str, where: str, model_type: str) -> int:
    if key not in cfg or cfg[key] is None:
        raise UserError(
            f"model config {where}: key '{key}' is missing; a {model_type} config.json needs it. "
            "Use the config.json shipped with the checkpoint."
        )
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(
            f"model config {where}: key '{key}' = {value!r} must be a positive integer."
        )
    return value


def arch_from_hf_config(source: str | Path | Mapping[str, Any], name: str = "") -> ModelArch:
    """Build a :class:`ModelArch` from a HF ``config.json`` (a path, a model directory or a dict)."""
    cfg, where = _read_config(source)
    model_type = cfg.get("model_type")
    if model_type is None:
        raise UserError(
            f"model config {where}: key 'model_type' is missing. Supported: {', '.join(FAMILIES)}."
        )
    family = FAMILIES.get(str(model_type))
    if family is None:
        raise UserError(
            f"model config {where}: model_type={model_type!r} is not a supported model family."
            f"{did_you_mean(str(model_type), FAMILIES)} Supported: {', '.join(FAMILIES)}; use a checkpoint of one of these."
        )
    need = lambda key: _require_int(cfg, key, where, family.name)  # noqa: E731
    hidden = need("hidden_size")
    heads = need("num_attention_heads")
    layers = need("num_hidden_layers")
    ffn = need("intermediate_size")
    vocab = need("vocab_size")
    max_pos = need("max_position_embeddings")
    kv_heads = heads
    if family.kv_key and cfg.get(family.kv_key) is not None:
        kv_heads = need(family.kv_key)
    head_dim = cfg.get("head_dim") or hidden // heads
    if hidden % heads and not cfg.get("head_dim"):
        raise UserError(
            f"model config {where}: hidden_size={hidden} is not divisible by "
            f"num_attention_heads={heads} and no 'head_dim' is given."
        )
    if heads % kv_heads:
        raise UserError(
            f"model config {where}: num_attention_heads={heads} is not divisible by "
            f"{family.kv_key}={kv_heads}."
        )
    qkv_bias, out_bias = family.qkv_bias_default, family.out_bias_default
    if family.bias_key and cfg.get(family.bias_key) is not None:
        qkv_bias = out_bias = bool(cfg[family.bias_key])
    mlp_bias = family.mlp_bias_default
    if family.mlp_bias_key and cfg.get(family.mlp_bias_key) is not None:
        mlp_bias = bool(cfg[family.mlp_bias_key])
    return ModelArch(
        family=family.name,
        num_layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        ffn_hidden=ffn,
        vocab=vocab,
        max_positions=max_pos,
        head_dim=int(head_dim),
        tied_embeddings=bool(cfg.get("tie_word_embeddings", family.tied_default)),
        gated_mlp=family.gated_mlp,
        norm_bias=family.norm_bias,
        qkv_bias=qkv_bias,
        out_bias=out_bias,
        mlp_bias=mlp_bias,
        parallel_residual=bool(cfg.get("use_parallel_residual", family.parallel_residual_default)),
        norms_per_layer=family.norms_per_layer,
        name=name or str(cfg.get("_name_or_path") or ""),
        source=where,
    )


@lru_cache(maxsize=256)
def load_arch(path: str) -> ModelArch:
    """:func:`arch_from_hf_config` for a path, cached (sweeps ask for the same model many times)."""
    return arch_from_hf_config(path)
