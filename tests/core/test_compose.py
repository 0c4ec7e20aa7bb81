"""Composition: defaults, NeMo-named keys, presets, and the typed schema refusing bad input."""

from __future__ import annotations

import pytest

from hpc_ft.compose import compose_job
from hpc_ft.compose.points import point_overrides as sweep_points
from hpc_ft.errors import UserError


def test_defaults_are_the_embedded_local_hf_job(work_dir):
    spec = compose_job([f"work_dir={work_dir}"])
    assert spec.cluster.executor == "local"
    assert spec.backend.name == "hf"
    assert spec.model.name == "tiny_llama"
    assert spec.model.peft.peft_scheme == "lora"
    assert spec.data.train_file == f"{work_dir}/data/jcommonsenseqa-v1.1/train-v1.1.jsonl"
    assert spec.exp_manager.exp_dir == f"{work_dir}/results"


def test_relative_work_dir_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = compose_job(["work_dir=sub"])
    assert spec.work_dir == str(tmp_path / "sub")
    assert spec.model.hf_path == str(tmp_path / "sub" / "models" / "tiny_llama")


def test_nemo_named_keys_override(work_dir):
    spec = compose_job([f"work_dir={work_dir}", "trainer.max_steps=7", "model.optim.lr=3e-4",
                        "model.micro_batch_size=2", "exp_manager.early_stopping_callback_params.patience=9"])
    assert spec.trainer.max_steps == 7
    assert spec.model.optim.lr == pytest.approx(3e-4)
    assert spec.model.micro_batch_size == 2
    assert spec.exp_manager.early_stopping_callback_params.patience == 9


@pytest.mark.parametrize("form", ["experiment=nig_elyza_ptuning", "+experiment=nig_elyza_ptuning"])
def test_reference_preset_with_or_without_plus(work_dir, form):
    spec = compose_job([f"work_dir={work_dir}", form])
    assert spec.backend.name == "nemo" and spec.cluster.name == "nig"
    assert spec.model.tensor_model_parallel_size == 4 and spec.model.micro_batch_size == 4
    assert spec.trainer.precision == "bf16" and spec.model.optim.lr == pytest.approx(1e-5)
    assert spec.exp_manager.name == "elyza_7b_ptuning"
    assert spec.model.restore_from_path.startswith(str(work_dir))


@pytest.mark.parametrize(
    "override, expected",
    [
        ("trainer.max_step=5", "trainer.max_step: unknown key. Did you mean 'trainer.max_steps'?"),
        ("cluster=nigg", "cluster=nigg: no such option in group 'cluster'. Did you mean 'nig'?"),
        ("trainer.max_steps=abc", "trainer.max_steps"),
        ("trainer.max_steps=0", "trainer.max_steps=0: must be >= 1"),
        ("trainer.precision=8", "trainer.precision=8: not one of"),
        ("trainer.max_steps=", "trainer.max_steps"),
        ("trainer.max_steps=[1,2", "syntax error"),
        ("cluster.time=forever", "cluster.time=forever"),
        ("trainer.val_check_interval=1.5", "trainer.val_check_interval=1.5"),
    ],
)
def test_bad_input_is_a_one_line_user_error_naming_the_key(work_dir, override, expected):
    with pytest.raises(UserError) as err:
        compose_job([f"work_dir={work_dir}", override])
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_sweep_points_expand_hydra_multirun_grammar():
    pts = sweep_points(["model.tensor_model_parallel_size=1,2", "model.micro_batch_size=range(1,3)", "trainer.max_steps=5"])
    assert len(pts) == 4
    assert ["model.tensor_model_parallel_size=2", "model.micro_batch_size=2", "trainer.max_steps=5"] in pts
