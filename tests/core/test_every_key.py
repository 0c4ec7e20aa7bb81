"""Every key means what it says: each leaf key of the composed config, changed, changes the rendered job
of each backend, or that backend refuses it in one line naming the key and the backend, or it is on
the short documented list of keys outside the job (hpc_ft.backends.keys)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError

from hpc_ft.backends import backend_module, keys
from hpc_ft.compose.checks import check_spec
from hpc_ft.compose.compose import hydra_compose, normalise_overrides, to_spec
from hpc_ft.errors import UserError
from hpc_ft.submit.launch import render_scripts
from hpc_ft.submit.preflight import preflight
from hpc_ft.tasks.prepare import prepare_task_data

# Each backend's job as a user composes it; the keys of other PEFT schemes are walked in a second config.
NEMO = ["eval=true", "backend=nemo", "model=elyza_llama2_7b", "container=nemo_24.03",
        "container.image=/images/nemo_24.03.sif", "cluster=nig"]
CONFIGS = {
    "hf": (["eval=true"], ""),
    "nemo": (NEMO + ["peft=lora"], ""),
    # keys that only some configurations read, walked where they are read
    "nemo-ptuning": (NEMO + ["peft=ptuning"], "model.peft."),
    "hf-generating": (["eval=true", "model.data.validation_ds.metric.name=exact_string_match",
                       "exp_manager.early_stopping_callback_params.mode=max"], "model.data.validation_ds."),
    "nemo-generating": (NEMO + ["peft=lora", "model.data.validation_ds.metric.name=exact_string_match",
                                "exp_manager.early_stopping_callback_params.mode=max"], "model.data.validation_ds."),
    # the classification, NER and preference tasks: their data is read and written at submit, so what the
    # job reads (the prepared splits, labels and sources) counts beside the rendered scripts (NER renders
    # as classification does; preference walks the LoRA keys on a decoder)
    "hf-classification": (["eval=true", "task=classification"], ""),
    "hf-preference": (["eval=true", "task=preference"], ""),
}

# A different, valid value for keys whose type alone does not give one.
OTHER = {
    "cluster.executor": "slurm",
    "cluster.container_runtime": "apptainer",
    "cluster.gpu.request": "gpus-per-node",
    "cluster.gpu.model": "A100-80GB",
    "cluster.time": "02:00:00",
    "cluster.mem_per_cpu": "4000M",
    "cluster.mem": "8g",
    "cluster.partition": "other",
    "cluster.account": "acct",
    "cluster.qos": "high",
    "cluster.scratch": "/scratch/me",
    "cluster.modules": ["cuda/12.1"],
    "cluster.setup": ["echo ready"],
    "cluster.binds": ["/data:/data"],
    "cluster.env": {"MY_FLAG": "1"},
    "cluster.sbatch_extra": {"constraint": "v100"},
    "container.image": "/images/other.sif",
    "container.digest": "sha256:" + "0" * 64,
    "container.name": "custom",
    "backend.env": {"MY_FLAG": "1"},
    "backend.extra_overrides": ["++model.foo=1"],
    "backend.finetune_script": "/opt/NeMo/x/finetune.py",
    "backend.generate_script": "/opt/NeMo/x/generate.py",
    "backend.convert_script": "/opt/NeMo/x/convert.py",
    "trainer.precision": "bf16",
    "trainer.val_check_interval": 10,
    "model.family": "gpt_neox",
    "model.build": "tiny",
    "model.build_chat_template": "llama2",
    "model.hf_config": "conf/model/configs/elyza_llama2_7b.json",
    "model.restore_from_path": "/models/other.nemo",
    "model.repo_id": "someone/some-model",
    "model.revision": "0" * 40,
    "model.activations_checkpoint_granularity": "full",
    "model.optim.name": "sgd",
    "model.optim.betas": [0.8, 0.9],
    "model.optim.sched.name": "constant",
    "model.peft.peft_scheme": "none",
    "model.peft.restore_from_path": "/models/lora.nemo",
    "model.peft.lora_tuning.target_modules": ["attention_qkv"],
    "model.data.validation_ds.metric.name": "exact_string_match",
    "model.data.train_ds.concat_sampling_probabilities": [1.0],
    "exp_manager.early_stopping_callback_params.monitor": "validation_exact_string_match",
    "exp_manager.early_stopping_callback_params.mode": "max",
    "data.source": None,
    "data.name": "other-set",
    "data.columns": {"input": "question"},
    "data.format": "nemo",
    "data.preparer": "alpaca",
    "model.data.train_ds.prompt_template": "Q: {input}\nA: {output}",
    "data.prompt_template_no_input": "Q: {instruction}\nA: {output}",
    "secrets": ["HF_TOKEN", "MY_SECRET"],
    "sweep.steps": 7,
    "backend.name": None,  # switching the backend is the table's other column
}
# work_dir: each walk sets its own; the other value is a sibling folder
OTHER["work_dir"] = "/tmp/hpc-ft-other-work-dir"
SKIP = {"backend.name"}
# keys whose other value needs a companion change to be valid at all (PP=2 needs 2 ranks)
COMPANIONS = {"model.pipeline_model_parallel_size": {"trainer.devices": 2, "model.global_batch_size": 16}}


def leaves(node, prefix=""):
    for k, v in node.items():
        key = f"{prefix}{k}"
        if OmegaConf.is_dict(v) and len(v) and key not in OTHER:
            yield from leaves(v, key + ".")
        else:
            yield key, OmegaConf.to_container(v) if OmegaConf.is_config(v) else v


def other_value(key, value):
    if key in OTHER:
        return OTHER[key] if OTHER[key] != value else None
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value else 0.5
    if value is None:
        return {"int": 2, "float": 0.05}.get(_schema_type(key), "x")
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return value + value[-1:] if value else ["x"]
    raise AssertionError(f"{key}: no other value for {value!r}")


def _schema_type(key):
    from hpc_ft.compose.compose import schema_config

    node = schema_config()
    for part in key.split("."):
        node = node._get_node(part)
    ref = str(node._metadata.ref_type)
    return "int" if "int" in ref else "float" if "float" in ref else "str"


def composed_config(overrides):
    """Hydra's composed config, not yet typed or resolved: each key is varied on a copy of it."""
    return hydra_compose(normalise_overrides(list(overrides)))


