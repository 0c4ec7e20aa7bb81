"""Rendering NeMo's HF <-> .nemo conversion commands (they run inside the NeMo container)."""

from __future__ import annotations

import json

import pytest

from hpc_ft.errors import UserError
from hpc_ft.models.convert import (
    commands_text,
    detect_family,
    export_commands,
    hf_to_nemo_argv,
    merge_lora_nemo_argv,
)

HF = "./models/ELYZA-japanese-Llama-2-7b"


@pytest.fixture
def llama_dir(tmp_path):
    d = tmp_path / "ELYZA-japanese-Llama-2-7b"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "num_attention_heads": 32}))
    return d


def test_hf_to_nemo_is_the_tutorial_command():
    argv = hf_to_nemo_argv(HF, f"{HF}/ELYZA-japanese-Llama-2-7b.nemo", family="llama")
    assert argv == [
        "python",
        "/opt/NeMo/scripts/checkpoint_converters/convert_llama_hf_to_nemo.py",
        f"--input_name_or_path={HF}",
        f"--output_path={HF}/ELYZA-japanese-Llama-2-7b.nemo",
        "--precision=16",
    ]


def test_family_is_read_from_config_json(llama_dir, tmp_path):
    assert detect_family(llama_dir) == "llama"
    assert hf_to_nemo_argv(llama_dir, tmp_path / "m.nemo")[1].endswith("/convert_llama_hf_to_nemo.py")
    mistral = tmp_path / "mistral"
    mistral.mkdir()
    (mistral / "config.json").write_text('{"model_type": "mistral"}')
    assert hf_to_nemo_argv(mistral, tmp_path / "m.nemo")[1].endswith("/convert_mistral_7b_hf_to_nemo.py")


