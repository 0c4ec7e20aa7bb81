"""The hf backend: transformers + peft LoRA/QLoRA steps (build tiny model, train, generate+accuracy)."""

from __future__ import annotations

import os
from typing import Dict, List

from omegaconf import DictConfig

from hpc_ft.backends import keys
from hpc_ft.backends.hf_layout import PEFT_SCHEMES, eval_interval, lora_targets, max_steps, optimizer_keys, paths
from hpc_ft.backends.keys import Rule
from hpc_ft.backends.launch import in_container, python_exe, python_module_step
from hpc_ft.errors import UserError
from hpc_ft.models.family import job_family
from hpc_ft.render import Step
from hpc_ft.render.shell import Token


NEMO_FINETUNE = "/opt/NeMo/examples/nlp/language_modeling/tuning/megatron_gpt_finetuning.py"
NEMO_GENERATE = "/opt/NeMo/examples/nlp/language_modeling/tuning/megatron_gpt_generate.py"
NEMO_PACK = "/opt/NeMo/scripts/nlp_language_modeling/prepare_packed_ft_dataset.py"
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
    env.update(keys.cluster_env(spec))
    env.update({str(k): str(v) for k, v in spec.backend.env.items()})
    return env


#: exp_manager.early_stopping_callback_params.monitor (NeMo's names) -> the hf runtime's --monitor
HF_MONITORS = {"val_loss": "val_loss", "validation_loss": "val_loss",
               "validation_exact_string_match": "validation_exact_string_match"}
NEMO_ONLY = "Use backend=nemo for it, or leave it at its default."
REFUSED: List[Rule] = [
    ("model.megatron_amp_O2", bool, "The base weights follow trainer.precision (16-bit for 16/bf16 with LoRA). " + NEMO_ONLY),
    ("model.mcore_gpt", lambda v: v is False, NEMO_ONLY),
    ("model.sequence_parallel", bool, NEMO_ONLY),
    ("model.activations_checkpoint_granularity", lambda v: v == "selective",
     "It recomputes whole layers (gradient checkpointing): set model.activations_checkpoint_granularity=full."),
    ("model.peft.restore_from_path", lambda v: v is not None, "Start LoRA afresh, or use backend=nemo for a PEFT .nemo."),
    ("model.peft.p_tuning.virtual_tokens", lambda v: v != 10, NEMO_ONLY),
    ("model.peft.p_tuning.bottleneck_dim", lambda v: v != 1024, NEMO_ONLY),
    ("model.peft.p_tuning.embedding_dim", lambda v: v != 1024, NEMO_ONLY),
    ("model.data.validation_ds.metric.name", lambda v: v not in ("loss", "exact_string_match"),
     "It validates by loss, or by exact_string_match of generated answers."),
    ("backend.finetune_script", lambda v: v != NEMO_FINETUNE, NEMO_ONLY),
    ("backend.generate_script", lambda v: v != NEMO_GENERATE, NEMO_ONLY),
    ("backend.convert_script", lambda v: v is not None, "`hpc-ft model convert` is for the nemo backend."),
    ("backend.extra_overrides", lambda v: len(v) > 0, "They are NeMo Hydra overrides. " + NEMO_ONLY),
    ("backend.generate_max_new_tokens", lambda v: v is not None,
     "Set model.data.test_ds.tokens_to_generate instead (both backends read it)."),
    ("backend.pack_script", lambda v: v != NEMO_PACK,
     "It is NeMo's packing script; hf packs by itself with model.data.train_ds.packed_sequence=true."),
]


def runtime_keys(spec: DictConfig, run_dir: str) -> List[Token]:
    """SFT's train arguments beyond the model and data: optimizer_keys and the validation metric that early
    stopping and the best checkpoint follow."""
    m, es = spec.model, spec.exp_manager.early_stopping_callback_params
    args = optimizer_keys(spec, run_dir)
    monitor = HF_MONITORS.get(es.monitor)
    if monitor is None or (monitor != "val_loss" and m.data.validation_ds.metric.name != "exact_string_match"):
        raise UserError(
            f"exp_manager.early_stopping_callback_params.monitor={es.monitor}: the hf backend monitors val_loss, or "
            "validation_exact_string_match with model.data.validation_ds.metric.name=exact_string_match."
        )
    return args + [
        "--monitor-metric", monitor,
        "--val-metric", m.data.validation_ds.metric.name,
        "--val-tokens-to-generate", m.data.validation_ds.tokens_to_generate,
        "--mode", es.mode,
    ]


