"""LoRA target names per model family (hpc_ft.backends.hf.lora_targets): NeMo's names and `all` mean the
same layers on every family; an unknown name lists the names that work for that model."""

from __future__ import annotations

import pytest

from hpc_ft.backends.hf import lora_targets
from hpc_ft.errors import UserError
from hpc_ft.plan.arch import FAMILIES


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_all_and_all_linear_are_every_linear_layer_of_the_family(family):
    every = list(FAMILIES[family].hf_modules)
    assert lora_targets(["all"], family) == lora_targets(["all-linear"], family) == every
    nemo_four = lora_targets(["attention_qkv", "attention_dense", "mlp_fc1", "mlp_fc2"], family)
    assert sorted(nemo_four) == sorted(every)


def test_gpt_neox_gets_its_own_module_names():
    assert lora_targets(["all"], "gpt_neox") == ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
    assert lora_targets(["attention_qkv"], "gpt_neox") == ["query_key_value"]
    assert lora_targets(["attention_qkv"], "llama") == ["q_proj", "k_proj", "v_proj"]
    assert lora_targets(["mlp_fc1"], "phi3") == ["gate_up_proj"]


def test_a_name_no_layer_has_is_refused_listing_the_names_that_work():
    with pytest.raises(UserError) as exc:
        lora_targets(["q_proj"], "gpt_neox")
    message = str(exc.value)
    assert "'q_proj' names no layer of a gpt_neox model" in message
    assert "query_key_value" in message and "all" in message and "attention_qkv" in message
    assert "\n" not in message


@pytest.mark.parametrize("fixture", ["rinna-japanese-gpt-neox-3.6b", "qwen2-0.5b", "phi3-mini-4k", "gemma-2b"])
def test_the_planner_takes_the_default_all_targets_for_every_family(fixture, tmp_path):
    import shutil
    from pathlib import Path

    from hpc_ft.compose.compose import compose_job
    from hpc_ft.submit.preflight import plan_spec

    folder = tmp_path / fixture
    folder.mkdir()
    shutil.copy(Path(__file__).parents[1] / "plan" / "fixtures" / f"{fixture}.json", folder / "config.json")
    spec = compose_job(["model=hf", f"model.hf_path={folder}", "cluster.gpu.model=A100-80GB",
                        "cluster.gpu.per_node=1", "trainer.precision=bf16"], work_dir=str(tmp_path))
    result = plan_spec(spec, alternatives=False, suggest=False)
    assert not [v for v in result.violations if "lora" in v.key.lower() or "target" in v.key], result.violations
    family = result.request.arch.family
    assert result.request.lora_targets == tuple(FAMILIES[family].hf_modules)  # [all]: every linear layer
