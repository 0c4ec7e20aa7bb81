"""The typed schema of a job (structured config): every key a user may set, with its type.

Keys follow NeMo's names (trainer.*, model.*, exp_manager.*) so that overrides from the reference
tutorial paste unchanged. The composed Hydra config is merged onto `JobSpec`; an unknown key or a
value of the wrong type is refused there, before anything is rendered.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, OmegaConf


def path_basename(path: Any) -> str:
    """`${basename:PATH}`: the last part of a path, e.g. the checkpoint folder's name for model.name."""
    if not path:
        raise ValueError("model.hf_path is not set, so the model has no folder name; set model.hf_path or model.name")
    return os.path.basename(os.path.normpath(str(path)))


OmegaConf.register_new_resolver("basename", path_basename, replace=True)


@dataclass
class GpuConf:
    model: str = "cpu"          # a name from the GPU catalogue (hpc_ft.plan.gpus)
    per_node: int = 0           # GPUs on one node of this cluster
    request: str = "gres"       # gres (--gres=gpu:N) | gpus-per-node (--gpus-per-node=N) | none


@dataclass
class ClusterConf:
    name: str = MISSING
    executor: str = "local"     # local | slurm
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    time: str = "01:00:00"      # Slurm time limit: [D-]HH:MM:SS or minutes
    nodes: int = 1
    gpu: GpuConf = field(default_factory=GpuConf)
    cpus_per_task: int = 1
    mem_per_cpu: Optional[str] = None
    mem: Optional[str] = None
    modules: List[str] = field(default_factory=list)      # `module load` lines
    setup: List[str] = field(default_factory=list)        # extra shell lines before the job body
    binds: List[str] = field(default_factory=list)        # container bind paths src[:dst[:opts]]
    env: Dict[str, str] = field(default_factory=dict)     # plain (non-secret) environment
    scratch: Optional[str] = None
    container_runtime: str = "none"  # none | singularity | apptainer
    signal_before_timeout_s: int = 90
    max_requeues: int = 3
    sbatch_extra: Dict[str, str] = field(default_factory=dict)  # extra #SBATCH --key=value
    # #SBATCH --export=...: null = Slurm's default (ALL: the submitting shell's environment); NONE = the
    # job starts from a clean environment (what careful sites use). The script sets what the job needs.
    export: Optional[str] = None


@dataclass
class ContainerConf:
    name: str = "none"
    image: Optional[str] = None
    digest: Optional[str] = None


@dataclass
class BackendConf:
    name: str = "hf"            # hf | nemo
    # hf
    threads: Optional[int] = None
    generate_max_new_tokens: Optional[int] = None  # replaced by model.data.test_ds.tokens_to_generate
    group_by_length: Optional[bool] = None  # rows of similar length per micro-batch; null = on (hf only)
    # nemo
    finetune_script: str = "/opt/NeMo/examples/nlp/language_modeling/tuning/megatron_gpt_finetuning.py"
    generate_script: str = "/opt/NeMo/examples/nlp/language_modeling/tuning/megatron_gpt_generate.py"
    convert_script: Optional[str] = None  # null: the converter of the model's family
    pack_script: str = "/opt/NeMo/scripts/nlp_language_modeling/prepare_packed_ft_dataset.py"
    extra_overrides: List[str] = field(default_factory=list)
    env: Dict[str, str] = field(default_factory=dict)


@dataclass
class TrainerConf:
    devices: int = 1
    num_nodes: int = 1
    precision: str = "32"       # 16 | 16-mixed | bf16 | bf16-mixed | 32
    max_epochs: int = -1
    max_steps: int = 2000
    val_check_interval: Any = 25  # int: every N steps; float in (0, 1]: a fraction of max_steps
    gradient_clip_val: float = 1.0
    log_every_n_steps: int = 5


@dataclass
class LoraTuningConf:
    adapter_dim: int = 16
    alpha: int = 32
    adapter_dropout: float = 0.0
    target_modules: List[str] = field(default_factory=lambda: ["attention_qkv"])


