"""The planner never contradicts itself: no FITS above errors, suggestions that fit the node and the job,
PP beyond the layers named as such, and levers that are real overrides (each one composed and re-planned)."""

from __future__ import annotations

import json

import pytest

from hpc_ft.compose import compose_job
from hpc_ft.plan import get_gpu, plan, to_dict, to_text
from hpc_ft.plan.rules import check
from hpc_ft.submit.preflight import plan_request, plan_spec
from tests.plan.conftest import fixture_path

V100 = get_gpu("V100-16GB")


def test_rinna_22_heads_at_tp4_is_refused_everywhere_and_never_said_to_fit(reference, neox):
    result = plan(reference.with_(arch=neox, tp=4))
    assert result.memory_fits  # memory alone would fit: the old report printed "Verdict: FITS" here
    assert not result.fits and not result.ok
    d = to_dict(result)
    assert d["fits"] is False and d["ok"] is False and d["memory_fits"] is True
    text = to_text(result)
    assert "Verdict: FITS" not in text
    verdict = next(line for line in text.splitlines() if line.startswith("Verdict:"))
    assert verdict.startswith("Verdict: REFUSED") and "rule error" in verdict
    assert text.index("Verdict:") < text.index("Errors:")


def test_suggested_tp_values_fit_the_node_and_the_job(reference, neox):
    result = plan(reference.with_(arch=neox, tp=4))
    fixes = " ".join(v.fix for v in result.violations)
    assert "{1,2}" in fixes and "11" not in fixes and "22" not in fixes
    for alt in result.alternatives:
        assert alt.tp in (1, 2) and alt.tp * alt.pp <= reference.devices
    assert result.best is not None and result.best.tp in (1, 2)


def test_pp_beyond_the_layer_count_is_named_as_such_not_blamed_on_tp(reference):
    result = plan(reference.with_(tp=1, pp=64))
    first = result.violations[0]
    assert first.key == "model.pipeline_model_parallel_size"
    assert "larger than the model's 32 layers" in first.rule
    assert not any(v.key == "model.tensor_model_parallel_size" for v in result.violations)
    assert "Verdict: REFUSED" in to_text(result)


def test_world_size_error_blames_pp_when_pp_does_not_divide_the_gpus(reference):
    (v,) = [v for v in check(reference.with_(tp=1, pp=8), V100) if "world_size" in v.rule]
    assert v.key == "model.pipeline_model_parallel_size"
    assert "{1,2,4}" in v.fix


def test_qlora_on_a_host_without_gpu_is_a_rule_error_naming_a_real_fix(reference):
    cpu = get_gpu("cpu", cpu_memory_gib=64)
    req = reference.with_(backend="hf", gpu="cpu", tp=1, devices=1, gbs=4, precision="32", peft_scheme="lora",
                          quantization="4bit", lora_targets=None)
    errors = [v for v in check(req, cpu) if v.severity == "error"]
    (v,) = [v for v in errors if v.key == "peft"]
    assert str(v).startswith("peft=qlora:") and "peft=lora" in v.fix


# ---- every lever composes, and means to the planner what it says -----------------------------------
NEMO_1_GPU = ["cluster=nig", "backend=nemo", "model=elyza_llama2_7b", "trainer.devices=1",
              "model.tensor_model_parallel_size=1", "model.global_batch_size=16", "model.micro_batch_size=4",
              "trainer.precision=16"]
HF_ON_V100 = ["cluster=nig", "backend=hf", "model=elyza_llama2_7b", "trainer.devices=1", "model.global_batch_size=8",
              "model.micro_batch_size=8", "trainer.precision=32"]


@pytest.mark.parametrize("base", [NEMO_1_GPU, HF_ON_V100], ids=["nemo", "hf"])
def test_every_lever_is_a_set_of_overrides_that_composes_and_replans_to_what_it_promised(base, tmp_path):
    base = [*base, f"work_dir={tmp_path}"]
    result = plan_spec(compose_job(base))
    assert result is not None and not result.ok and result.levers
    for lever in result.levers:
        spec = compose_job(base + lever.overrides.split())  # raises UserError on an unknown key
        again = plan_spec(spec, alternatives=False, suggest=False)
        assert again.ok == lever.ok, lever.overrides
        assert again.per_gpu_gib == pytest.approx(lever.per_gpu_gib, rel=0.02), lever.overrides
        req = plan_request(spec)
        assert req != plan_request(compose_job(base)), f"{lever.overrides} changed nothing the planner sees"


def test_plan_json_of_the_cli_says_fits_false_when_a_rule_error_stands(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "hpc_ft.cli", "plan", "--json", "cluster=nig", "backend=nemo", "model=elyza_llama2_7b",
         f"model.hf_config={fixture_path('rinna-japanese-gpt-neox-3.6b')}", "trainer.devices=4",
         "model.tensor_model_parallel_size=4", "model.global_batch_size=16", "model.micro_batch_size=4",
         f"work_dir={tmp_path}"],
        capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    d = json.loads(proc.stdout)
    assert d["fits"] is False and d["ok"] is False
    assert any(v["key"] == "model.tensor_model_parallel_size" for v in d["violations"])
