"""Every key means what it says: the keys a backend refuses, and the one short list of keys outside the job.

A key of the composed config either changes the rendered job (or the arguments its runtime parses),
or the backend that cannot honour it refuses it in one line naming the key and the backend, or it is
on :data:`OUTSIDE_THE_JOB` below with the reason it cannot change the job script.
tests/core/test_every_key.py walks every leaf key for both backends and holds this to account.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Tuple

from omegaconf import DictConfig, OmegaConf

from hpc_ft.errors import UserError

#: Keys that cannot change the job script, and what reads them instead (docs/own-data-and-models.md).
OUTSIDE_THE_JOB = {
    "cluster.name": "a label: run.json and `hpc-ft runs` show it",
    "cluster.nodes": "the site's node count, checked against trainer.num_nodes at submit",
    "cluster.gpu.model": "the planner's GPU (memory fit at submit)",
    "model.repo_id": "`hpc-ft model fetch` downloads it",
    "model.revision": "`hpc-ft model fetch` pins it",
    "model.hf_config": "the planner's architecture source at submit",
    "data.seq_len": "the planner's padded length at submit",
    "data.source": "the data preparation at submit (the files it writes are checksummed into run.json)",
    "data.seed": "the data preparation at submit",
    "data.n_valid": "the data preparation at submit",
    "data.synthetic.n_train": "the data preparation at submit",
    "data.synthetic.n_valid": "the data preparation at submit",
    "data.synthetic.n_test": "the data preparation at submit",
    "sweep.parallelism": "a sweep's array throttle (%N), not one job",
    "container.name": "a label of the container preset",
    "container.digest": "checked against the image at submit and recorded in run.json",
}

#: Keys read only in some configurations: (key prefix, when it is read).
CONDITIONAL = {
    "model.peft.lora_tuning.": "model.peft.peft_scheme is lora or qlora",
    "model.peft.p_tuning.": "model.peft.peft_scheme is ptuning (nemo backend)",
    "model.data.validation_ds.tokens_to_generate": "model.data.validation_ds.metric.name is not loss "
                                                   "(NeMo generates at validation only then)",
}

#: (key, is it set away from what the backend can do?, fix)
Rule = Tuple[str, Callable[[Any], bool], str]


def refuse(spec: DictConfig, backend: str, rules: Iterable[Rule]) -> None:
    """Raise one UserError line for the first key the backend cannot honour."""
    for key, bad, fix in rules:
        value = OmegaConf.select(spec, key)
        if bad(value):
            shown = list(value) if OmegaConf.is_list(value) else value
            raise UserError(f"{key}={shown}: the {backend} backend does not use this key. {fix}")
