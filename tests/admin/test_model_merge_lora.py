"""merge_lora (hf backend): a tiny Llama + LoRA adapter merged with peft gives the same logits as base+adapter."""

from __future__ import annotations

import json

import pytest

from hpc_ft.errors import UserError
from hpc_ft.models.convert import merge_lora

pytestmark = pytest.mark.hf

torch = pytest.importorskip("torch", reason="merge_lora needs torch (the hf extra)")
transformers = pytest.importorskip("transformers", reason="merge_lora needs transformers (the hf extra)")
peft = pytest.importorskip("peft", reason="merge_lora needs peft (the hf extra)")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
    )
    base = transformers.LlamaForCausalLM(cfg)
    base_dir = root / "base"
    base.save_pretrained(base_dir)
    (base_dir / "tokenizer_config.json").write_text('{"model_max_length": 64, "from": "base"}')

    lora_cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = peft.get_peft_model(transformers.LlamaForCausalLM.from_pretrained(base_dir), lora_cfg)
    adapter_dir = root / "adapter"
    model.save_pretrained(adapter_dir)
    (adapter_dir / "tokenizer_config.json").write_text('{"model_max_length": 64, "from": "adapter"}')
    return base_dir, adapter_dir


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merged_model_matches_base_plus_adapter(tiny, tmp_path):
    base_dir, adapter_dir = tiny
    out = merge_lora(base_dir, adapter_dir, tmp_path / "merged")
    assert (out / "model.safetensors").is_file()
    assert not (out / "adapter_config.json").exists()
    assert json.loads((out / "tokenizer_config.json").read_text())["from"] == "adapter"

    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    merged = transformers.AutoModelForCausalLM.from_pretrained(out)
    with_adapter = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    plain = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
    assert torch.allclose(_logits(merged, ids), _logits(with_adapter, ids), atol=1e-5)
    assert not torch.allclose(_logits(merged, ids), _logits(plain, ids), atol=1e-3)  # the adapter did change something


def test_merge_refuses_a_non_empty_output_and_prompt_adapters(tiny, tmp_path):
    base_dir, adapter_dir = tiny
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        merge_lora(base_dir, adapter_dir, out)
    ptuning = tmp_path / "ptuning"
    ptuning.mkdir()
    (ptuning / "adapter_config.json").write_text('{"peft_type": "P_TUNING"}')
    with pytest.raises(UserError, match="no weight delta"):
        merge_lora(base_dir, ptuning, tmp_path / "o2")
    with pytest.raises(UserError, match="adapter_config.json"):
        merge_lora(base_dir, tmp_path, tmp_path / "o3")
