"""Range and choice checks of a composed JobSpec: each failure names the key, the value and a fix."""

from __future__ import annotations

import os
import re
from typing import List, Optional, Sequence

from omegaconf import DictConfig

from hpc_ft.errors import UserError, did_you_mean

EXECUTORS = ("local", "slurm")  # hpc_ft.executors.EXECUTORS
RUNTIMES = ("none", "singularity", "apptainer")
BACKENDS = ("hf", "nemo")
PRECISIONS = ("16", "16-mixed", "bf16", "bf16-mixed", "32", "32-true")
GPU_REQUESTS = ("gres", "gpus-per-node", "none")
RECOMPUTE = (None, "selective", "full")
_TIME = re.compile(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$|^\d+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MEM = re.compile(r"^\d+[KMGTkmgt][bB]?$")  # a bare number is megabytes to Slurm: 32 would be 32 MB
_SBATCH_OPTION = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")
_LINE_BREAK = re.compile(r"[\r\n]")


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        shown = ", ".join(str(a) for a in allowed if a is not None)
        raise UserError(f"{key}={value}: not one of {shown}.{did_you_mean(str(value), [str(a) for a in allowed])}")


def _at_least(key: str, value, low) -> None:
    if value is None or value < low:
        raise UserError(f"{key}={value}: must be >= {low}. Set {key}={low} or more.")


def check_spec(spec: DictConfig) -> None:
    c = spec.cluster
    _choice("cluster.executor", c.executor, EXECUTORS)
    _choice("cluster.container_runtime", c.container_runtime, RUNTIMES)
    _choice("cluster.gpu.request", c.gpu.request, GPU_REQUESTS)
    _choice("backend.name", spec.backend.name, BACKENDS)
    _check_task(spec)
    _choice("trainer.precision", str(spec.trainer.precision), PRECISIONS)
    _choice("model.activations_checkpoint_granularity", spec.model.activations_checkpoint_granularity, RECOMPUTE)
    if not _TIME.match(str(c.time)):
        raise UserError(f"cluster.time={c.time}: not a Slurm time limit. Use HH:MM:SS, D-HH:MM:SS or minutes.")
    for key in ("mem_per_cpu", "mem"):
        v = c[key]
        if v is not None and not _MEM.match(str(v)):
            if str(v).isdigit():
                raise UserError(
                    f"cluster.{key}={v}: no unit, and Slurm reads a bare number as megabytes ({v} MB). "
                    f"Give the unit: cluster.{key}={v}G (or {v}M if megabytes are meant)."
                )
            raise UserError(f"cluster.{key}={v}: not a Slurm memory size. Use e.g. 32G or 4000M.")
    _at_least("cluster.nodes", c.nodes, 1)
    _at_least("cluster.cpus_per_task", c.cpus_per_task, 1)
    _at_least("cluster.gpu.per_node", c.gpu.per_node, 0)
    _at_least("cluster.max_requeues", c.max_requeues, 0)
    _at_least("cluster.signal_before_timeout_s", c.signal_before_timeout_s, 0)
    t = spec.trainer
    _at_least("trainer.devices", t.devices, 1)
    _at_least("trainer.num_nodes", t.num_nodes, 1)
    _at_least("trainer.max_steps", t.max_steps, 1)
    _at_least("trainer.log_every_n_steps", t.log_every_n_steps, 1)
    if t.gradient_clip_val is not None and t.gradient_clip_val < 0:
        raise UserError(
            f"trainer.gradient_clip_val={t.gradient_clip_val}: must be >= 0 (the largest gradient norm; "
            "0 turns clipping off). Set e.g. trainer.gradient_clip_val=1.0."
        )
    v = t.val_check_interval
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise UserError(
            f"trainer.val_check_interval={v}: must be a number (an int: every N steps; "
            "a float in (0, 1]: a fraction of max_steps)."
        )
    if isinstance(v, float) and not 0 < v <= 1:
        raise UserError(f"trainer.val_check_interval={v}: a float must be in (0, 1]. Use an int for every-N-steps.")
    if isinstance(v, int) and v < 1:
        raise UserError(f"trainer.val_check_interval={v}: must be >= 1 step.")
    if c.gpu.per_node and t.devices > c.gpu.per_node:
        raise UserError(
            f"trainer.devices={t.devices}: cluster '{c.name}' has {c.gpu.per_node} GPUs per node. "
            f"Use trainer.devices<={c.gpu.per_node} and more trainer.num_nodes."
        )
    m = spec.model
    _at_least("model.tensor_model_parallel_size", m.tensor_model_parallel_size, 1)
    _at_least("model.pipeline_model_parallel_size", m.pipeline_model_parallel_size, 1)
    _at_least("model.micro_batch_size", m.micro_batch_size, 1)
    _at_least("model.global_batch_size", m.global_batch_size, 1)
    if not m.optim.lr > 0:
        raise UserError(f"model.optim.lr={m.optim.lr}: must be > 0, e.g. model.optim.lr=1e-4.")
    es = spec.exp_manager.early_stopping_callback_params
    _at_least("exp_manager.early_stopping_callback_params.patience", es.patience, 1)
    _choice("exp_manager.early_stopping_callback_params.mode", es.mode, ("min", "max"))
    for name in spec.secrets:
        if not _ENV_NAME.match(name):
            raise UserError(f"secrets: '{name}' is not an environment variable name. List names only, e.g. [HF_TOKEN].")
    for name in c.env:
        if not _ENV_NAME.match(str(name)):
            raise UserError(f"cluster.env: '{name}' is not an environment variable name.")
    for name in spec.backend.env:
        if not _ENV_NAME.match(str(name)):
            raise UserError(f"backend.env: '{name}' is not an environment variable name.")
    for where, mapping in (("cluster.env", c.env), ("backend.env", spec.backend.env)):
        for name in mapping:
            if name in spec.secrets:
                raise UserError(
                    f"{where}.{name}: {name} is a secret (listed in `secrets`), so its value must not be written "
                    f"into the config or the job script. Remove it and export it where you submit: export {name}=..."
                )
    _check_sbatch_lines(spec)
    if spec.backend.name != "hf" and spec.backend.get("group_by_length") is not None:
        raise UserError(f"backend.group_by_length={spec.backend.group_by_length}: the {spec.backend.name} backend has "
                        "no length-grouped batching (hf only); remove the key.")
    sw = spec.sweep
    if sw.steps is not None:
        _at_least("sweep.steps", sw.steps, 1)
    _at_least("sweep.parallelism", sw.parallelism, 1)
    if not spec.exp_manager.name or "/" in spec.exp_manager.name:
        raise UserError(f"exp_manager.name={spec.exp_manager.name}: must be a non-empty name without '/'.")


def _check_task(spec: DictConfig) -> None:
    from hpc_ft.tasks import ALL_TASKS

    _choice("task.name", spec.task.name, ALL_TASKS)
    from hpc_ft.backends import get_backend

    if spec.task.name not in get_backend(spec.backend.name).tasks:
        raise UserError(f"task={spec.task.name}: backend={spec.backend.name} fine-tunes causal LMs only (task=sft); "
                        f"use backend=hf for {spec.task.name}.")


def _no_line_break(key: str, value) -> None:
    if value is not None and _LINE_BREAK.search(str(value)):
        raise UserError(
            f"{key}={str(value)!r}: contains a line break, but Slurm reads it on an #SBATCH line, "
            f"which cannot hold one. Set {key} to a value without newlines."
        )


_EXPORT_ITEM = re.compile(r"^(ALL|NONE|[A-Za-z_][A-Za-z0-9_]*(=[^,\s]*)?)$")


def _check_export(value) -> None:
    """cluster.export as sbatch reads it: ALL, NONE, or a comma list of NAME / NAME=value."""
    if value is None:
        return
    items = str(value).split(",")
    bad = next((i for i in items if not _EXPORT_ITEM.match(i)), None)
    if bad is not None:
        raise UserError(
            f"cluster.export={value!r}: '{bad}' is not ALL, NONE or an environment variable (NAME or NAME=value). "
            "Use cluster.export=NONE (a clean environment) or cluster.export=ALL."
        )


def _check_sbatch_lines(spec: DictConfig) -> None:
    """Values that sbatch reads itself (#SBATCH lines: run directory, job name, partition, ...)."""
    c = spec.cluster
    _no_line_break("work_dir", spec.work_dir)
    _no_line_break("exp_manager.exp_dir", spec.exp_manager.exp_dir)
    _no_line_break("exp_manager.name", spec.exp_manager.name)
    for key in ("partition", "account", "qos"):
        _no_line_break(f"cluster.{key}", c[key])
    _check_export(c.export)
    for k, v in c.sbatch_extra.items():
        if not _SBATCH_OPTION.match(str(k)):
            raise UserError(f"cluster.sbatch_extra: '{k}' is not an sbatch option name (e.g. constraint, reservation).")
        _no_line_break(f"cluster.sbatch_extra.{k}", v)


def job_warnings(spec: DictConfig) -> List[str]:
    """Things that run but are probably not what the user meant (printed, the job is still submitted)."""
    out: List[str] = []
    t = spec.trainer
    steps = int(spec.sweep.steps or t.max_steps)
    v = t.val_check_interval
    if isinstance(v, int) and not isinstance(v, bool) and steps < v:
        out.append(
            f"trainer.max_steps={steps} is below trainer.val_check_interval={v}: the run never validates, "
            f"so no checkpoint is kept and early stopping never acts. Set trainer.val_check_interval<={steps}."
        )
    return out


def _set_on_command_line(key: str, overrides: Sequence[str]) -> bool:
    return any(o.lstrip("+~").split("=", 1)[0] == key for o in overrides)


def check_model_path(spec: DictConfig, overrides: Sequence[str] = ()) -> None:
    """`model.hf_path` must hold a model (config.json), unless a tiny model is to be built there.

    Building is only for `model.build=tiny`: set on the command line, or the model preset's own default
    at the preset's own path. A path the user typed that holds no model is a typo, not a build request.
    """
    m = spec.model
    if spec.backend.name != "hf" or m.build != "tiny" or not m.hf_path:
        return
    if os.path.isfile(os.path.join(m.hf_path, "config.json")):
        return
    if _set_on_command_line("model.hf_path", overrides) and not _set_on_command_line("model.build", overrides):
        raise UserError(
            f"model.hf_path={m.hf_path}: no model there (no config.json). Fix the path, or add model.build=tiny "
            "to build a small random model there on purpose."
        )


def check_against_model(spec: DictConfig, max_positions: Optional[int]) -> None:
    """Limits that come from the model's own config.json."""
    length = spec.model.data.train_ds.max_seq_length
    if max_positions and length > max_positions:
        raise UserError(
            f"model.data.train_ds.max_seq_length={length}: longer than the model's max_position_embeddings "
            f"{max_positions}. Set model.data.train_ds.max_seq_length={max_positions} or less."
        )
