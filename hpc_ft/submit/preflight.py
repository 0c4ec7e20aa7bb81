"""Preflight: the planner's verdict on a composed job, before anything waits in a queue.

`plan_request(spec)` maps the JobSpec onto the planner's PlanRequest (one place for that mapping);
`preflight(spec, force)` refuses a job that breaks a NeMo/HF rule or cannot fit in memory (exit 2,
with the breakdown and the best feasible alternative), unless --force.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig

from hpc_ft.backends.base import get_backend
from hpc_ft.errors import UserError

SHIPPED_CONFIGS = "model/configs"


def model_config_source(spec: DictConfig) -> Optional[Any]:
    """Where the model's architecture comes from: model.hf_config, <hf_path>/config.json, a config shipped
    under conf/model/configs/<model.name>.json, or (for the locally built tiny model) its build spec."""
    m = spec.model
    if m.hf_config:
        if not os.path.isfile(m.hf_config):
            raise UserError(f"model.hf_config={m.hf_config}: no such file. Point it at a model's config.json.")
        return m.hf_config
    if m.hf_path and os.path.isfile(os.path.join(m.hf_path, "config.json")):
        return os.path.join(m.hf_path, "config.json")
    from hpc_ft.compose.compose import conf_dir, user_conf_dir

    for root in (user_conf_dir(), conf_dir()):
        if root and (root / SHIPPED_CONFIGS / f"{m.name}.json").is_file():
            return str(root / SHIPPED_CONFIGS / f"{m.name}.json")
    if m.build == "tiny" and m.family == "bert":
        from hpc_ft.backends.hf_runtime.tiny_task_model import TinyEncoderSpec

        e = TinyEncoderSpec()
        return {"model_type": "bert", "hidden_size": e.hidden, "intermediate_size": e.intermediate,
                "num_hidden_layers": e.layers, "num_attention_heads": e.heads, "vocab_size": e.vocab_size,
                "max_position_embeddings": e.max_positions}
    if m.build == "tiny":
        from hpc_ft.backends.hf_runtime.tiny_model import TinyModelSpec, model_config
        from hpc_ft.models.family import job_family

        return model_config(TinyModelSpec(family=job_family(spec)))
    if m.hf_path and os.path.isdir(m.hf_path):
        raise UserError(
            f"model.hf_path={m.hf_path}: the folder has no config.json, so it is not a Hugging Face checkpoint. "
            "Point model.hf_path at the folder holding config.json, the weights and the tokenizer."
        )
    return None


def plan_request(spec: DictConfig, source=None, **changes):
    from hpc_ft.plan import PlanRequest, arch_from_hf_config

    source = source if source is not None else model_config_source(spec)
    if source is None:
        return None
    m, t, c = spec.model, spec.trainer, spec.cluster
    scheme = m.peft.peft_scheme
    req = PlanRequest(
        arch=arch_from_hf_config(source, name=m.name),
        backend=spec.backend.name,
        gpu=c.gpu.model,
        gpus_per_node=max(c.gpu.per_node, t.devices) if c.gpu.model == "cpu" else c.gpu.per_node,
        num_nodes=t.num_nodes,
        devices=t.devices,
        tp=m.tensor_model_parallel_size,
        pp=m.pipeline_model_parallel_size,
        mbs=m.micro_batch_size,
        gbs=m.global_batch_size,
        # a packed micro-batch is max_seq_length tokens per sequence; padded ones the data's own length
        seq_len=(m.data.train_ds.max_seq_length if m.data.train_ds.packed_sequence
                 else min(spec.data.seq_len, m.data.train_ds.max_seq_length)),
        packed_sequence=bool(m.data.train_ds.packed_sequence),
        sequence_parallel=m.sequence_parallel,
        precision=str(t.precision),
        megatron_amp_O2=m.megatron_amp_O2,
        quantization="4bit" if scheme == "qlora" else None,
        peft_scheme="lora" if scheme == "qlora" else scheme,
        lora_r=m.peft.lora_tuning.adapter_dim,
        ptuning_virtual_tokens=m.peft.p_tuning.virtual_tokens,
        ptuning_bottleneck_dim=m.peft.p_tuning.bottleneck_dim,
        ptuning_embedding_dim=m.peft.p_tuning.embedding_dim,
        **get_backend(spec.backend.name).plan_fields(spec),  # optimizer, recompute, lora_targets, ...
        **_head(spec),
    )
    return req.with_(**changes) if changes else req


def _head(spec: DictConfig) -> Dict[str, Any]:
    """The classification tasks' head for the planner: classes known from task.labels, else a generous guess."""
    task = spec.task.name
    if task == "sft":
        return {}
    if task == "preference":
        return {"head_classes": 3}
    guess = 64 if task == "token_classification" else 16  # the labels are read from the data at submit
    return {"head_classes": len(spec.task.labels) if spec.task.labels else guess,
            "head_per_token": task == "token_classification"}


def plan_spec(spec: DictConfig, **kwargs):
    """The planner's full result for a job (None when no architecture is known)."""
    from hpc_ft.plan import plan

    req = plan_request(spec)
    return None if req is None else plan(req, **kwargs)


def preflight(spec: DictConfig, force: bool = False, overrides: Sequence[str] = ()) -> List[str]:
    """Refuse (UserError) a job that cannot run; return warnings to show otherwise.

    `force` overrides the memory verdict only: a broken rule (TP that does not divide the GPUs, PP
    beyond the layers, ...) is refused with or without it. `overrides`: what the user typed, to tell
    an explicit `model.build=tiny` from the model preset's default.
    """
    from hpc_ft.compose.checks import check_against_model, check_model_path, job_warnings

    check_model_path(spec, overrides)
    warnings = job_warnings(spec)
    result = plan_spec(spec, alternatives=True, suggest=True)
    if result is None:
        return warnings + [f"planner: no config.json for model '{spec.model.name}' "
                           "(set model.hf_config=<config.json>); memory fit not checked"]
    check_against_model(spec, result.request.arch.max_positions)
    warnings += [str(w) for w in result.warnings]
    if result.ok:
        return warnings
    if result.violations:  # a rule error: --force does not apply
        raise UserError(f"{result.violations[0]}" + (
            f" (and {len(result.violations) - 1} more: `hpc-ft plan` with the same overrides lists them)"
            if len(result.violations) > 1 else ""))
    lines = [f"the planner refuses this job: {result.reason}"]
    if result.estimate is not None and not result.memory_fits:
        parts = " + ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in result.breakdown.items() if v >= 0.005)
        lines.append(f"per GPU (GiB): {parts} = {result.per_gpu_gib:.2f} of {result.capacity_gib:.2f}")
    best = result.best
    if best is not None:
        lines.append("best feasible alternative: " + best.overrides())
    lines.append("`hpc-ft plan` with the same overrides shows the full breakdown; --force submits anyway "
                 "(it overrides the memory verdict only)")
    if force:
        return warnings + ["--force: " + lines[0]]
    raise UserError("\n".join(lines))
