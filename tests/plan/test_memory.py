"""The memory model: the reference facts (§4.3), and how each lever moves each component."""

from __future__ import annotations

import pytest

from hpc_ft.plan import COMPONENTS, PlanRequest, estimate, plan
from hpc_ft.plan.adapters import trainable_count


def test_reference_one_v100_does_not_fit_because_of_the_weights(reference):
    result = plan(reference.with_(devices=1, tp=1), alternatives=False)
    assert not result.fits
    bd = result.breakdown
    assert bd["weights"] > result.capacity_gib  # fp32 weights alone: 25.1 GiB > 15.8 GiB
    assert 25.0 < bd["weights"] < 25.2
    assert result.reason.startswith("base weights (fp32, model.megatron_amp_O2=False) alone need 25.10 GiB per device")
    assert "V100-16GB" in result.reason


def test_reference_four_v100_tp4_mbs4_fits(reference):
    result = plan(reference, alternatives=False)
    assert result.fits and result.ok
    assert result.capacity_gib == pytest.approx(15.78, abs=0.01)
    assert 11.0 < result.per_gpu_gib < 14.2  # reference §4.3: ~13-14.5 GB
    assert result.headroom_gib >= 0.1 * result.capacity_gib
    bd = result.breakdown
    assert bd["weights"] == pytest.approx(6.74e9 / 2**30, rel=0.02)  # 4 B x P / 4
    assert bd["weight_copies"] == pytest.approx(3.3e9 / 2**30, rel=0.05)  # 2 B x P_layers / 4 (+ LM head)
    assert bd["trainable_params"] + bd["gradients"] + bd["optimizer_states"] < 0.1


def test_reference_at_full_max_seq_length_needs_recompute(reference):
    long = reference.with_(seq_len=2048)
    assert not estimate(long).fits
    assert estimate(long.with_(recompute="full")).fits


def test_breakdown_has_every_component_in_order(reference):
    assert tuple(estimate(reference).breakdown) == COMPONENTS
    assert sum(estimate(reference).breakdown.values()) == pytest.approx(estimate(reference).per_gpu_gib)


def test_o2_with_bf16_halves_weights_and_drops_the_copies(reference):
    o1, o2 = estimate(reference), estimate(reference.with_(megatron_amp_O2=True))
    assert o2.breakdown["weights"] == pytest.approx(o1.breakdown["weights"] / 2, rel=1e-6)
    assert o1.breakdown["weight_copies"] > 3 and o2.breakdown["weight_copies"] == 0


def test_precision_32_keeps_fp32_weights_without_copies(reference):
    e = estimate(reference.with_(precision="32"))
    assert e.breakdown["weight_copies"] == 0
    assert e.breakdown["weights"] == pytest.approx(estimate(reference).breakdown["weights"])


def test_weights_split_by_tp(reference):
    w = {tp: estimate(reference.with_(tp=tp)).breakdown["weights"] for tp in (1, 2, 4)}
    assert w[1] / w[2] == pytest.approx(2, rel=0.01) and w[1] / w[4] == pytest.approx(4, rel=0.02)


def test_unfused_attention_on_v100_pays_the_quadratic_term(reference):
    base = reference.with_(seq_len=2048, mbs=1)
    v100 = estimate(base).breakdown["activations"]
    a100 = estimate(base.with_(gpu="A100-40GB")).breakdown["activations"]
    v100_no_flash = estimate(base.with_(gpu="A100-40GB", flash_attention=False)).breakdown["activations"]
    assert v100 > 1.3 * a100
    assert v100_no_flash == pytest.approx(v100)


def test_activations_match_korthikanti_with_dropout(reference, elyza):
    # s b h (34 + 5 a s / h) per layer, no TP, dropout on: the paper's formula (reference §4.2).
    # SwiGLU changes the MLP share from 19 sbh to 3 + 6 f/h sbh; compare on the attention part.
    s, b, h, a, L = 2048, 1, 4096, 32, 32
    req = reference.with_(tp=1, devices=1, seq_len=s, mbs=b, dropout=0.1, peft_scheme="lora", gbs=16)
    act = estimate(req).breakdown["activations"] * 2**30
    swiglu_mlp = (3 + 6 * elyza.ffn_hidden / h) - 19
    expected = L * s * b * h * (34 + swiglu_mlp + 5 * a * s / h)
    assert act == pytest.approx(expected, rel=1e-3)


