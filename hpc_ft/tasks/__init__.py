"""The tasks hpc-ft fine-tunes (conf/task/): what each one's rows hold, its head, its metrics and the metric it monitors.

`sft` is causal-LM fine-tuning on {input, output} rows (hpc_ft.data); the others are defined here and
prepared at submit by `hpc_ft.tasks.prepare` (read, map columns, check, split, write the run's data/).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

from hpc_ft.errors import UserError, did_you_mean


@dataclass(frozen=True)
class TaskDef:
    name: str
    fields: Tuple[str, ...]            # the fields every prepared row has (data.columns maps them)
    optional: Tuple[str, ...]          # fields a row may have
    auto_model: str                    # the transformers class that loads the trained model
    metrics: Tuple[str, ...]           # what the eval reports, by name
    formats: Tuple[str, ...]           # data.format values it reads


TASKS: Dict[str, TaskDef] = {
    "classification": TaskDef(
        "classification", ("text", "label"), ("text_pair",), "AutoModelForSequenceClassification",
        ("accuracy", "f1", "log_loss"), ("jsonl", "csv", "parquet")),
    "token_classification": TaskDef(
        "token_classification", ("tokens", "tags"), (), "AutoModelForTokenClassification",
        ("precision", "recall", "f1", "accuracy"), ("conll", "jsonl", "parquet")),
    "preference": TaskDef(
        "preference", ("prompt", "response_a", "response_b", "label"), (), "AutoModelForSequenceClassification",
        ("log_loss", "accuracy"), ("jsonl", "csv", "parquet")),
}
ALL_TASKS = ("sft",) + tuple(TASKS)
PREFERENCE_LABELS = ("a", "b", "tie")


def task_def(name: str) -> TaskDef:
    if name not in TASKS:
        raise UserError(f"task={name}: not one of {', '.join(ALL_TASKS)}.{did_you_mean(name, ALL_TASKS)}")
    return TASKS[name]
