"""The hf backend's layout facts shared by its SFT and task steps: LoRA target names per family, PEFT schemes, step counts, a run's paths."""

from __future__ import annotations

import os
from typing import Dict, List

from omegaconf import DictConfig

from hpc_ft.backends import keys
from hpc_ft.backends.hf_runtime.optim import OPTIMIZERS, SCHEDULES
from hpc_ft.errors import UserError, did_you_mean
from hpc_ft.plan.arch import FAMILIES
from hpc_ft.render.shell import Token

# NeMo's LoRA target names -> the roles (see hpc_ft.plan.arch) of the linear layers they cover. The
# family's row in hpc_ft.plan.arch.FAMILIES names the transformers module of each role, so a NeMo
# name, `all` or `all-linear` means the same layers on every family; module names pass through.
NEMO_TARGET_ROLES = {
    "attention_qkv": ("q", "k", "v", "qkv"),
    "attention_dense": ("o",),
    "mlp_fc1": ("gate", "up", "fc1"),
    "mlp_fc2": ("down",),
    "attention": ("q", "k", "v", "qkv", "o"),
    "mlp": ("gate", "up", "fc1", "down"),
}
ALL_LINEAR = ("all", "all-linear", "all_linear")
PEFT_SCHEMES = {"lora": "lora", "qlora": "qlora", "none": "none"}



def lora_names(family: str) -> List[str]:
    """Every LoRA target name that works for a family: NeMo's names, `all`/`all-linear`, its module names."""
    return list(NEMO_TARGET_ROLES) + list(ALL_LINEAR) + list(FAMILIES[family].hf_modules)


def lora_targets(names, family: str = "llama") -> List[str]:
    """The transformers module names that LoRA adapts in a model of `family`, for NeMo or HF target names."""
    modules = FAMILIES[family].hf_modules
    out: List[str] = []
    for raw in names:
        name = str(raw).strip()
        if name in ALL_LINEAR:
            picked = list(modules)
        elif name in NEMO_TARGET_ROLES:
            picked = [m for m, role in modules.items() if role in NEMO_TARGET_ROLES[name]]
        elif name in modules:
            picked = [name]
        else:
            raise UserError(
                f"model.peft.lora_tuning.target_modules: {name!r} names no layer of a {family} model."
                f"{did_you_mean(name, lora_names(family))} Names that work for {family}: {', '.join(lora_names(family))}."
            )
        out += [m for m in picked if m not in out]
    return out


def eval_interval(spec: DictConfig, max_steps: int) -> int:
    v = spec.trainer.val_check_interval
    if isinstance(v, float):
        return max(1, round(v * max_steps))
    return int(v)


def max_steps(spec: DictConfig) -> int:
    return int(spec.sweep.steps or spec.trainer.max_steps)


def paths(run_dir: str) -> Dict[str, str]:
    return {
        "checkpoints": os.path.join(run_dir, "checkpoints"),
        "events": os.path.join(run_dir, "events.jsonl"),
        "predictions": os.path.join(run_dir, "predictions", "test_predictions.jsonl"),
        "base_predictions": os.path.join(run_dir, "predictions", "base_predictions.jsonl"),
        "tensorboard": os.path.join(run_dir, "logs", "tensorboard"),
    }


#: model.optim / sched values the hf runtime uses where a key is null (NeMo's own defaults differ: see nemo.py)
HF_OPTIM_DEFAULTS = {"weight_decay": 0.0, "betas": [0.9, 0.999], "sched.name": "linear", "sched.warmup_steps": 0,
                     "sched.min_lr": 0.0}


def optim_value(spec: DictConfig, key: str):
    value = keys.select(spec.model.optim, key)
    return HF_OPTIM_DEFAULTS[key] if value is None else value


def optimizer_keys(spec: DictConfig, run_dir: str) -> List[Token]:
    """The train arguments that carry the optimizer, schedule, epoch, checkpoint, logging and loader keys: the same
    for every task of the hf backend (SFT and the classification/NER/preference heads)."""
    m, t, e = spec.model, spec.trainer, spec.exp_manager
    if m.data.validation_ds.num_workers != m.data.train_ds.num_workers:
        raise UserError(
            f"model.data.validation_ds.num_workers={m.data.validation_ds.num_workers}: the hf backend loads train and "
            f"validation with one worker count; set it equal to model.data.train_ds.num_workers ({m.data.train_ds.num_workers})."
        )
    for key, value, known in (("model.optim.name", m.optim.name, OPTIMIZERS),
                              ("model.optim.sched.name", optim_value(spec, "sched.name"), SCHEDULES)):
        if value not in known:
            raise UserError(f"{key}={value}: the hf backend builds {', '.join(known)}.{did_you_mean(str(value), known)}")
    if len(optim_value(spec, "betas")) != 2:
        raise UserError(f"model.optim.betas={optim_value(spec, 'betas')}: give two numbers, e.g. [0.9,0.999].")
    args: List[Token] = [
        "--optim", m.optim.name,
        "--weight-decay", optim_value(spec, "weight_decay"),
        "--betas", ",".join(str(b) for b in optim_value(spec, "betas")),
        "--lr-scheduler", optim_value(spec, "sched.name"),
        "--warmup-steps", optim_value(spec, "sched.warmup_steps"),
        "--min-lr", optim_value(spec, "sched.min_lr"),
        "--grad-clip", t.gradient_clip_val,
        "--max-epochs", t.max_epochs,
        "--log-every", t.log_every_n_steps,
        "--save-top-k", e.checkpoint_callback_params.save_top_k,
        "--num-workers", m.data.train_ds.num_workers,
        "--tensorboard-dir", paths(run_dir)["tensorboard"],
    ]
    if m.activations_checkpoint_granularity == "full":
        args.append("--gradient-checkpointing")
    return args
