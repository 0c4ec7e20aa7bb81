"""The nemo backend: NeMo 1.x megatron_gpt_finetuning.py / megatron_gpt_generate.py in the container.

The override list is the reference tutorial's, key for key, in its order; `backend.extra_overrides`
adds NeMo keys that hpc-ft does not model (passed verbatim, e.g. `++model.mcore_gpt=True`).
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import DictConfig

from hpc_ft.backends import keys
from hpc_ft.backends.keys import Rule
from hpc_ft.backends.launch import distributed, in_container, multinode_prefix
from hpc_ft.errors import UserError
from hpc_ft.render import Step


def nemo_value(value: Any) -> str:
    """A value as NeMo's Hydra command line spells it: True/False, [a,b], plain numbers and strings."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(nemo_value(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    return str(value)


#: NeMo's exp_manager.exp_dir of a run, relative to the run directory
NEMO_EXP_SUBDIR = "nemo"


def nemo_exp_dir(run_dir: str) -> str:
    """NeMo's `exp_manager.exp_dir` for one run: a folder inside the run directory.

    NeMo's log dir is `<exp_dir>/<name>` (no version folder: resume_if_exists is the finetune default)
    and `resume_if_exists` resumes from its `checkpoints/`. A shared `<work_dir>/results/<name>` would make
    a second run of the same name resume the first one's checkpoints; one exp_dir per run means a requeue
    or `hpc-ft resume` continues this run and nothing else. (Not the run directory itself: on every start
    NeMo moves the plain files of its log dir into `run_<k>/`, which would take run.json with them.)
    """
    return os.path.join(str(run_dir), NEMO_EXP_SUBDIR)


def exp_paths(spec: DictConfig, run_dir: str) -> Dict[str, str]:
    """Where NeMo writes for the run in `run_dir`: its log dir, checkpoints and final .nemo."""
    log_dir = os.path.join(nemo_exp_dir(run_dir), spec.exp_manager.name)
    ckpt = os.path.join(log_dir, "checkpoints")
    return {"exp_dir": nemo_exp_dir(run_dir), "log_dir": log_dir, "checkpoints": ckpt,
            "peft_nemo": os.path.join(ckpt, spec.exp_manager.name + ".nemo")}


def train_overrides(spec: DictConfig, run_dir: str) -> List[Tuple[str, Any]]:
    t, m, e = spec.trainer, spec.model, spec.exp_manager
    d = m.data
    max_steps = int(spec.sweep.steps or t.max_steps)
    return [
        ("exp_manager.exp_dir", nemo_exp_dir(run_dir)),
        ("exp_manager.name", e.name),
        ("exp_manager.early_stopping_callback_params.patience", e.early_stopping_callback_params.patience),
        ("trainer.precision", str(t.precision)),
        ("trainer.devices", t.devices),
        ("trainer.num_nodes", t.num_nodes),
        ("trainer.max_epochs", t.max_epochs),
        ("trainer.max_steps", max_steps),
        ("trainer.val_check_interval", t.val_check_interval),
        ("trainer.gradient_clip_val", t.gradient_clip_val),
        ("model.megatron_amp_O2", m.megatron_amp_O2),
        ("++model.mcore_gpt", m.mcore_gpt),
        ("model.restore_from_path", m.restore_from_path),
        ("model.peft.peft_scheme", m.peft.peft_scheme),
        ("model.data.train_ds.file_names", list(d.train_ds.file_names)),
        ("model.data.train_ds.concat_sampling_probabilities", list(d.train_ds.concat_sampling_probabilities)),
        ("model.data.validation_ds.file_names", list(d.validation_ds.file_names)),
        ("model.tensor_model_parallel_size", m.tensor_model_parallel_size),
        ("model.pipeline_model_parallel_size", m.pipeline_model_parallel_size),
        ("model.global_batch_size", m.global_batch_size),
        ("model.micro_batch_size", m.micro_batch_size),
        ("model.data.validation_ds.tokens_to_generate", d.validation_ds.tokens_to_generate),
        ("model.data.validation_ds.metric.name", d.validation_ds.metric.name),
        ("model.data.train_ds.num_workers", d.train_ds.num_workers),
        ("model.data.validation_ds.num_workers", d.validation_ds.num_workers),
        ("model.optim.lr", m.optim.lr),
    ] + data_overrides(spec, "train_ds")


