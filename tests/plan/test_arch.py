from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpc_ft.errors import UserError
from hpc_ft.plan.arch import arch_from_hf_config, load_arch

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_path(name: str) -> str:
    return str(FIXTURES / f"{name}.json")


# published sizes (model cards / papers), billions of parameters
PUBLISHED = {
    "llama-2-7b": 6.74,
    "elyza-japanese-llama-2-7b": 6.74,
    "llama-3-8b": 8.03,
    "mistral-7b-v0.1": 7.24,
    "rinna-japanese-gpt-neox-3.6b": 3.6,
    "qwen2-7b": 7.62,
    "qwen2-0.5b": 0.49,
    "gemma-2b": 2.51,
    "gemma-7b": 8.54,
    "gemma2-2b": 2.61,
    "phi3-mini-4k": 3.82,
}


@pytest.mark.parametrize("name, billions", sorted(PUBLISHED.items()))
def test_param_count_within_1_percent_of_published(name, billions):
    arch = load_arch(fixture_path(name))
    assert abs(arch.num_params / 1e9 - billions) / billions < 0.01


def test_llama2_7b_count_is_exact(elyza):
    # 32 x (4h^2 + 3hf + 2h) + 2Vh + h (reference notes §4)
    assert elyza.num_params == 6_738_415_616
    assert elyza.layer_params == 202_383_360


def test_gqa_is_read_and_shrinks_kv_projections(llama3, mistral):
    for arch in (llama3, mistral):
        assert arch.heads == 32 and arch.kv_heads == 8 and arch.kv_dim == 1024
        assert arch.qkv_out == 4096 + 2 * 1024
        assert arch.gated_mlp and not arch.norm_bias
    assert mistral.vocab == 32000 and llama3.vocab == 128256


def test_gpt_neox_is_gelu_layernorm_with_biases_and_no_gqa(neox):
    assert neox.family == "gpt_neox" and not neox.gated_mlp
    assert neox.norm_bias and neox.qkv_bias and neox.mlp_bias
    assert neox.kv_heads == neox.heads == 22
    assert neox.num_layers == 36 and neox.hidden == 2816 and neox.ffn_hidden == 11264
    assert neox.parallel_residual is False
    # the same shapes with a SwiGLU MLP would be larger: the GELU MLP has 2 matrices, not 3
    assert neox.layer_linear_params == 4 * 2816**2 + 2 * 2816 * 11264


def test_model_directory_reads_its_config_json(tmp_path):
    (tmp_path / "config.json").write_text((FIXTURES / "llama-2-7b.json").read_text())
    assert arch_from_hf_config(tmp_path).num_params == 6_738_415_616


def test_unknown_model_type_names_file_and_key(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "lama", "hidden_size": 8}))
    with pytest.raises(UserError) as exc:
        arch_from_hf_config(path)
    msg = str(exc.value)
    assert str(path) in msg and "model_type='lama'" in msg and "Did you mean 'llama'?" in msg


def test_missing_key_names_file_and_key(tmp_path):
    cfg = json.loads((FIXTURES / "llama-2-7b.json").read_text())
    del cfg["intermediate_size"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(UserError) as exc:
        arch_from_hf_config(path)
    assert str(path) in str(exc.value) and "'intermediate_size' is missing" in str(exc.value)


def test_missing_file_and_bad_json_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        arch_from_hf_config(tmp_path / "nope.json")
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        arch_from_hf_config(bad)


def test_padded_vocab_follows_megatron():
    arch = load_arch(fixture_path("llama-2-7b"))
    assert arch.padded_vocab(1) == 32000 and arch.padded_vocab(4) == 32256


def test_qwen2_has_biases_on_q_k_v_only():
    qwen = load_arch(fixture_path("qwen2-7b"))
    assert qwen.family == "qwen2" and qwen.qkv_bias and not qwen.out_bias and not qwen.mlp_bias
    assert qwen.layer_bias_params == qwen.qkv_out == 3584 + 2 * 4 * 128
    assert load_arch(fixture_path("qwen2-0.5b")).tied_embeddings


def test_gemma_reads_head_dim_and_ties_embeddings_by_default():
    gemma = load_arch(fixture_path("gemma-7b"))
    assert gemma.head_dim == 256 and gemma.q_dim == 4096 != gemma.hidden
    assert gemma.tied_embeddings and gemma.output_params == 0
    gemma2 = load_arch(fixture_path("gemma2-2b"))
    assert gemma2.norms_per_layer == 4 and gemma2.kv_heads == 4


def test_phi3_modules_are_fused_qkv_and_gate_up():
    from hpc_ft.plan.arch import FAMILIES

    assert FAMILIES["phi3"].hf_modules == {"qkv_proj": "qkv", "o_proj": "o", "gate_up_proj": "fc1", "down_proj": "down"}


def test_a_new_family_is_a_table_row(monkeypatch):
    from hpc_ft.plan import arch

    monkeypatch.setitem(arch.FAMILIES, "my_llama", arch.Family("my_llama", hf_modules={"q_proj": "q"}))
    cfg = json.loads((FIXTURES / "llama-2-7b.json").read_text())
    assert arch_from_hf_config({**cfg, "model_type": "my_llama"}).num_params == 6_738_415_616


def test_unsupported_model_type_names_the_supported_families(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "hidden_size": 768}))
    with pytest.raises(UserError, match=r"model_type='t5' is not a supported model family.*qwen2.*phi3"):
        arch_from_hf_config(tmp_path)