@dataclass
class PTuningConf:
    virtual_tokens: int = 10
    bottleneck_dim: int = 1024
    embedding_dim: int = 1024


@dataclass
class PeftConf:
    peft_scheme: str = "lora"
    restore_from_path: Optional[str] = None
    lora_tuning: LoraTuningConf = field(default_factory=LoraTuningConf)
    p_tuning: PTuningConf = field(default_factory=PTuningConf)


@dataclass
class SchedConf:
    name: Optional[str] = None           # CosineAnnealing | linear | constant; null: nemo CosineAnnealing, hf linear
    warmup_steps: Optional[int] = None   # null: nemo 50, hf 0
    min_lr: Optional[float] = None       # null: 0.0 on both


@dataclass
class OptimConf:
    name: str = "fused_adam"             # fused_adam | adamw | adam | sgd (hf: fused_adam and adamw are AdamW)
    lr: float = 1e-4
    weight_decay: Optional[float] = None  # null: nemo 0.01, hf 0.0
    betas: Optional[List[float]] = None   # null: nemo [0.9, 0.98], hf [0.9, 0.999]
    sched: SchedConf = field(default_factory=SchedConf)


@dataclass
class MetricConf:
    name: str = "loss"


@dataclass
class TrainDsConf:
    # null entries (data.validation_file=null through the preset's interpolation) are dropped after composing
    file_names: List[Optional[str]] = field(default_factory=list)
    concat_sampling_probabilities: List[float] = field(default_factory=lambda: [1.0])
    max_seq_length: int = 2048
    num_workers: int = 0
    # NeMo's template syntax, fields in braces, the answer (label_key) last; applies to every split.
    # null: the format's default (NeMo's "{input} {output}"; alpaca's; the tokenizer's chat template for chat rows)
    prompt_template: Optional[str] = None
    label_key: str = "output"
    packed_sequence: bool = False  # several rows per sequence of max_seq_length (nemo: a packing job first)


@dataclass
class ValidationDsConf:
    file_names: List[Optional[str]] = field(default_factory=list)
    tokens_to_generate: int = 10
    metric: MetricConf = field(default_factory=MetricConf)
    num_workers: int = 0


@dataclass
class TestDsConf:
    file_names: List[Optional[str]] = field(default_factory=list)
    names: List[str] = field(default_factory=list)
    global_batch_size: int = 16
    micro_batch_size: int = 4
    tokens_to_generate: int = 10


@dataclass
class ModelDataConf:
    train_ds: TrainDsConf = field(default_factory=TrainDsConf)
    validation_ds: ValidationDsConf = field(default_factory=ValidationDsConf)
    test_ds: TestDsConf = field(default_factory=TestDsConf)


@dataclass
class ModelConf:
    name: str = "${basename:${model.hf_path}}"  # default: the checkpoint folder's name
    family: Optional[str] = None         # config.json model_type decides; names the family before one exists
    build: Optional[str] = None          # "tiny": built locally by the job when missing
    build_chat_template: Optional[str] = None  # build=tiny: a chat template for its tokenizer (llama2)
    repo_id: Optional[str] = None        # Hugging Face repo for `hpc-ft model fetch`
    revision: Optional[str] = None
    hf_path: Optional[str] = None        # HF snapshot directory (config.json, weights, tokenizer)
    hf_config: Optional[str] = None      # a config.json to plan from (default: hf_path/config.json)
    restore_from_path: Optional[str] = None  # NeMo base model (.nemo)
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    micro_batch_size: int = 8
    global_batch_size: int = 8
    megatron_amp_O2: bool = False
    mcore_gpt: bool = True
    sequence_parallel: bool = False
    activations_checkpoint_granularity: Optional[str] = None  # null | selective | full
    seed: int = 1234
    answer_only_loss: bool = True        # NeMo's key: the loss on the answer (assistant turns) only
    optim: OptimConf = field(default_factory=OptimConf)
    peft: PeftConf = field(default_factory=PeftConf)
    data: ModelDataConf = field(default_factory=ModelDataConf)