def hydra_string(value: str) -> str:
    """A Hydra override value that NeMo parses back to exactly `value` (single-quoted; braces stay literal)."""
    out = re.sub(r"(\\*)'", lambda mt: mt.group(1) * 2 + "\\'", value)
    return "'" + re.sub(r"(\\+)$", lambda mt: mt.group(1) * 2, out) + "'"


def data_overrides(spec: DictConfig, split: str) -> List[Tuple[str, Any]]:
    """The template and loss keys, only where they differ from NeMo's defaults (the tutorial's lines stay as they are).

    NeMo's validation_ds/test_ds interpolate prompt_template and label_key from train_ds; the generate
    script has its own test_ds defaults, so eval names them on test_ds."""
    ds, out = spec.model.data.train_ds, []
    if ds.prompt_template is not None and ds.prompt_template != "{input} {output}":
        out.append((f"model.data.{split}.prompt_template", hydra_string(ds.prompt_template)))
    if ds.label_key != "output":
        out.append((f"model.data.{split}.label_key", ds.label_key))
    if split == "train_ds" and not spec.model.answer_only_loss:
        out.append(("model.answer_only_loss", False))
    return out


#: NeMo 24.03's own values of keys the tutorial does not pass (reference nemo.md §1): such a key is
#: rendered after the tutorial's list only when it differs, so the reference job stays key for key.
NEMO_DEFAULTS = {
    "trainer.log_every_n_steps": 10,
    "model.seed": 1234,
    "model.sequence_parallel": False,
    "model.optim.name": "fused_adam",
    "model.data.train_ds.max_seq_length": 2048,
    "exp_manager.resume_if_exists": True,
    "exp_manager.create_early_stopping_callback": True,
    "exp_manager.early_stopping_callback_params.monitor": "val_loss",
    "exp_manager.early_stopping_callback_params.mode": "min",
    "exp_manager.early_stopping_callback_params.min_delta": 0.001,
    "exp_manager.checkpoint_callback_params.save_top_k": 1,
    "model.peft.p_tuning.virtual_tokens": 10,
    "model.peft.p_tuning.bottleneck_dim": 1024,
    "model.peft.p_tuning.embedding_dim": 1024,
}
#: keys NeMo has but whose null here means "NeMo's default": rendered when set
WHEN_SET = ("model.optim.weight_decay", "model.optim.betas", "model.optim.sched.name", "model.optim.sched.warmup_steps",
            "model.optim.sched.min_lr", "model.peft.restore_from_path", "model.activations_checkpoint_granularity")
#: lora_tuning keys, rendered for LoRA runs (the 24.03 yaml lacks alpha and target_modules: `++` adds them)
LORA_KEYS = (("model.peft.lora_tuning.adapter_dim", "model.peft.lora_tuning.adapter_dim"),
             ("++model.peft.lora_tuning.alpha", "model.peft.lora_tuning.alpha"),
             ("model.peft.lora_tuning.adapter_dropout", "model.peft.lora_tuning.adapter_dropout"),
             ("++model.peft.lora_tuning.target_modules", "model.peft.lora_tuning.target_modules"))
REFUSED: List[Rule] = [
    ("model.build", lambda v: v is not None, "NeMo trains a converted .nemo: set model.build=null and model.restore_from_path."),
    ("model.build_chat_template", lambda v: v is not None, "It belongs to a tiny model built by the hf backend."),
    ("backend.threads", lambda v: v is not None, "It sets the hf runtime's torch threads; use cluster.env.OMP_NUM_THREADS."),
    ("backend.generate_max_new_tokens", lambda v: v is not None,
     "Set model.data.test_ds.tokens_to_generate instead (both backends read it)."),
]


