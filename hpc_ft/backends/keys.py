"""Every key means what it says: the keys a backend refuses, and the one short list of keys outside the job.

A key of the composed config either changes the rendered job (or the arguments its runtime parses),
or the backend that cannot honour it refuses it in one line naming the key and the backend, or it is
on :data:`OUTSIDE_THE_JOB` below with the reason it cannot change the job script.
tests/core/test_every_key.py walks every leaf key for both backends and holds this to account.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Tuple

from omegaconf import DictConfig

from hpc_ft.errors import UserError

#: Keys that cannot change the job script, and what reads them instead (docs/own-data-and-models.md).
OUTSIDE_THE_JOB = {
    "cluster.name": "a label: run.json and `hpc-ft runs` show it",
    "cluster.nodes": "the site's node count, checked against trainer.num_nodes at submit",
    "cluster.gpu.model": "the planner's GPU (memory fit at submit)",
    "container.name": "a label of the container preset",
    "container.digest": "checked against the image at submit and recorded in run.json",
    "model.repo_id": "`hpc-ft model fetch` downloads it",
    "model.revision": "`hpc-ft model fetch` pins it",
    "model.hf_config": "the planner's architecture source at submit",
    "data.seq_len": "the planner's padded length at submit",
    "data.preparer": "the data preparation at submit",
    "data.source": "the data preparation at submit (the files it writes are checksummed into run.json)",
    "data.seed": "the data preparation at submit",
    "data.n_valid": "the data preparation at submit",
    "data.synthetic.n_train": "the data preparation at submit",
    "data.synthetic.n_valid": "the data preparation at submit",
    "data.synthetic.n_test": "the data preparation at submit",
    "sweep.parallelism": "a sweep's array throttle (%N), not one job",
    "cluster.gpu.per_node": "the cluster's GPUs per node: checks trainer.devices and the planner at submit",
}
#: ... and per backend
OUTSIDE_THE_BACKEND = {
    "hf": {
        "model.restore_from_path": "the nemo backend's base .nemo (`hpc-ft model convert` writes it)",
        "model.data.test_ds.global_batch_size": "NeMo's generation batch over ranks; hf generates in one process "
                                                "in batches of model.data.test_ds.micro_batch_size",
        "model.data.test_ds.names": "names NeMo's prediction files; hf writes predictions/test_predictions.jsonl",
        "data.name": "a label (NeMo's prediction file names come from it)",
    },
    "nemo": {
        "data.format": "the rows are converted at submit into NeMo jsonl in the run folder (checksummed in run.json)",
        "data.columns": "the rows are converted at submit into NeMo jsonl in the run folder",
        "data.prompt_template_no_input": "the rows are converted at submit into NeMo jsonl in the run folder",
        "data.chat_template": "refused at submit by the data checks (NeMo 24.03 has no chat template path)",
    },
}


#: Keys read only in some configurations: (key or key prefix, when it is read).
CONDITIONAL = {
    "model.peft.lora_tuning.": "model.peft.peft_scheme is lora or qlora",
    "model.peft.p_tuning.": "model.peft.peft_scheme is ptuning (nemo backend; hf refuses them)",
    "model.data.validation_ds.tokens_to_generate": "model.data.validation_ds.metric.name is not loss "
                                                   "(NeMo generates at validation only then)",
    "container.": "cluster.container_runtime is not none (else the job runs in no container)",
    "cluster.binds": "cluster.container_runtime is not none",
    "secrets": "cluster.container_runtime is not none (without a container the job inherits the environment)",
    "backend.pack_script": "model.data.train_ds.packed_sequence is true (nemo: the pack job runs it; hf refuses it)",
    "data.split.seed": "data.split.validation is set (a task carves validation out of train; sft refuses both)",
}


#: keys only the classification/NER/preference tasks read: refused for sft rather than ignored
TASK_ONLY = "Only task=classification, token_classification or preference read it."
SFT_REFUSED: list = [
    ("data.split.validation", lambda v: v is not None,
     TASK_ONLY + " For sft, name the validation file in model.data.validation_ds.file_names."),
    ("data.split.seed", lambda v: v != 42, TASK_ONLY),
    ("task.overlong", lambda v: v != "truncate",
     "sft cuts rows at max_seq_length (the submit summary counts them); raise model.data.train_ds.max_seq_length."),
]


def outside_the_job(backend: str) -> dict:
    return {**OUTSIDE_THE_JOB, **OUTSIDE_THE_BACKEND[backend]}


def read_here(key: str, spec: DictConfig) -> bool:
    """False for a key that this configuration does not read at all (see :data:`CONDITIONAL`)."""
    scheme = spec.model.peft.peft_scheme
    if key.startswith("model.peft.lora_tuning."):
        return scheme in ("lora", "qlora")
    if key.startswith("model.peft.p_tuning."):
        return scheme == "ptuning" or spec.backend.name == "hf"  # hf refuses them whatever the scheme
    if key == "model.data.validation_ds.tokens_to_generate":
        return spec.model.data.validation_ds.metric.name != "loss"
    if key.startswith("container.") or key in ("cluster.binds", "secrets"):
        return spec.cluster.container_runtime != "none"
    if key == "data.split.seed":  # sft refuses it; a task reads it when it carves validation out of train
        return spec.task.name == "sft" or spec.data.split.validation is not None
    if key == "backend.pack_script":
        return spec.backend.name == "hf" or bool(spec.model.data.train_ds.packed_sequence)
    return True


def cluster_env(spec: DictConfig) -> dict:
    """Environment every backend's job gets from cluster keys: cluster.scratch becomes TMPDIR."""
    return {"TMPDIR": str(spec.cluster.scratch)} if spec.cluster.scratch else {}


def select(spec: Any, key: str) -> Any:
    """The value at a dotted key of a spec (a DictConfig, or a sweep point's plain-dict SpecView); lists as lists."""
    node = spec
    for part in key.split("."):
        node = node[part]
    if not isinstance(node, (str, bytes)) and hasattr(node, "__len__") and hasattr(node, "__iter__") \
            and not hasattr(node, "keys"):
        return list(node)
    return node


#: (key, is it set away from what the backend can do? (None: away from the schema's default), fix)
Rule = Tuple[str, Optional[Callable[[Any], bool]], str]


def refuse(spec: DictConfig, backend: str, rules: Iterable[Rule]) -> None:
    """Raise one UserError line for the first key the backend cannot honour."""
    refuse_for(spec, f"the {backend} backend", rules)


def refuse_for(spec: DictConfig, who: str, rules: Iterable[Rule]) -> None:
    """Raise one UserError line for the first key that `who` (a backend, a task) cannot honour."""
    for key, bad, fix in rules:
        value = select(spec, key)
        if bad is None:
            from hpc_ft.compose.schema import schema_default

            bad = schema_default(key).__ne__
        if bad(value):
            raise UserError(f"{key}={value}: {who} does not use this key. {fix}")


def refuse_family(spec: DictConfig, family: str, known, what: str) -> None:
    """One line when the job's model family has no `what` here, naming where the family came from."""
    if family in known:
        return
    from hpc_ft.models.family import checkpoint_config

    source = checkpoint_config(spec)
    where = f"{source}: model_type" if source else "model.family"
    raise UserError(
        f"{where}={family}: NeMo 1.x has no {what} for this family (it has for {', '.join(known)}). "
        "Train it with backend=hf, or convert it yourself and set model.restore_from_path=<.nemo>."
    )
