"""Each rule: the violation names NeMo's key, the value, the rule (NeMo's message) and a fix."""

from __future__ import annotations

import pytest

from hpc_ft.plan import plan
from hpc_ft.plan.gpus import get_gpu
from hpc_ft.plan.rules import check

V100 = get_gpu("V100-16GB")


def _by_key(req, gpu=V100):
    found = check(req, gpu)
    return {(v.key, v.severity): v for v in found}, found


def test_reference_job_breaks_no_rule_but_warns_about_bf16_on_v100(reference):
    found = check(reference, V100)
    assert [v for v in found if v.severity == "error"] == []
    (warning,) = [v for v in found if v.severity == "warning"]
    assert warning.key == "trainer.precision" and warning.value == "bf16"
    assert "no bf16 hardware" in warning.rule and "trainer.precision=16" in warning.fix


def test_world_size_must_divide_by_tp_times_pp(reference):
    v = _by_key(reference.with_(devices=3, tp=2, gbs=12, mbs=4))[0][("model.tensor_model_parallel_size", "error")]
    assert v.value == 2
    assert "world_size: 3 must be divisible by tensor_model_parallel_size: 2 times pipeline_model_parallel_size 1" in v.rule
    assert "model.tensor_model_parallel_size in {1}" in v.fix  # 3 does not divide 32 heads


def test_global_batch_must_divide_by_micro_batch_times_dp(reference):
    req = reference.with_(tp=2, gbs=20, mbs=4)  # DP = 2, 20 % 8 != 0
    v = _by_key(req)[0][("model.global_batch_size", "error")]
    assert "`global_batch_size` (20) is not divisible by `micro_batch_size (4) x data_parallel_size (2)`" in v.rule
    assert "model.global_batch_size=16 or 24" in v.fix


def test_heads_and_kv_heads_must_divide_by_tp(reference, neox, llama3):
    v = _by_key(reference.with_(arch=neox, tp=4))[0][("model.tensor_model_parallel_size", "error")]
    # the fix offers only TP values that divide the heads AND fit the 4-GPU node: never 11 or 22
    assert "num_attention_heads 22 is not divisible by 4" in v.rule and v.fix.endswith("in {1,2}")
    req = reference.with_(arch=llama3, devices=4, gpus_per_node=16, tp=16, gbs=16, num_nodes=4)
    found = _by_key(req)[1]
    assert any("num_query_groups (KV heads) 8 is not divisible by 16" in v.rule for v in found)


def test_fp16_with_o2_is_refused_with_nemos_message(reference):
    v = _by_key(reference.with_(precision="16", megatron_amp_O2=True))[0][("model.megatron_amp_O2", "error")]
    assert v.rule == (
        "fp16 training is not yet supported with O2. Please set megatron_amp_O2 to False in the model config"
    )
    assert "model.megatron_amp_O2=False" in v.fix
    # bf16 + O2 is allowed (it is the lever that halves the weights)
    assert ("model.megatron_amp_O2", "error") not in _by_key(reference.with_(megatron_amp_O2=True))[0]


def test_peft_refuses_virtual_pipeline_and_distributed_adam(reference):
    keys = _by_key(reference.with_(virtual_pipeline=2, optimizer="distributed_fused_adam"))[0]
    assert "not supported for PEFT" in keys[("model.virtual_pipeline_model_parallel_size", "error")].rule
    v = keys[("model.optim.name", "error")]
    assert v.rule == "distributed_fused_adam is not supported for PEFT. Please use fused_adam"
    # full fine-tuning may use the distributed optimizer
    full = _by_key(reference.with_(peft_scheme="none", optimizer="distributed_fused_adam"))[0]
    assert ("model.optim.name", "error") not in full


@pytest.mark.parametrize("scheme", ["adapter", "ia3", "ptuning", "lora", "selective", "sdlora", "none"])
def test_supported_peft_schemes_pass(reference, scheme):
    assert ("model.peft.peft_scheme", "error") not in _by_key(reference.with_(peft_scheme=scheme))[0]


def test_unknown_peft_scheme_is_refused_with_a_suggestion(reference):
    v = _by_key(reference.with_(peft_scheme="lorra"))[0][("model.peft.peft_scheme", "error")]
    assert "allowed: adapter, ia3, ptuning, lora, selective, sdlora, none" in v.rule
    assert "Did you mean 'lora'?" in v.fix


def test_sequence_parallel_needs_tp_above_one(reference):
    v = _by_key(reference.with_(devices=1, tp=1, sequence_parallel=True))[0][("model.sequence_parallel", "warning")]
    assert "needs tensor parallel > 1" in v.rule
    assert ("model.sequence_parallel", "warning") not in _by_key(reference.with_(sequence_parallel=True))[0]