@dataclass
class EarlyStoppingConf:
    monitor: str = "val_loss"
    mode: str = "min"
    min_delta: float = 0.001
    patience: int = 3


@dataclass
class CheckpointCallbackConf:
    save_top_k: int = 1


@dataclass
class ExpManagerConf:
    exp_dir: str = MISSING
    name: str = MISSING
    resume_if_exists: bool = True
    create_early_stopping_callback: bool = True
    early_stopping_callback_params: EarlyStoppingConf = field(default_factory=EarlyStoppingConf)
    checkpoint_callback_params: CheckpointCallbackConf = field(default_factory=CheckpointCallbackConf)


@dataclass
class SyntheticDataConf:
    n_train: int = 600
    n_valid: int = 100
    n_test: int = 200


@dataclass
class DataSplitConf:
    validation: Optional[float] = None    # carve this fraction of the train file out as the validation split
    seed: int = 42                        # the split's shuffle seed (recorded in run.json)


@dataclass
class DataConf:
    name: str = MISSING
    preparer: str = "jcommonsenseqa"      # what writes data.dir from data.source: jcommonsenseqa | alpaca
    source: Optional[str] = None          # a JGLUE checkout, "synthetic", or null (already prepared)
    seq_len: int = 256                    # padded tokens per sample, for the planner's activation estimate
    seed: int = 42
    n_valid: int = 1000
    synthetic: SyntheticDataConf = field(default_factory=SyntheticDataConf)
    dir: str = MISSING
    # sft: auto | nemo | alpaca | chat | sharegpt | columns (hpc_ft.data.formats);
    # classification/NER/preference: auto (from the extension) | jsonl | csv | parquet | conll (hpc_ft.tasks.rows)
    format: str = "auto"
    columns: Dict[str, str] = field(default_factory=dict)   # template (or task) field -> column of the rows
    prompt_template_no_input: Optional[str] = None  # the template for rows whose `input` is empty
    chat_template: bool = False           # render with the tokenizer's own chat template (template=chat)
    train_file: str = MISSING
    validation_file: Optional[str] = MISSING  # null: carved out of the train file by data.split.validation
    test_file: Optional[str] = MISSING
    split: DataSplitConf = field(default_factory=DataSplitConf)


@dataclass
class TaskConf:
    """What is learnt: sft (causal LM on {input, output}), classification, token_classification, preference."""

    name: str = "sft"
    labels: Optional[List[str]] = None    # a fixed label set (preference: [a, b, tie]); null: collected from train
    # a sentence/row longer than max_seq_length: split (token_classification) | truncate | refuse
    overlong: str = "refuse"


@dataclass
class SweepConf:
    steps: Optional[int] = None
    parallelism: int = 4


@dataclass
class JobSpec:
    """Everything about one job, resolved: what `config.yaml` of a run directory holds."""

    work_dir: str = "."
    eval: bool = False
    cluster: ClusterConf = field(default_factory=ClusterConf)
    container: ContainerConf = field(default_factory=ContainerConf)
    backend: BackendConf = field(default_factory=BackendConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    model: ModelConf = field(default_factory=ModelConf)
    exp_manager: ExpManagerConf = field(default_factory=ExpManagerConf)
    data: DataConf = field(default_factory=DataConf)
    task: TaskConf = field(default_factory=TaskConf)
    sweep: SweepConf = field(default_factory=SweepConf)
    secrets: List[str] = field(default_factory=list)


def schema_default(key: str) -> Any:
    """The schema's default of a dotted key (`model.data.test_ds.tokens_to_generate` -> 10)."""
    import dataclasses

    node: Any = JobSpec()
    for part in key.split("."):
        if not dataclasses.is_dataclass(node):
            raise KeyError(key)
        node = getattr(node, part)
    return node