def train_steps(spec: DictConfig, run_dir: str) -> List[Step]:
    keys.refuse(spec, "hf", REFUSED)
    if spec.task.name != "sft":  # classification, NER, preference: their own steps
        from hpc_ft.backends import hf_tasks

        return hf_tasks.train_steps(spec, run_dir)
    keys.refuse(spec, "hf", keys.SFT_REFUSED)
    m, t = spec.model, spec.trainer
    p = paths(run_dir)
    steps_n = max_steps(spec)
    scheme = m.peft.peft_scheme
    py = python_exe(spec)
    steps: List[Step] = []
    if spec.data.chat_template and m.build == "tiny" and not m.build_chat_template:
        raise UserError(
            "data.chat_template=true (template=chat): the tiny model this job builds gets no chat template; "
            "set model.build_chat_template=llama2 (or model=tiny_llama_chat)."
        )
    if m.build == "tiny":
        build: List[Token] = [py, "-m", TINY_MODULE, *tiny_model_data_args(spec), "--output", m.hf_path,
                              "--if-missing", "--seed", m.seed, "--family", job_family(spec)]
        if m.build_chat_template:
            build += ["--chat-template", m.build_chat_template]
        steps.append(
            Step(
                "build-model",
                in_container(spec, build, gpus=False),
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
        "--patience", spec.exp_manager.early_stopping_callback_params.patience
        if spec.exp_manager.create_early_stopping_callback else 0,
        "--min-delta", spec.exp_manager.early_stopping_callback_params.min_delta,
        "--micro-batch-size", m.micro_batch_size,
        "--global-batch-size", m.global_batch_size,
        "--lr", m.optim.lr,
        "--peft", PEFT_SCHEMES.get(scheme, scheme),
        "--lora-r", m.peft.lora_tuning.adapter_dim,
        "--lora-alpha", m.peft.lora_tuning.alpha,
        "--lora-dropout", m.peft.lora_tuning.adapter_dropout,
        "--lora-targets", ",".join(lora_targets(m.peft.lora_tuning.target_modules, job_family(spec))),
        "--precision", str(t.precision),
        "--max-seq-length", m.data.train_ds.max_seq_length,
        "--seed", m.seed,
        "--resume", "auto" if spec.exp_manager.resume_if_exists else "never",
    ]
    args += runtime_keys(spec, run_dir)
    if spec.backend.threads:
        args += ["--threads", spec.backend.threads]
    if m.data.train_ds.packed_sequence:
        args += ["--packed-sequence"]
    elif spec.backend.get("group_by_length") is False:
        args += ["--group-by-length", "off"]
    steps.append(python_module_step(spec, "train", TRAIN_MODULE, args))
    return steps


def prepare_steps(spec: DictConfig, run_dir: str) -> List[Step]:
    """Nothing runs before training: packing happens inside the training job."""
    return []


def eval_steps(spec: DictConfig, run_dir: str) -> List[Step]:
    """Greedy generation on the test split with the best checkpoint, resolved when the job starts."""
    keys.refuse(spec, "hf", REFUSED)
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
        "--max-new-tokens", spec.model.data.test_ds.tokens_to_generate,
        "--batch-size", spec.model.data.test_ds.micro_batch_size,
        "--events", tp["events"],
    ]
    return [Step("eval", in_container(spec, cmd))]


class HfBackend:
    """hf as a `hpc_ft.backends.base.Backend`: delegates to this module's functions and to hf's run reader."""

    name = "hf"
    tasks = ("sft", "classification", "token_classification", "preference")  # the last three: hf_tasks
    keys = ("model", "trainer", "data", "peft", "exp_manager", "eval")
    requires_final_artifact = False

    def read_run(self, run_dir, reader, sources, log_files, options):
        from hpc_ft.track.hf_events import read_hf_run

        return read_hf_run(run_dir, reader, sources, log_files)

    def plan_fields(self, spec: DictConfig) -> Dict[str, object]:
        m = spec.model
        if spec.task.name != "sft":
            from hpc_ft.backends.hf_tasks import lora_target_list

            targets = tuple(lora_target_list(spec).split(","))  # what the task job targets (all-linear off Llama)
        else:
            targets = tuple(lora_targets(list(m.peft.lora_tuning.target_modules), job_family(spec)))
        # NeMo's activation-checkpointing key turns on the HF model's gradient checkpointing
        return dict(optimizer="sgd" if m.optim.name == "sgd" else "adamw_torch", recompute=None,
                    gradient_checkpointing=m.activations_checkpoint_granularity is not None, flash_attention=None,
                    lora_targets=targets or None)

    def converts_data(self, report) -> bool:
        return False  # the hf job reads every format hpc_ft.data reads

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
