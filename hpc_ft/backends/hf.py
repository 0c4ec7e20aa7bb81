"""The hf backend: transformers + peft LoRA/QLoRA steps (build tiny model, train, generate+accuracy)."""

from __future__ import annotations

import os
from typing import Dict, List

from omegaconf import DictConfig

from hpc_ft.backends.hf_layout import (  # noqa: F401 - re-exported: hf's names for them
    LORA_TARGETS, PEFT_SCHEMES, eval_interval, lora_targets, max_steps, paths)
from hpc_ft.backends.launch import distributed, in_container, multinode_prefix, python_exe
from hpc_ft.render import Step
from hpc_ft.render.shell import Token


TRAIN_MODULE = "hpc_ft.backends.hf_runtime.train"
GENERATE_MODULE = "hpc_ft.backends.hf_runtime.generate"
TINY_MODULE = "hpc_ft.backends.hf_runtime.tiny_model"


def data_args(spec: DictConfig, splits) -> List[Token]:
    """The job's data as the node programs parse it: model.data.*_ds.file_names and the format/template keys."""
    from hpc_ft.data.spec import data_arguments, options_from_spec, splits_from_spec

    return data_arguments(splits_from_spec(spec, splits), options_from_spec(spec))


def tiny_model_data_args(spec: DictConfig) -> List[Token]:
    from hpc_ft.data.spec import options_from_spec

    return ["--train-file", *spec.model.data.train_ds.file_names, "--data-options", options_from_spec(spec).to_json()]


def job_env(spec: DictConfig) -> Dict[str, str]:
    env = {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if spec.backend.threads:
        env["OMP_NUM_THREADS"] = str(spec.backend.threads)
    return env


def train_steps(spec: DictConfig, run_dir: str) -> List[Step]:
    if spec.task.name != "sft":  # classification, NER, preference: their own steps
        from hpc_ft.backends import hf_tasks

        return hf_tasks.train_steps(spec, run_dir)
    m, t = spec.model, spec.trainer
    p = paths(run_dir)
    steps_n = max_steps(spec)
    scheme = m.peft.peft_scheme
    py = python_exe(spec)
    steps: List[Step] = []
    if m.build == "tiny":
        steps.append(
            Step(
                "build-model",
                in_container(spec, [py, "-m", TINY_MODULE, *tiny_model_data_args(spec), "--output", m.hf_path,
                                    "--if-missing", "--seed", m.seed], gpus=False),
                skip_if_exists=os.path.join(m.hf_path, "config.json"),
            )
        )
    args: List[Token] = [
        "--model-dir", m.hf_path,
        *data_args(spec, ("train", "validation")),
        "--output-dir", p["checkpoints"],
        "--events", p["events"],
        "--max-steps", steps_n,
        "--eval-steps", eval_interval(spec, steps_n),
        "--patience", spec.exp_manager.early_stopping_callback_params.patience,
        "--min-delta", spec.exp_manager.early_stopping_callback_params.min_delta,
        "--micro-batch-size", m.micro_batch_size,
        "--global-batch-size", m.global_batch_size,
        "--lr", m.optim.lr,
        "--peft", PEFT_SCHEMES.get(scheme, scheme),
        "--lora-r", m.peft.lora_tuning.adapter_dim,
        "--lora-alpha", m.peft.lora_tuning.alpha,
        "--lora-dropout", m.peft.lora_tuning.adapter_dropout,
        "--lora-targets", ",".join(lora_targets(m.peft.lora_tuning.target_modules)),
        "--precision", str(t.precision),
        "--max-seq-length", m.data.train_ds.max_seq_length,
        "--seed", m.seed,
        "--resume", "auto",
    ]
    if spec.backend.threads:
        args += ["--threads", spec.backend.threads]
    if m.data.train_ds.packed_sequence:
        args += ["--packed-sequence"]
    elif spec.backend.get("group_by_length") is False:
        args += ["--group-by-length", "off"]
    if t.devices * t.num_nodes > 1:
        cmd = distributed(spec, [TRAIN_MODULE] + args, module=True)
    else:
        cmd = [py, "-m", TRAIN_MODULE] + args
    steps.append(Step("train", multinode_prefix(spec) + in_container(spec, cmd)))
    return steps


def prepare_steps(spec: DictConfig, run_dir: str) -> List[Step]:
    """Nothing runs before training: packing happens inside the training job."""
    return []


def eval_steps(spec: DictConfig, run_dir: str) -> List[Step]:
    """Greedy generation on the test split with the best checkpoint, resolved when the job starts."""
    if spec.task.name != "sft":
        from hpc_ft.backends import hf_tasks

        return hf_tasks.eval_steps(spec, run_dir)
    p = tp = paths(run_dir)
    py = python_exe(spec)
    cmd: List[Token] = [
        py, "-m", GENERATE_MODULE,
        "--model-dir", spec.model.hf_path,
        "--adapter", "auto:" + tp["checkpoints"],
        *data_args(spec, ("test",)),
        "--output", p["predictions"],
        "--base-output", p["base_predictions"],
        "--max-new-tokens", spec.backend.generate_max_new_tokens,
        "--events", tp["events"],
    ]
    return [Step("eval", in_container(spec, cmd))]


class HfBackend:
    """hf as a `hpc_ft.backends.base.Backend`: delegates to this module's functions and to hf's run reader."""

    name = "hf"
    tasks = ("sft", "classification", "token_classification", "preference")  # the last three: hf_tasks
    keys = ("model", "trainer", "data", "peft", "exp_manager", "eval")

    def train_steps(self, spec: DictConfig, run_dir: str) -> List[Step]:
        return train_steps(spec, run_dir)

    def eval_steps(self, spec: DictConfig, run_dir: str) -> List[Step]:
        return eval_steps(spec, run_dir)

    def prepare_steps(self, spec: DictConfig, run_dir: str) -> List[Step]:
        return prepare_steps(spec, run_dir)

    def job_env(self, spec: DictConfig) -> Dict[str, str]:
        return job_env(spec)

    def input_problems(self, spec: DictConfig) -> List[str]:
        if spec.model.build == "tiny":
            return []
        if os.path.isfile(os.path.join(spec.model.hf_path or "", "config.json")):
            return []
        return [f"model.hf_path={spec.model.hf_path}: no config.json there. Fetch it first: `hpc-ft model fetch`."]

    def point_values(self, spec, run_dir):
        return []  # every point writes into its own run directory already

    def reader_kwargs(self, cfg: DictConfig, run_dir) -> Dict[str, object]:
        return {}

    def read_events(self, run_dir):
        from hpc_ft.track.hf_events import read_hf_events

        return read_hf_events(os.path.join(run_dir, "events.jsonl"), run_dir)

    def peak_memory_mb(self, run_dir):
        """The `end` event's peak_rss_mb (host RSS, summed over ranks), read from the end of events.jsonl."""
        import json

        try:
            with open(os.path.join(run_dir, "events.jsonl"), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 65536))
                tail = f.read().decode("utf-8", errors="replace")
        except OSError:
            return None
        for line in reversed(tail.splitlines()):
            if '"end"' not in line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("kind") == "end" and isinstance(event.get("peak_rss_mb"), (int, float)):
                return float(event["peak_rss_mb"])
        return None