def job_from_config(cfg):
    """The JobSpec as compose_job makes it: typed, resolved, range-checked."""
    spec = to_spec(cfg, None)
    check_spec(spec)
    return spec


def changed(cfg, key, value):
    """A copy of the composed config with `key` set to `value` (a mapping adds its entries)."""
    cfg = copy.deepcopy(cfg)
    OmegaConf.set_struct(cfg, True)
    if isinstance(value, dict):
        for k, v in value.items():
            OmegaConf.update(cfg, f"{key}.{k}", v, force_add=True)
    else:
        try:
            OmegaConf.update(cfg, key, value, force_add=False)
        except ConfigAttributeError:
            # not in this config's YAML (e.g. backend.threads under backend=nemo): Hydra wants +key=value,
            # which is what a user then types; the backend must still use it or refuse it
            OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def rendered(cfg, work_dir):
    """Every job text hpc-ft renders for this config (train, eval, and nemo's convert), or the refusal."""
    spec = job_from_config(cfg)
    run_dir = Path(spec.exp_manager.exp_dir) / spec.exp_manager.name / "RUN"
    scripts = render_scripts(spec, run_dir, "RUN", with_eval=bool(spec.eval))
    texts = {name: s.text.replace(str(run_dir), "<run>") + "\nRUN_DIR=" + str(run_dir) for name, s in scripts.items()}
    if spec.task.name != "sft":
        prepared = prepare_task_data(spec)  # writes the synthetic set where the preset points, once
        texts["data"] = json.dumps([prepared.splits, prepared.labels, prepared.sources, prepared.split], sort_keys=True)
    if spec.backend.name == "nemo":
        texts["convert"] = repr([s.argv for s in backend_module("nemo").convert_steps(spec)])
    return spec, texts


