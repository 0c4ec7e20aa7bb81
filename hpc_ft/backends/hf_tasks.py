"""The hf backend's job steps for the classification, NER and preference tasks: build the tiny base, train the head, score it.

hf.train_steps/eval_steps hand a spec whose task is not sft to this module. The job reads the
splits and labels that the submit step wrote into <run_dir>/data/ (hpc_ft.tasks.prepare).
"""

from __future__ import annotations

from typing import List

from omegaconf import DictConfig

from hpc_ft.backends import hf_layout as hf
from hpc_ft.backends import keys
from hpc_ft.backends.launch import in_container, python_exe, python_module_step
from hpc_ft.models.family import job_family
from hpc_ft.render import Step
from hpc_ft.render.shell import Token
from hpc_ft.tasks.prepare import prepared_paths

TRAIN_MODULE = "hpc_ft.backends.hf_runtime.task_train"
EVAL_MODULE = "hpc_ft.backends.hf_runtime.task_eval"
TINY_MODULE = "hpc_ft.backends.hf_runtime.tiny_task_model"


def lora_target_list(spec: DictConfig) -> str:
    """The LoRA targets as module names: NeMo's names mapped for Llama-family models; `all` on any other
    family (BERT: query/key/value/dense) is peft's all-linear, which leaves the head out (the head is trained in full)."""
    names = list(spec.model.peft.lora_tuning.target_modules)
    family = job_family(spec)
    if family != "llama" and names == ["all"]:
        return "all-linear"
    return ",".join(hf.lora_targets(names, family))


#: SFT keys a task job cannot honour: refused in one line rather than ignored
TASK_REFUSED: List[keys.Rule] = [
    ("model.data.train_ds.prompt_template", lambda v: v is not None, "A task reads its text/label columns as they are "
     "(data.columns maps their names); prompt templates are for task=sft."),
    ("data.prompt_template_no_input", lambda v: v is not None, "Prompt templates are for task=sft."),
    ("data.chat_template", bool, "Chat templates are for task=sft."),
    ("model.build_chat_template", lambda v: v is not None, "Chat templates are for task=sft."),
    ("model.answer_only_loss", None, "A task's loss is its head's (labels, tags or a/b/tie)."),
    ("model.data.train_ds.label_key", None, "A task's label column is mapped with "
     "data.columns.label=<column>."),
    ("model.data.train_ds.packed_sequence", bool, "Packing is for task=sft; a task batches whole rows."),
    ("model.data.validation_ds.metric.name", None, "A task reports its own metrics at validation "
     "(choose one with exp_manager.early_stopping_callback_params.monitor, e.g. val_f1)."),
    ("model.data.test_ds.tokens_to_generate", None, "A task generates no text."),
    ("model.data.validation_ds.tokens_to_generate", None, "A task generates no text."),
]


def refuse_sft_keys(spec: DictConfig) -> None:
    keys.refuse_for(spec, f"task={spec.task.name}", TASK_REFUSED)


def train_steps(spec: DictConfig, run_dir: str) -> List[Step]:
    refuse_sft_keys(spec)
    m, t = spec.model, spec.trainer
    p, data = hf.paths(run_dir), prepared_paths(run_dir)
    py = python_exe(spec)
    es = spec.exp_manager.early_stopping_callback_params
    steps: List[Step] = []
    if m.build == "tiny":
        arch = "bert" if m.family == "bert" else "llama"
        steps.append(Step("build-model", in_container(
            spec, [py, "-m", TINY_MODULE, "--train-file", data["train"], "--arch", arch, "--output", m.hf_path,
                   "--if-missing", "--seed", m.seed], gpus=False), skip_if_exists=f"{m.hf_path}/config.json"))
    n = hf.max_steps(spec)
    args: List[Token] = [
        "--task", spec.task.name,
        "--model-dir", m.hf_path,
        "--train-file", data["train"],
        "--valid-file", data["validation"],
        "--labels-file", data["labels"],
        "--output-dir", p["checkpoints"],
        "--events", p["events"],
        "--max-steps", n,
        "--eval-steps", hf.eval_interval(spec, n),
        "--patience", es.patience if spec.exp_manager.create_early_stopping_callback else 0,
        "--min-delta", es.min_delta,
        "--monitor-metric", es.monitor,
        "--mode", es.mode,
        "--micro-batch-size", m.micro_batch_size,
        "--global-batch-size", m.global_batch_size,
        "--lr", m.optim.lr,
        "--peft", hf.PEFT_SCHEMES.get(m.peft.peft_scheme, m.peft.peft_scheme),
        "--lora-r", m.peft.lora_tuning.adapter_dim,
        "--lora-alpha", m.peft.lora_tuning.alpha,
        "--lora-dropout", m.peft.lora_tuning.adapter_dropout,
        "--lora-targets", lora_target_list(spec),
        "--precision", str(t.precision),
        "--max-seq-length", m.data.train_ds.max_seq_length,
        "--overlong", spec.task.overlong,
        "--seed", m.seed,
        "--resume", "auto" if spec.exp_manager.resume_if_exists else "never",
        *hf.optimizer_keys(spec, run_dir),
    ]
    if spec.backend.threads:
        args += ["--threads", spec.backend.threads]
    steps.append(python_module_step(spec, "train", TRAIN_MODULE, args))
    return steps


def eval_steps(spec: DictConfig, run_dir: str) -> List[Step]:
    """The test split scored with the best checkpoint (resolved when the job starts) and the untuned base."""
    refuse_sft_keys(spec)
    p, data = hf.paths(run_dir), prepared_paths(run_dir)
    cmd: List[Token] = [
        python_exe(spec), "-m", EVAL_MODULE,
        "--task", spec.task.name,
        "--model-dir", spec.model.hf_path,
        "--adapter", "auto:" + p["checkpoints"],
        "--labels-file", data["labels"],
        "--test-file", data["test"],
        "--output", p["predictions"],
        "--base-output", p["base_predictions"],
        "--max-seq-length", spec.model.data.train_ds.max_seq_length,
        "--overlong", spec.task.overlong,
        "--batch-size", spec.model.data.test_ds.micro_batch_size,
        "--seed", spec.model.seed,
        "--events", p["events"],
    ]
    if spec.backend.threads:
        cmd += ["--threads", spec.backend.threads]
    return [Step("eval", in_container(spec, cmd))]