def test_tp_sequence_parallel_and_recompute_shrink_activations(reference):
    base = reference.with_(seq_len=2048, mbs=4)
    act = lambda r: estimate(r).breakdown["activations"]  # noqa: E731
    none = act(base)
    sp = act(base.with_(sequence_parallel=True))
    selective = act(base.with_(recompute="selective"))
    full = act(base.with_(recompute="full"))
    assert sp < none and selective < none and full < selective
    assert act(base.with_(tp=1, devices=1)) > none
    # full recompute keeps 2 sbh per layer (reference §4.2: 2.2 GB here) plus the part of one
    # layer's working set that exceeds the loss buffers (freed before layers are recomputed)
    s, b, h, L = 2048 + 10, 4, 4096, 32
    logits = estimate(base).breakdown["logits"]
    assert full == pytest.approx((L * 2 * s * b * h) / 2**30 + max(0, none / L - logits), rel=1e-6)


def test_micro_batch_scales_activations_linearly(reference):
    a1 = estimate(reference.with_(mbs=1)).breakdown["activations"]
    a4 = estimate(reference.with_(mbs=4)).breakdown["activations"]
    assert a4 == pytest.approx(4 * a1)


def test_pipeline_first_stage_holds_micro_batches_in_flight(reference):
    pp = estimate(reference.with_(tp=1, pp=4, mbs=1))
    assert pp.stage in ("first", "last")
    # 8 layers per stage x 4 micro-batches in flight = as many layer activations as TP=1 PP=1
    flat = estimate(reference.with_(tp=1, pp=1, devices=1, mbs=1)).breakdown["activations"]
    assert pp.breakdown["activations"] == pytest.approx(flat, rel=0.01)


def test_lora_parameter_counts_match_the_reference(elyza):
    qkv = trainable_count(elyza, "lora", lora_r=32, lora_targets=("attention_qkv",)).total(elyza)
    all4 = trainable_count(elyza, "lora", lora_r=32, lora_targets=("all",)).total(elyza)
    assert qkv == 16_777_216  # reference §4.1: 16.8 M
    assert all4 == 67_371_008  # reference §4.1: 67.4 M
    hf_qv = trainable_count(elyza, "lora", lora_r=8, lora_targets=("q_proj", "v_proj")).total(elyza)
    assert hf_qv == 32 * 2 * 8 * (4096 + 4096)


def test_ptuning_prompt_encoder_size(elyza):
    n = trainable_count(elyza, "ptuning", virtual_tokens=10, bottleneck_dim=1024, embedding_dim=1024).total(elyza)
    assert n == 10 * 1024 + 1024 * 1024 + 1024 + 1024 * 4096 + 4096  # 5.26 M (reference: 5.3 M)


def test_gqa_lora_counts_use_kv_width(llama3):
    n = trainable_count(llama3, "lora", lora_r=16, lora_targets=("k_proj",)).total(llama3)
    assert n == 32 * 16 * (4096 + 1024)


def test_full_finetune_adds_grads_and_adam_states(reference):
    full = estimate(reference.with_(peft_scheme="none"))
    bd = full.breakdown
    assert bd["gradients"] == pytest.approx(bd["weights"], rel=0.01)  # fp32 grads
    assert bd["optimizer_states"] == pytest.approx(2 * bd["weights"], rel=0.01)  # Adam m, v
    assert not full.fits


def test_lora_default_targets_differ_by_backend(reference):
    nemo = estimate(reference.with_(peft_scheme="lora")).breakdown["trainable_params"]
    nemo_qkv = estimate(reference.with_(peft_scheme="lora", lora_targets=("attention_qkv",))).breakdown["trainable_params"]
    assert nemo > 3 * nemo_qkv  # NeMo 24.03 default adapts all four linear layers


def hf(arch, **kw) -> PlanRequest:
    base = dict(arch=arch, backend="hf", gpu="A100-80GB", devices=1, tp=1, pp=1, mbs=1, gbs=8,
                seq_len=2048, precision="bf16", peft_scheme="lora", lora_r=16, optimizer="adamw_torch")
    return PlanRequest(**{**base, **kw})