def outcome(base_cfg, key, value, work_dir, base_texts, backend):
    if key in keys.outside_the_job(backend):
        return "outside"
    try:
        cfg = changed(base_cfg, key, value)
        for other, other_value_ in COMPANIONS.get(key, {}).items():
            cfg = changed(cfg, other, other_value_)
        spec, texts = rendered(cfg, work_dir)
        if key in COMPANIONS:
            _, texts_without = rendered(changed(cfg, key, base_value(base_cfg, key)), work_dir)
            texts = base_texts if texts == texts_without else texts  # the companions alone do not count
        if texts == base_texts:
            preflight(spec)  # the planner's rules at submit (e.g. TP/PP > 1 on hf)
    except UserError as exc:
        first = str(exc).strip().splitlines()[0]  # the planner adds its breakdown below the first line
        return "refused" if key in first else f"error not naming the key: {first}"
    return "changes" if texts != base_texts else "IGNORED"


def base_value(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def walk(config, tmp_path):
    overrides, prefix = CONFIGS[config]
    base = composed_config(overrides + [f"work_dir={tmp_path}"])
    backend = "nemo" if config.startswith("nemo") else "hf"
    spec, base_texts = rendered(base, tmp_path)
    results = {}
    for key, value in leaves(spec):
        if key in SKIP or not key.startswith(prefix) or not keys.read_here(key, spec):
            continue
        results[key] = outcome(base, key, other_value(key, value), tmp_path, base_texts, backend)
    return results


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_every_key_changes_the_job_or_is_refused_or_is_listed(config, tmp_path):
    results = walk(config, tmp_path)
    assert results, "no keys walked"
    bad = {k: v for k, v in results.items() if v not in ("changes", "refused", "outside")}
    assert not bad, bad


def test_the_walk_sees_the_ignored_key_it_is_meant_to_catch(tmp_path, monkeypatch):
    # a backend that drops a key it used to render must show up as IGNORED
    from hpc_ft.backends import hf

    monkeypatch.setattr(hf, "runtime_keys", lambda spec, run_dir: [])
    base = composed_config(CONFIGS["hf"][0] + [f"work_dir={tmp_path}"])
    _, texts = rendered(base, tmp_path)
    assert outcome(base, "trainer.gradient_clip_val", 0.5, tmp_path, texts, "hf") == "IGNORED"


def test_the_hf_backend_refuses_a_nemo_key_in_one_line_naming_key_and_backend(tmp_path):
    with pytest.raises(UserError, match=r"^model.megatron_amp_O2=True: the hf backend does not use this key\."):
        rendered(composed_config(CONFIGS["hf"][0] + ["model.megatron_amp_O2=true"]), tmp_path)


# keys of the other backend: set with +key=value, then refused by this one
OTHER_BACKEND = {
    "hf": {"backend.finetune_script", "backend.generate_script", "backend.convert_script", "backend.extra_overrides",
           "backend.env", "backend.generate_max_new_tokens", "backend.pack_script"},
    "nemo": {"backend.threads", "backend.generate_max_new_tokens"},
}


@pytest.mark.parametrize("backend", ["hf", "nemo"])
def test_every_key_of_a_backend_can_be_set_without_a_plus(backend, tmp_path):
    cfg = composed_config(CONFIGS[backend][0] + [f"work_dir={tmp_path}"])
    missing = []
    for key, _ in leaves(job_from_config(cfg)):
        node = cfg
        for part in key.split("."):
            if part not in node:
                missing.append(key)
                break
            node = node[part]
    assert set(missing) <= OTHER_BACKEND[backend], set(missing) - OTHER_BACKEND[backend]
