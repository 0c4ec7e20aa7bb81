"""model.data.train_ds.packed_sequence and backend.group_by_length as the jobs render them: hf flags, NeMo's packing step and its refusals."""

from __future__ import annotations

import pytest

from hpc_ft.backends import hf, nemo
from hpc_ft.compose import compose_job
from hpc_ft.errors import UserError
from hpc_ft.submit.preflight import preflight

NEMO_LORA = ["experiment=nig_elyza_ptuning", "peft=lora", "model.micro_batch_size=1",
             "model.data.train_ds.packed_sequence=true"]


def _train_argv(spec, run_dir="/runs/r1"):
    backend = hf if spec.backend.name == "hf" else nemo
    return [str(t) for t in backend.train_steps(spec, run_dir)[-1].argv]


def test_hf_packs_when_asked_and_groups_by_length_unless_turned_off(work_dir):
    default = _train_argv(compose_job([f"work_dir={work_dir}"]))
    assert "--packed-sequence" not in default and "--group-by-length" not in default  # the job's default: on
    packed = _train_argv(compose_job([f"work_dir={work_dir}", "model.data.train_ds.packed_sequence=true"]))
    assert "--packed-sequence" in packed
    off = _train_argv(compose_job([f"work_dir={work_dir}", "backend.group_by_length=false"]))
    assert off[off.index("--group-by-length") + 1] == "off"
    assert hf.prepare_steps(compose_job([f"work_dir={work_dir}"]), "/runs/r1") == []


def test_nemo_refuses_group_by_length_naming_the_key(work_dir):
    with pytest.raises(UserError, match=r"backend.group_by_length=False: the nemo backend has no length-grouped"):
        compose_job([f"work_dir={work_dir}", "experiment=nig_elyza_ptuning", "backend.group_by_length=false"])


def test_nemo_packing_step_writes_the_npy_that_training_reads(work_dir):
    spec = compose_job([f"work_dir={work_dir}", *NEMO_LORA])
    (step,) = nemo.prepare_steps(spec, "/runs/r1")
    argv = [str(t) for t in step.argv]
    script = argv.index("/opt/NeMo/scripts/nlp_language_modeling/prepare_packed_ft_dataset.py")
    assert argv[script - 1] == "python"
    overrides = dict(a.split("=", 1) for a in argv[script + 1:])
    assert overrides["+output_dir"] == "/runs/r1/data" and overrides["+pack_sizes"] == "[2048]"
    assert overrides["model.data.train_ds.file_names"] == f"[{spec.data.train_file}]"
    assert overrides["model.restore_from_path"] == spec.model.restore_from_path
    assert (overrides["trainer.devices"], overrides["model.tensor_model_parallel_size"]) == ("1", "1")
    assert step.skip_if_exists == "/runs/r1/data/packed_2048_seed0.npy"  # a resubmitted run does not pack again
    train = _train_argv(spec)
    assert "model.data.train_ds.file_names=[/runs/r1/data/packed_2048_seed0.npy]" in train
    assert "+model.data.train_ds.packed_sequence=True" in train
    unpacked = _train_argv(compose_job([f"work_dir={work_dir}", "experiment=nig_elyza_ptuning"]))
    assert not any("packed" in a for a in unpacked)
    assert nemo.prepare_steps(compose_job([f"work_dir={work_dir}", "experiment=nig_elyza_ptuning"]), "/r") == []


def test_nemo_container_without_the_packing_script_is_refused_with_its_version(work_dir):
    spec = compose_job([f"work_dir={work_dir}", *NEMO_LORA, "container.name=nemo_24.01",
                        "container.image=/images/nemo_24.01.sif"])
    with pytest.raises(UserError) as err:
        nemo.prepare_steps(spec, "/runs/r1")
    message = str(err.value)
    assert "\n" not in message and "container 24.01 has no prepare_packed_ft_dataset.py" in message


def test_preflight_refuses_packing_the_reference_ptuning_job(work_dir):
    base = [f"work_dir={work_dir}", "experiment=nig_elyza_ptuning", "model.data.train_ds.packed_sequence=true"]
    with pytest.raises(UserError, match="Micro batch size must be 1 if using packed sequence"):
        preflight(compose_job(base))
    with pytest.raises(UserError, match="P-Tuning with packed sequence is not supported"):
        preflight(compose_job(base + ["model.micro_batch_size=1"]))


def test_nemo_packing_is_its_own_job_and_training_waits_on_it(work_dir, tmp_path):
    from hpc_ft.executors.slurm import AFTEROK_PLACEHOLDER
    from hpc_ft.submit.launch import render_scripts
    from tests.core.sbatch_parse import sbatch_options

    spec = compose_job([f"work_dir={work_dir}", *NEMO_LORA, "eval=true"])
    scripts = render_scripts(spec, tmp_path, "r1", with_eval=True)
    assert list(scripts) == ["pack", "train", "eval"]
    pack, train = sbatch_options(scripts["pack"].text), sbatch_options(scripts["train"].text)
    assert pack["--gres"] == "gpu:1" and "--dependency" not in pack
    # the placeholder is filled with the job id submitted just before (the pack job) when submitting
    assert train["--dependency"] == AFTEROK_PLACEHOLDER and train["--gres"] == "gpu:4"
    assert "prepare_packed_ft_dataset.py" in scripts["pack"].text
    assert "prepare_packed_ft_dataset.py" not in scripts["train"].text
    unpacked = render_scripts(compose_job([f"work_dir={work_dir}", "experiment=nig_elyza_ptuning"]), tmp_path, "r2",
                              with_eval=False)
    assert list(unpacked) == ["train"]
