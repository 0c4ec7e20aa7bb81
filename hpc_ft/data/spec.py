"""What a job's data is: the files of each split (NeMo's file_names) and the options that turn rows into text, from the JobSpec or from job arguments."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

from hpc_ft.data.formats import FormatOptions

SPLIT_KEYS = {"train": "model.data.train_ds.file_names", "validation": "model.data.validation_ds.file_names",
              "test": "model.data.test_ds.file_names"}


@dataclass(frozen=True)
class DataOptions:
    """How rows become text: the format, the column mapping, the template and whether only the answer carries the loss."""

    format: str = "auto"
    columns: Mapping[str, str] = field(default_factory=dict)
    prompt_template: str | None = None           # NeMo syntax; None: the format's default
    prompt_template_no_input: str | None = None  # used for rows whose `input` is empty
    label_key: str = "output"
    chat_template: bool = False                  # the tokenizer's own chat template
    answer_only_loss: bool = True

    def format_options(self) -> FormatOptions:
        return FormatOptions(label_key=self.label_key, columns=dict(self.columns))

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DataOptions":
        values = json.loads(text) if text else {}
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class SplitFiles:
    name: str                      # train | validation | test
    files: tuple[str, ...]
    weights: tuple[float, ...] = ()  # concat_sampling_probabilities (train only)

    @property
    def key(self) -> str:
        return SPLIT_KEYS[self.name]


def options_from_spec(spec) -> DataOptions:
    d, ds = spec.data, spec.model.data.train_ds
    return DataOptions(
        format=str(d.format), columns={str(k): str(v) for k, v in d.columns.items()},
        prompt_template=ds.prompt_template, prompt_template_no_input=d.prompt_template_no_input,
        label_key=str(ds.label_key), chat_template=bool(d.chat_template),
        answer_only_loss=bool(spec.model.answer_only_loss),
    )


def splits_from_spec(spec, names: Sequence[str] = ("train", "validation", "test")) -> list[SplitFiles]:
    md = spec.model.data
    out = []
    for name in names:
        ds = md[f"{name}_ds"]
        weights = tuple(float(w) for w in ds.concat_sampling_probabilities) if name == "train" else ()
        out.append(SplitFiles(name, tuple(str(f) for f in ds.file_names), weights))
    return out


# ---- the job side: the same facts as command-line arguments of the hf node programs ----------------
def add_data_arguments(parser: argparse.ArgumentParser, splits: Sequence[str]) -> None:
    """--<split>-file F [F ...] for each split, --train-weights, and --data-options (DataOptions as JSON)."""
    flags = {"train": "--train-file", "validation": "--valid-file", "test": "--test-file"}
    for name in splits:
        parser.add_argument(flags[name], nargs="+", required=True, metavar="FILE",
                            help=f"{name} data files (jsonl, json, csv, parquet or a save_to_disk folder)")
    if "train" in splits:
        parser.add_argument("--train-weights", nargs="+", type=float, default=None,
                            help="sampling probability of each train file (NeMo's concat_sampling_probabilities)")
    parser.add_argument("--data-options", default="{}",
                        help="format, columns, template and loss options as JSON (hpc_ft.data.spec.DataOptions)")


def data_arguments(splits: Sequence[SplitFiles], options: DataOptions) -> list:
    """The arguments add_data_arguments parses, for these splits and options."""
    flags = {"train": "--train-file", "validation": "--valid-file", "test": "--test-file"}
    args: list = []
    for split in splits:
        args += [flags[split.name], *split.files]
        if split.name == "train" and len(split.files) > 1:
            args += ["--train-weights", *split.weights]
    return args + ["--data-options", options.to_json()]