def test_unsupported_or_unreadable_family(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt_neox"}')
    with pytest.raises(UserError, match="gpt_neox"):
        detect_family(tmp_path)
    with pytest.raises(UserError, match="pass family"):
        detect_family(tmp_path / "absent")
    with pytest.raises(UserError, match="Did you mean 'llama'"):
        hf_to_nemo_argv(HF, "x.nemo", family="lama")


def test_output_must_be_a_nemo_file_and_precision_known():
    with pytest.raises(UserError, match=".nemo"):
        hf_to_nemo_argv(HF, "out_dir", family="llama")
    with pytest.raises(UserError, match="V100: use 16"):
        hf_to_nemo_argv(HF, "x.nemo", family="llama", precision="fp8")


def test_full_model_export_uses_the_reference_hf_folder(llama_dir, tmp_path):
    out = tmp_path / "hf-out"
    (cmd,) = export_commands(tmp_path / "model.nemo", out, hf_reference_dir=llama_dir)
    assert cmd[:2] == ["python", "/opt/NeMo/scripts/checkpoint_converters/convert_llama_nemo_to_hf.py"]
    assert f"--input_name_or_path={tmp_path / 'model.nemo'}" in cmd
    assert f"--hf_input_path={llama_dir}" in cmd and f"--hf_output_path={out}" in cmd
    assert f"--input_tokenizer={llama_dir}" in cmd and f"--hf_output_tokenizer={out}" in cmd
    weights = [a for a in cmd if a.startswith("--output_path=")][0]
    assert weights.endswith("pytorch_model.bin") and str(out) + "/" not in weights  # kept out of the HF folder


def test_lora_export_merges_first_with_the_training_tp(llama_dir, tmp_path):
    merge, export = export_commands(
        tmp_path / "base.nemo", tmp_path / "hf-out", hf_reference_dir=llama_dir,
        peft_scheme="lora", peft_path=tmp_path / "lora.nemo", tensor_parallel=4,
    )
    assert merge[1] == "/opt/NeMo/scripts/nlp_language_modeling/merge_lora_weights/merge.py"
    for arg in ("trainer.devices=4", "tensor_model_parallel_size=4", "pipeline_model_parallel_size=1",
                f"gpt_model_file={tmp_path / 'base.nemo'}", f"lora_model_path={tmp_path / 'lora.nemo'}"):
        assert arg in merge
    merged = [a.split("=", 1)[1] for a in merge if a.startswith("merged_model_path=")][0]
    assert f"--input_name_or_path={merged}" in export


def test_lora_export_refuses_pipeline_parallel(llama_dir, tmp_path):
    with pytest.raises(UserError, match="only PP=1"):
        export_commands(tmp_path / "b.nemo", tmp_path / "o", hf_reference_dir=llama_dir, peft_scheme="lora",
                        peft_path=tmp_path / "l.nemo", pipeline_parallel=2)


@pytest.mark.parametrize("scheme", ["ptuning", "p-tuning"])
def test_ptuning_has_no_hf_export(llama_dir, tmp_path, scheme):
    with pytest.raises(UserError, match="p-tuning has no Hugging Face export") as info:
        export_commands(tmp_path / "b.nemo", tmp_path / "o", hf_reference_dir=llama_dir, peft_scheme=scheme,
                        peft_path=tmp_path / "p.nemo")
    assert "megatron_gpt_generate.py" in str(info.value)


def test_other_peft_schemes_and_missing_lora_path(llama_dir, tmp_path):
    with pytest.raises(UserError, match="only LoRA"):
        export_commands(tmp_path / "b.nemo", tmp_path / "o", hf_reference_dir=llama_dir, peft_scheme="ia3")
    with pytest.raises(UserError, match="LoRA .nemo"):
        export_commands(tmp_path / "b.nemo", tmp_path / "o", hf_reference_dir=llama_dir, peft_scheme="lora")


def test_mistral_export_names_the_local_reference_not_the_hub(tmp_path):
    ref = tmp_path / "mistral"
    ref.mkdir()
    (ref / "config.json").write_text('{"model_type": "mistral"}')
    (cmd,) = export_commands(tmp_path / "m.nemo", tmp_path / "out", hf_reference_dir=ref)
    assert cmd[1].endswith("/convert_mistral_7b_nemo_to_hf.py")
    assert f"--hf_model_name={ref}" in cmd and f"--output_path={tmp_path / 'out'}" in cmd


def test_hydra_override_paths_are_checked():
    with pytest.raises(UserError, match="gpt_model_file"):
        merge_lora_nemo_argv("/my models/base.nemo", "/l.nemo", "/m.nemo")


def test_commands_text_quotes_each_argument():
    text = commands_text([["python", "/opt/x.py", "--input_name_or_path=/a b/c"]])
    assert text == "python /opt/x.py '--input_name_or_path=/a b/c'\n"


@pytest.mark.parametrize("model_type, script, extra", [
    ("llama", "convert_llama_hf_to_nemo.py", []),
    ("mistral", "convert_mistral_7b_hf_to_nemo.py", []),
    ("qwen2", "convert_qwen2_hf_to_nemo.py", []),
    ("gemma", "convert_gemma_hf_to_nemo.py", ["--tokenizer_path"]),
])
def test_model_convert_job_follows_config_json_and_names_the_nemo_after_the_folder(tmp_path, model_type, script, extra):
    from hpc_ft.backends.nemo import convert_steps
    from hpc_ft.compose.compose import compose_job

    folder = tmp_path / f"my-{model_type}-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    spec = compose_job(["backend=nemo", "model=hf", f"model.hf_path={folder}"], work_dir=str(tmp_path))
    assert spec.model.name == folder.name
    (step,) = convert_steps(spec)
    argv = [str(a) for a in step.argv]
    assert any(a.endswith("/" + script) for a in argv), argv
    assert f"--output_path={folder}/{folder.name}.nemo" in argv
    assert all(any(a.startswith(flag) for a in argv) for flag in extra)


def test_model_convert_refuses_a_family_nemo_cannot_convert_naming_config_json(tmp_path):
    from hpc_ft.backends.nemo import convert_steps
    from hpc_ft.compose.compose import compose_job

    folder = tmp_path / "japanese-gpt-neox-3.6b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    spec = compose_job(["backend=nemo", "model=hf", f"model.hf_path={folder}"], work_dir=str(tmp_path))
    with pytest.raises(UserError, match=r"config.json: model_type=gpt_neox: NeMo 1.x has no HF-to-NeMo converter.*backend=hf"):
        convert_steps(spec)


def test_backend_convert_script_overrides_the_family_script(tmp_path):
    from hpc_ft.backends.nemo import convert_steps
    from hpc_ft.compose.compose import compose_job

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    spec = compose_job(["backend=nemo", "model=hf", f"model.hf_path={folder}", "backend.convert_script=/opt/x/conv.py"],
                       work_dir=str(tmp_path))
    assert [str(a) for a in convert_steps(spec)[0].argv][1] == "/opt/x/conv.py"