def changed_overrides(spec: DictConfig) -> List[Tuple[str, Any]]:
    """Keys beyond the tutorial's list, in a fixed order: those that differ from NeMo's defaults or are set."""
    out: List[Tuple[str, Any]] = []
    scheme = spec.model.peft.peft_scheme
    for key, default in NEMO_DEFAULTS.items():
        if key.startswith("model.peft.p_tuning.") and scheme != "ptuning":
            continue
        value = keys.select(spec, key)
        if value != default:
            out.append((key, value))
    for key in WHEN_SET:
        value = keys.select(spec, key)
        if value is not None:
            out.append((key, value))
    if spec.model.activations_checkpoint_granularity == "full":
        out += [("++model.activations_checkpoint_method", "uniform"), ("++model.activations_checkpoint_num_layers", 1)]
    if scheme == "lora":
        for name, key in LORA_KEYS:
            out.append((name, keys.select(spec, key)))
    return out


def eval_overrides(spec: DictConfig, run_dir: str) -> List[Tuple[str, Any]]:
    m, ts = spec.model, spec.model.data.test_ds
    return [
        ("model.restore_from_path", m.restore_from_path),
        ("model.peft.restore_from_path", m.peft.restore_from_path or exp_paths(spec, run_dir)["peft_nemo"]),
        ("trainer.devices", spec.trainer.devices),
        ("model.data.test_ds.file_names", list(ts.file_names)),
        ("model.data.test_ds.names", list(ts.names)),
        ("model.data.test_ds.global_batch_size", ts.global_batch_size),
        ("model.data.test_ds.micro_batch_size", ts.micro_batch_size),
        ("model.data.test_ds.tokens_to_generate", ts.tokens_to_generate),
        ("model.tensor_model_parallel_size", m.tensor_model_parallel_size),
        ("inference.greedy", True),
        ("model.data.test_ds.output_file_path_prefix", predictions_prefix(spec, run_dir)),
        ("model.data.test_ds.write_predictions_to_file", True),
    ] + data_overrides(spec, "test_ds")


def predictions_prefix(spec: DictConfig, run_dir: str) -> str:
    return os.path.join(run_dir, "predictions", spec.exp_manager.name)


def _render(overrides: List[Tuple[str, Any]], extra) -> List[str]:
    return [f"{k}={nemo_value(v)}" for k, v in overrides] + [str(x) for x in extra]


def job_env(spec: DictConfig) -> Dict[str, str]:
    return {**keys.cluster_env(spec), **{str(k): str(v) for k, v in spec.backend.env.items()}}


def train_steps(spec: DictConfig, run_dir: str) -> List[Step]:
    keys.refuse(spec, "nemo", REFUSED)
    keys.refuse(spec, "nemo", keys.SFT_REFUSED)
    args = _render(packed_train_overrides(spec, run_dir, train_overrides(spec, run_dir) + changed_overrides(spec)),
                   spec.backend.extra_overrides)
    cmd = distributed(spec, [spec.backend.finetune_script] + args)
    return [Step("train", multinode_prefix(spec) + in_container(spec, cmd))]


def eval_steps(spec: DictConfig, run_dir: str) -> List[Step]:
    keys.refuse(spec, "nemo", REFUSED)
    args = _render(eval_overrides(spec, run_dir), [])
    # As in the reference: plain python, Lightning spawns the trainer.devices ranks itself.
    cmd = ["python", spec.backend.generate_script] + args
    return [Step("eval", in_container(spec, cmd))]


def convert_steps(spec: DictConfig) -> List[Step]:
    """HF -> NeMo conversion of the base model: NeMo's converter for the model's family (config.json
    model_type; the tutorial's convert_llama_hf_to_nemo.py for Llama), or backend.convert_script when set."""
    from hpc_ft.models.convert import hf_to_nemo_argv
    from hpc_ft.models.family import job_family

    from hpc_ft.models.convert import FAMILIES

    family = job_family(spec)
    keys.refuse_family(spec, family, FAMILIES, "HF-to-NeMo converter")
    argv = hf_to_nemo_argv(spec.model.hf_path, spec.model.restore_from_path, family=family, precision=None)
    if spec.backend.convert_script:
        argv[1] = str(spec.backend.convert_script)
    return [Step("convert", in_container(spec, argv, gpus=False))]


