"""Packed sequences in the planner: NeMo's packed-sequence rules, the packed micro-batch in the memory model and the report."""

from __future__ import annotations

from hpc_ft.plan import plan
from hpc_ft.plan.gpus import get_gpu
from hpc_ft.plan.memory import estimate
from hpc_ft.plan.report import to_dict, to_text
from hpc_ft.plan.rules import check

A100 = get_gpu("A100-80GB")
V100 = get_gpu("V100-16GB")


def _errors(req, gpu):
    return {v.key: v for v in check(req, gpu) if v.severity == "error"}


def test_nemo_packing_needs_micro_batch_one_lora_and_flash_attention(reference):
    lora = reference.with_(peft_scheme="lora", packed_sequence=True, gpu="A100-80GB", precision="bf16")
    assert _errors(lora.with_(mbs=1, gbs=16), A100) == {}
    mbs = _errors(lora, A100)["model.micro_batch_size"]
    assert "Micro batch size must be 1 if using packed sequence" in mbs.rule and "model.micro_batch_size=1" in mbs.fix
    ptuning = _errors(lora.with_(mbs=1, peft_scheme="ptuning"), A100)["model.data.train_ds.packed_sequence"]
    assert "P-Tuning with packed sequence is not supported" in ptuning.rule
    v100 = _errors(lora.with_(mbs=1, gpu="V100-16GB", precision="16"), V100)["model.data.train_ds.packed_sequence"]
    assert "THD" in v100.rule and "V100-16GB has no flash/fused attention" in v100.rule
    off = _errors(lora.with_(mbs=1, flash_attention=False), A100)["model.data.train_ds.packed_sequence"]
    assert "NVTE_FLASH_ATTN=0" in off.rule


def test_hf_packing_has_no_nemo_limits_and_costs_a_block_diagonal_mask(elyza):
    from hpc_ft.plan import PlanRequest

    req = PlanRequest(arch=elyza, backend="hf", gpu="A100-80GB", devices=1, mbs=2, gbs=2, seq_len=2048,
                      precision="bf16", peft_scheme="lora", optimizer="adamw_torch")
    assert not [v for v in check(req.with_(packed_sequence=True), A100) if v.key.endswith("packed_sequence")]
    padded, packed = estimate(req, A100), estimate(req.with_(packed_sequence=True), A100)
    assert packed.breakdown["activations"] - padded.breakdown["activations"] == 2 * 2048 * 2048 / 2**30
    assert any("packed: every micro-batch is 2 x 2048 tokens" in n for n in packed.notes)
    flash = estimate(req.with_(packed_sequence=True, hf_attention="flash_attention_2"), A100)
    assert flash.breakdown["activations"] < packed.breakdown["activations"]


def test_report_says_a_packed_micro_batch_is_max_seq_length_tokens_per_sequence(reference):
    req = reference.with_(peft_scheme="lora", packed_sequence=True, gpu="A100-80GB", precision="bf16", mbs=1,
                          seq_len=2048)
    result = plan(req)
    text = to_text(result)
    assert "seq 2048 packed" in text
    assert "Tokens: 1 packed sequence x 2048 per micro-batch, 32,768 per step" in text
    assert to_dict(result)["layout"]["packed_sequence"] is True
    padded = to_text(plan(reference))
    assert "Tokens: up to 4 rows x 256 per micro-batch, 4,096 per step as padded" in padded