def test_tp_across_nodes_is_refused_naming_why_and_data_parallel_across_nodes_is_not(reference):
    req = reference.with_(num_nodes=2, devices=4, tp=8, gbs=16)
    keys, found = _by_key(req)
    v = keys[("model.tensor_model_parallel_size", "error")]
    assert "spans nodes (4 GPUs per node x 2 nodes)" in v.rule and "inter-node network" in v.rule
    assert "<= 4 (TP inside a node)" in v.fix and "data parallel" in v.fix and "--force" in v.fix
    # TP inside each node, data parallel across the two: no objection
    inside = _by_key(reference.with_(num_nodes=2, devices=4, tp=4, gbs=16))[0]
    assert not [k for k in inside if k[0] == "model.tensor_model_parallel_size"]


def test_devices_cannot_exceed_the_node(reference):
    v = _by_key(reference.with_(devices=8, tp=8))[0][("trainer.devices", "error")]
    assert "a node of this cluster has 4 GPUs" in v.rule and "trainer.num_nodes=2" in v.fix


def test_bf16_on_a100_is_fine(reference):
    found = check(reference.with_(gpu="A100-80GB"), get_gpu("A100-80GB"))
    assert not [v for v in found if v.key == "trainer.precision"]


def test_hf_refuses_fp16_on_cpu_and_tensor_parallel(reference):
    cpu = get_gpu("cpu", cpu_memory_gib=16)
    req = reference.with_(backend="hf", gpu="cpu", tp=2, devices=2, precision="16", peft_scheme="lora")
    keys = _by_key(req, cpu)[0]
    assert keys[("trainer.precision", "error")].rule == "fp16 training is not supported on CPU"
    assert "data parallel only" in keys[("model.tensor_model_parallel_size", "error")].rule
    ok = reference.with_(backend="hf", gpu="cpu", tp=1, devices=1, precision="32", peft_scheme="lora", gbs=4)
    assert [v for v in check(ok, cpu) if v.severity == "error"] == []


def test_nemo_needs_a_gpu(reference):
    cpu = get_gpu("cpu", cpu_memory_gib=16)
    keys = _by_key(reference.with_(gpu="cpu", devices=1, tp=1), cpu)[0]
    assert "needs NVIDIA GPUs" in keys[("cluster.gpu.model", "error")].rule


def test_hf_backend_refuses_nemo_only_schemes_and_qlora_full_finetune(reference):
    a100 = get_gpu("A100-80GB")
    base = reference.with_(backend="hf", gpu="A100-80GB", tp=1, devices=1, gbs=4, precision="bf16")
    assert "supports lora, none" in _by_key(base.with_(peft_scheme="ptuning"), a100)[0][("model.peft.peft_scheme", "error")].rule
    v = _by_key(base.with_(peft_scheme="none", quantization="4bit"), a100)[0][("peft", "error")]
    assert "QLoRA trains adapters" in v.rule


def test_lora_targets_are_checked_and_named_for_the_backend(reference):
    req = reference.with_(peft_scheme="lora", lora_targets=("attention_qvk",))
    v = _by_key(req)[0][("model.peft.lora_tuning.target_modules", "error")]
    assert "Did you mean 'attention_qkv'?" in v.rule
    v = _by_key(reference.with_(peft_scheme="lora", lora_targets=("q_proj",)))[0][("model.peft.lora_tuning.target_modules", "error")]
    assert "NeMo way" in v.rule


def test_layers_must_divide_by_pp(reference):
    v = _by_key(reference.with_(devices=3, tp=1, pp=3, gbs=12))[0][("model.pipeline_model_parallel_size", "error")]
    assert v.rule == "num_layers 32 must be divisible by pipeline_model_parallel_size 3"
    assert v.fix.endswith("in {1}")  # divisors of 32 that also divide the 3 GPUs


def test_every_violation_names_key_value_rule_and_fix(reference):
    req = reference.with_(devices=3, tp=2, precision="16", megatron_amp_O2=True, virtual_pipeline=2, gbs=10)
    found = check(req, V100)
    assert len(found) >= 3
    for v in found:
        assert v.key and v.rule and v.fix and str(v).startswith(f"{v.key}=")


def test_plan_reports_violations_but_still_estimates(reference):
    result = plan(reference.with_(precision="16", megatron_amp_O2=True), alternatives=False)
    assert not result.ok and result.estimate is not None
    assert result.reason.startswith("model.megatron_amp_O2=True: fp16 training is not yet supported with O2")


def test_nemo_warns_for_families_it_cannot_convert(reference, neox, mistral):
    v = _by_key(reference.with_(arch=neox, tp=2))[0][("backend", "warning")]
    assert "no HF-to-NeMo converter for model_type gpt_neox" in v.rule and "backend=hf" in v.fix
    assert ("backend", "warning") not in _by_key(reference.with_(arch=mistral))[0]