# ---- packed sequences (model.data.train_ds.packed_sequence) --------------------------------------
# NeMo 1.x trains on packed sequences from a .npy that its prepare_packed_ft_dataset.py writes first
# (added to NeMo main on 2024-03-16, #8682; in the 24.03-era snapshot 9d86acd5, not in the v1.23.0 tag).
# hpc-ft renders that script as its own job; the training job waits on it with afterok.
PACK_SEED = 0  # the script's +seed default; it names the output packed_<pack size>_seed<seed>.npy
PACKING_SINCE = (24, 3)  # the first NGC NeMo container whose NeMo has the packing script
_CONTAINER_VERSION = re.compile(r"nemo[_:-]?(\d{2})\.(\d{2})")


def packing_problem(spec: DictConfig) -> Optional[str]:
    """Why this container's NeMo cannot pack (its version, from container.name or .image), or None."""
    for where in (spec.container.name, spec.container.image):
        m = _CONTAINER_VERSION.search(str(where or ""))
        if m:
            version = (int(m.group(1)), int(m.group(2)))
            if version < PACKING_SINCE:
                return (f"model.data.train_ds.packed_sequence=true: NeMo in container {m.group(1)}.{m.group(2)} has no "
                        "prepare_packed_ft_dataset.py (NeMo main since 2024-03-16, first in the 24.03 container); "
                        "set it to false or use container=nemo_24.03 or newer.")
            return None
    return None


def packed_npy(spec: DictConfig, run_dir: str) -> str:
    size = spec.model.data.train_ds.max_seq_length
    return os.path.join(run_dir, "data", f"packed_{size}_seed{PACK_SEED}.npy")


def packed_train_overrides(spec: DictConfig, run_dir: str, overrides: List[Tuple[str, Any]]) -> List[Tuple[str, Any]]:
    """With packed_sequence on, the training reads the packed .npy instead of the jsonl and turns NeMo's
    packed-sequence path on; otherwise the overrides as they are."""
    if not spec.model.data.train_ds.packed_sequence:
        return overrides
    out = [(k, [packed_npy(spec, run_dir)] if k == "model.data.train_ds.file_names" else v) for k, v in overrides]
    at = [k for k, _ in out].index("model.data.train_ds.file_names") + 1
    out.insert(at, ("+model.data.train_ds.packed_sequence", True))
    return out


def pack_overrides(spec: DictConfig, run_dir: str) -> List[Tuple[str, Any]]:
    """prepare_packed_ft_dataset.py @ 24.03-era main: it restores the base .nemo (for its tokenizer and data
    settings), tokenizes train_ds as the fine-tuning would and packs it to max_seq_length.

    One process on one GPU (TP=PP=1, the layout of a converted base .nemo), so one rank writes the .npy;
    16-bit weights (bf16, O2) halve what the restore needs: the step only tokenizes, it never trains."""
    m = spec.model
    d = m.data.train_ds
    return [
        ("trainer.devices", 1),
        ("trainer.num_nodes", 1),
        ("trainer.precision", "bf16"),
        ("exp_manager.exp_dir", os.path.join(run_dir, "pack")),
        ("model.restore_from_path", m.restore_from_path),
        ("model.megatron_amp_O2", True),
        ("++model.mcore_gpt", m.mcore_gpt),
        ("model.tensor_model_parallel_size", 1),
        ("model.pipeline_model_parallel_size", 1),
        ("model.data.train_ds.file_names", list(d.file_names)),
        ("model.data.train_ds.max_seq_length", d.max_seq_length),
        ("+output_dir", os.path.join(run_dir, "data")),
        ("+pack_sizes", [d.max_seq_length]),
        ("+seed", PACK_SEED),
    ] + data_overrides(spec, "train_ds")  # the same prompt template and label key as the training


