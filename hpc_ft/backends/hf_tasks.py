"""The hf backend's job steps for the classification, NER and preference tasks: build the tiny base, train the head, score it.

hf.train_steps/eval_steps hand a spec whose task is not sft to this module. The job reads the
splits and labels that the submit step wrote into <run_dir>/data/ (hpc_ft.tasks.prepare).
"""

from __future__ import annotations

from typing import List

from omegaconf import DictConfig

from hpc_ft.backends import hf_layout as hf
from hpc_ft.backends.launch import distributed, in_container, multinode_prefix, python_exe
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


def train_steps(spec: DictConfig, run_dir: str) -> List[Step]:
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
        "--grad-clip", t.gradient_clip_val,
        "--log-every", t.log_every_n_steps,
        "--seed", m.seed,
        "--resume", "auto" if spec.exp_manager.resume_if_exists else "never",
    ]
    if spec.backend.threads:
        args += ["--threads", spec.backend.threads]
    if t.devices * t.num_nodes > 1:
        cmd = distributed(spec, [TRAIN_MODULE] + args, module=True)
    else:
        cmd = [py, "-m", TRAIN_MODULE] + args
    steps.append(Step("train", multinode_prefix(spec) + in_container(spec, cmd)))
    return steps


def eval_steps(spec: DictConfig, run_dir: str) -> List[Step]:
    """The test split scored with the best checkpoint (resolved when the job starts) and the untuned base."""
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
        "--seed", spec.model.seed,
        "--events", p["events"],
    ]
    if spec.backend.threads:
        cmd += ["--threads", spec.backend.threads]
    return [Step("eval", in_container(spec, cmd))]