def test_hf_weights_by_dtype_and_4bit(llama3):
    bf16 = estimate(hf(llama3)).breakdown["weights"]
    fp32 = estimate(hf(llama3, hf_weights_dtype="fp32")).breakdown["weights"]
    q4 = estimate(hf(llama3, quantization="4bit")).breakdown["weights"]
    assert bf16 == pytest.approx(llama3.num_params * 2 / 2**30)
    assert fp32 == pytest.approx(2 * bf16)
    # NF4 linears (~0.52 B/param incl. constants) + bf16 embeddings and LM head
    assert 5.0 < q4 < 5.6
    assert estimate(hf(llama3, quantization="4bit", double_quant=False)).breakdown["weights"] > q4


def test_hf_4bit_keeps_every_linear_input(llama3):
    lora = estimate(hf(llama3, lora_targets=("q_proj", "v_proj"))).breakdown["activations"]
    qlora = estimate(hf(llama3, lora_targets=("q_proj", "v_proj"), quantization="4bit")).breakdown["activations"]
    s, h, f, L = 2048, 4096, 14336, 32
    extra = L * 2 * s * (h + h + f)  # o_proj, gate/up and down_proj inputs, bf16
    assert (qlora - lora) * 2**30 == pytest.approx(extra, rel=1e-6)


def test_hf_fp32_weights_under_autocast_keep_copies(llama3):
    assert estimate(hf(llama3, hf_weights_dtype="fp32")).breakdown["weight_copies"] > 10
    assert estimate(hf(llama3)).breakdown["weight_copies"] == 0


def test_hf_lora_states_are_16_bytes_per_adapter_param(llama3):
    bd = estimate(hf(llama3, lora_targets=("q_proj", "v_proj"))).breakdown
    n = 32 * 16 * ((4096 + 4096) + (4096 + 1024))
    assert (bd["trainable_params"] + bd["gradients"] + bd["optimizer_states"]) * 2**30 == pytest.approx(16 * n)


def test_hf_gradient_checkpointing_and_eager_attention(llama3):
    act = lambda **kw: estimate(hf(llama3, mbs=2, **kw)).breakdown["activations"]  # noqa: E731
    assert act(gradient_checkpointing=True) < 0.2 * act()
    assert act(hf_attention="eager") > 1.5 * act()


def test_hf_logits_dominate_for_a_large_vocabulary(llama3):
    bd = estimate(hf(llama3, mbs=4)).breakdown
    assert bd["logits"] == pytest.approx(12 * 2048 * 4 * 128256 / 2**30)


def test_cpu_estimate_is_host_rss_against_host_memory(neox):
    req = hf(neox, gpu="cpu", cpu_memory_gib=64.0, precision="32", seq_len=256, mbs=1)
    e = estimate(req)
    assert e.capacity_gib == 64.0
    assert e.breakdown["weights"] == pytest.approx(neox.num_params * 4 / 2**30)
    assert any("resident set" in n for n in e.notes)
    fixed = estimate(req.with_(cpu_fixed_mmap_threshold=True))
    assert fixed.per_gpu_gib < e.per_gpu_gib
    # two ranks on the host share its memory
    assert estimate(req.with_(devices=2, gbs=2)).capacity_gib == 32.0


def test_headroom_is_configurable(reference):
    tight = estimate(reference.with_(headroom=0.0))
    loose = estimate(reference.with_(headroom=0.3))
    assert tight.fits and not loose.fits
    assert loose.margin_gib == pytest.approx(0.3 * loose.capacity_gib)


def test_hf_default_weight_dtype_mirrors_the_hf_runtime(llama3):
    # a LoRA base sits in the 16-bit type trainer.precision asks for (fp16, bf16, on the CPU too), as
    # hf_runtime.train.base_weight_dtype loads it; full fine-tuning keeps fp32 master weights
    assert estimate(hf(llama3)).breakdown["weight_copies"] == 0
    fp16 = estimate(hf(llama3, gpu="V100-32GB", precision="16")).breakdown
    assert fp16["weights"] == pytest.approx(llama3.num_params * 2 / 2**30) and fp16["weight_copies"] == 0
    cpu = estimate(hf(llama3, gpu="cpu", cpu_memory_gib=256.0, precision="bf16")).breakdown
    assert cpu["weights"] == pytest.approx(llama3.num_params * 2 / 2**30)
    full = estimate(hf(llama3, gpu="H100-80GB", precision="bf16", peft_scheme="none")).breakdown
    assert full["weights"] == pytest.approx(llama3.num_params * 4 / 2**30) and full["weight_copies"] > 0