def prepare_steps(spec: DictConfig, run_dir: str) -> List[Step]:
    """Steps of the job that must finish (afterok) before training: the packing step when packed_sequence is on."""
    if not spec.model.data.train_ds.packed_sequence:
        return []
    problem = packing_problem(spec)
    if problem:
        raise UserError(problem)
    script = spec.backend.pack_script
    args = _render(pack_overrides(spec, run_dir), [])
    # As the reference runs eval: plain python, Lightning spawns trainer.devices ranks itself.
    return [Step("pack", in_container(spec, ["python", script] + args), skip_if_exists=packed_npy(spec, run_dir))]


class NemoBackend:
    """NeMo as a `hpc_ft.backends.base.Backend`: delegates to this module's functions and to NeMo's log reader."""

    name = "nemo"
    tasks = ("sft",)
    keys = ("model", "trainer", "data", "peft", "exp_manager", "eval")
    requires_final_artifact = True

    def read_run(self, run_dir, reader, sources, log_files, options):
        from hpc_ft.track.nemo_checkpoints import read_nemo_run

        return read_nemo_run(run_dir, reader, sources, log_files, **options)

    def plan_fields(self, spec: DictConfig) -> Dict[str, Any]:
        m = spec.model
        flash = False if str(spec.backend.env.get("NVTE_FLASH_ATTN", "1")) == "0" else None
        return dict(optimizer=m.optim.name, recompute=m.activations_checkpoint_granularity,
                    gradient_checkpointing=False, flash_attention=flash,
                    lora_targets=tuple(m.peft.lora_tuning.target_modules) or None)

    def converts_data(self, report) -> bool:
        from hpc_ft.data.checks import needs_nemo_conversion

        return needs_nemo_conversion(report)

    def train_steps(self, spec: DictConfig, run_dir: str) -> List[Step]:
        return train_steps(spec, run_dir)

    def eval_steps(self, spec: DictConfig, run_dir: str) -> List[Step]:
        return eval_steps(spec, run_dir)

    def prepare_steps(self, spec: DictConfig, run_dir: str) -> List[Step]:
        return prepare_steps(spec, run_dir)

    def job_env(self, spec: DictConfig) -> Dict[str, str]:
        return job_env(spec)

    def input_problems(self, spec: DictConfig) -> List[str]:
        import os

        path = spec.model.restore_from_path
        if path and os.path.isfile(path):
            return []
        return [f"model.restore_from_path={path}: the base .nemo does not exist. "
                "Convert it first: `hpc-ft model convert` (or point the key at your .nemo)."]

    def point_values(self, spec, run_dir):
        # NeMo resumes from <exp_dir>/<name> (resume_if_exists): each sweep point gets its own, in its run directory
        return [("exp_manager.exp_dir", str(run_dir / "nemo"))]

    def reader_kwargs(self, cfg: DictConfig, run_dir) -> Dict[str, Any]:
        m = cfg.model
        own = nemo_exp_dir(str(run_dir))  # runs rendered before NeMo got a per-run exp_dir wrote to the shared one
        shared = os.path.join(cfg.exp_manager.exp_dir, cfg.exp_manager.name, "checkpoints")
        root = cfg.exp_manager.exp_dir if not os.path.isdir(own) and os.path.isdir(shared) else own
        return dict(exp_name=cfg.exp_manager.name, nemo_exp_root=root,
                    expected_ranks=int(m.tensor_model_parallel_size) * int(m.pipeline_model_parallel_size),
                    mode=cfg.exp_manager.early_stopping_callback_params.mode)

    def read_events(self, run_dir):
        from pathlib import Path

        from hpc_ft.track.nemo_checkpoints import slurm_default_logs
        from hpc_ft.track.job_log import parse_job_log

        logs = [p for p in (Path(run_dir) / "logs" / "job.out", Path(run_dir) / "logs" / "job.err") if p.exists()]
        events = []
        for p in logs or slurm_default_logs(run_dir):  # hpc-ft's logs, or a tutorial folder's slurm-<jobid>.out
            events += parse_job_log(p)
        return events

    def peak_memory_mb(self, run_dir):
        return None  # NeMo reports none
