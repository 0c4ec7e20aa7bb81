"""Prepare a task's data at submit: read the splits, map columns, check rows, split off validation, and write the run's data/ folder.

`prepare_task_data(spec)` does everything that can refuse (nothing is written, nothing submitted on
a refusal); `PreparedTask.write(run_dir / "data")` then writes train/validation/test.jsonl and
labels.json, the files the job reads, and returns what run.json records about them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig

from hpc_ft.data.spec import SPLIT_KEYS
from hpc_ft.errors import UserError
from hpc_ft.tasks import PREFERENCE_LABELS, task_def
from hpc_ft.tasks import checks
from hpc_ft.tasks.rows import Rows, as_dict, file_format, map_columns, read_rows, write_jsonl
from hpc_ft.tasks.synthetic import make_synthetic

SPLIT_FILES = {"train": "train.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"}
LABELS_FILE = "labels.json"
SPECIAL_TOKENS = 2  # [CLS] ... [SEP]


@dataclass
class PreparedTask:
    task: str
    splits: Dict[str, List[dict]]
    labels: List[str]
    sources: Dict[str, str]
    split: Optional[Dict[str, Any]] = None
    notes: List[str] = field(default_factory=list)

    def write(self, folder: Path) -> Dict[str, Any]:
        """The job's inputs under `folder`; returns {files: {path: sha256}, labels, rows, sources, split}."""
        folder.mkdir(parents=True, exist_ok=True)
        files: Dict[str, str] = {}
        for name, rows in self.splits.items():
            path = folder / SPLIT_FILES[name]
            write_jsonl(path, rows)
            files[str(path)] = _sha256(path)
        labels_path = folder / LABELS_FILE
        labels_path.write_text(json.dumps({"task": self.task, "labels": self.labels}, ensure_ascii=False, indent=1)
                               + "\n", encoding="utf-8")
        files[str(labels_path)] = _sha256(labels_path)
        return {"task": self.task, "files": files, "labels": self.labels, "sources": self.sources,
                "rows": {k: len(v) for k, v in self.splits.items()}, "split": self.split, "notes": self.notes}


def prepared_paths(run_dir: str) -> Dict[str, str]:
    """Where the job finds the prepared splits and labels of a run (the backend's view)."""
    folder = os.path.join(run_dir, "data")
    out = {k: os.path.join(folder, v) for k, v in SPLIT_FILES.items()}
    out["labels"] = os.path.join(folder, LABELS_FILE)
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def split_files(spec: DictConfig, split: str) -> List[str]:
    """The files of a split: NeMo's file_names, the one source of truth on every backend and task (the data
    preset's data.*_file fill them; a null entry, e.g. data.validation_file=null, names no file)."""
    return [str(f) for f in spec.model.data[f"{split}_ds"].file_names if f]


def _ensure_synthetic(spec: DictConfig, dry_run: bool, notes: List[str]) -> bool:
    """Write the synthetic set where the data preset points when data.source=synthetic and one of its files that
    the job reads is missing. Returns False when a dry run left it unwritten."""
    d = spec.data
    preset = {f for f in (d.train_file, d.validation_file, d.test_file) if f}
    wanted = [f for split in SPLIT_FILES for f in split_files(spec, split) if f in preset]
    if d.source != "synthetic" or all(os.path.isfile(f) for f in wanted):
        return True
    if dry_run:
        notes.append(f"data: {d.dir} is not prepared yet (a real submit writes the synthetic {spec.task.name} set)")
        return False
    s = d.synthetic
    make_synthetic(spec.task.name, Path(d.train_file), Path(d.validation_file) if d.validation_file else None,
                   Path(d.test_file) if d.test_file else None, s.n_train, s.n_valid, s.n_test, d.seed)
    return True


def _read_files(spec: DictConfig, split: str, max_tokens: int, notes: List[str]) -> List[tuple]:
    """(Rows, checked rows) of each file of a split, in file_names order."""
    preset = spec.data[f"{split}_file"]  # name the key the user set: the preset's file, or file_names itself
    return [_read_split(spec, f"data.{split}_file" if path == preset else SPLIT_KEYS[split], path, max_tokens, notes)
            for path in split_files(spec, split)]


def _check_weights(spec: DictConfig, files: List[str]) -> None:
    weights = [float(w) for w in spec.model.data.train_ds.concat_sampling_probabilities]
    if len(files) > 1 and len(set(weights)) > 1:
        raise UserError(
            f"model.data.train_ds.concat_sampling_probabilities={weights}: task={spec.task.name} trains on all rows of "
            "its train files, once each per epoch; drop the probabilities (or repeat a file in file_names to weight it).")


def _read_split(spec: DictConfig, key: str, path: str, max_tokens: int, notes: List[str]) -> tuple[Rows, List[dict]]:
    task = spec.task.name
    tdef = task_def(task)
    fmt = file_format(path, spec.data.format, key)
    if fmt not in tdef.formats:
        raise UserError(f"data.format={fmt}: task={task} reads {', '.join(tdef.formats)}; convert {path} "
                        "or pick the matching task.")
    rows = read_rows(path, fmt, key)
    columns = as_dict(spec.data.columns)
    wanted = list(tdef.fields)
    extra: tuple = ()
    if task == "preference":
        extra = ("label_a", "label_b", "label_tie")
        for alias, column in (("label_a", "winner_model_a"), ("label_b", "winner_model_b"), ("label_tie", "winner_tie")):
            if alias in columns:  # data.columns.label_a=<column>: the one-hot columns under other names
                columns[column] = columns.pop(alias)
        if rows.rows and "label" not in rows.rows[0] and "label" not in columns:
            wanted.remove("label")  # one-hot winner_* columns (checked per row)
    if fmt == "conll" and columns:
        raise UserError("data.columns: CoNLL files have no column names (token first, tag last); drop data.columns.")
    one_hot = {k: v for k, v in columns.items() if k in checks.ONE_HOT}
    mapped = {k: v for k, v in columns.items() if k not in checks.ONE_HOT}
    map_columns(rows, mapped, wanted, tdef.optional, extra)
    for column, source in one_hot.items():
        for row in rows.rows:
            row[column] = row.get(source)
    if not rows.rows:
        raise UserError(f"{key}={path}: the file has no rows.")
    if task == "classification":
        prepared = checks.classification(rows)
    elif task == "token_classification":
        prepared = checks.token_classification(rows, max_tokens, spec.task.overlong, notes)
    else:
        prepared = checks.preference(rows)
    return rows, prepared


def _labels(task: str, spec: DictConfig, train: List[dict]) -> List[str]:
    if task == "preference":
        return list(PREFERENCE_LABELS)
    if task == "token_classification":
        types = sorted({t[2:] for row in train for t in row["tags"] if t != "O"})
        return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]
    names = checks.sort_labels([row["label"] for row in train])
    if spec.task.labels:
        fixed = [str(x) for x in spec.task.labels]
        extra = [n for n in names if n not in fixed]
        if extra:
            raise UserError(f"task.labels: the train split has label '{extra[0]}' that task.labels does not list; "
                            "add it or fix the rows.")
        return fixed
    if len(names) < 2:
        raise UserError(f"{SPLIT_KEYS['train']}={split_files(spec, 'train')}: one label only ({names[0] if names else '-'}); "
                        "classification needs at least two.")
    return names


def _check_eval_labels(task: str, labels: List[str], source: Rows, rows: List[dict], key: str) -> None:
    if task == "classification":
        checks.check_known_labels(rows, source, labels, key)
    elif task == "token_classification":
        known = set(labels)
        for i, row in enumerate(rows):
            for tag in row["tags"]:
                if tag not in known:
                    raise UserError(
                        f"{source.where(i)}: entity type '{tag[2:]}' ({tag}) never occurs in the train split "
                        f"(types: {', '.join(sorted({t[2:] for t in labels if t != 'O'}))}); the model could never "
                        "tag it. Fix the tag, or add training sentences with it.")


def _carve_validation(train: List[dict], fraction: float, seed: int) -> tuple[List[dict], List[dict]]:
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    n_valid = max(1, round(len(train) * fraction))
    if n_valid >= len(train):
        raise UserError(f"data.split.validation={fraction}: leaves no train rows out of {len(train)}; use a smaller "
                        "fraction.")
    held = set(order[:n_valid])
    return [r for i, r in enumerate(train) if i not in held], [train[i] for i in sorted(held)]


def prepare_task_data(spec: DictConfig, dry_run: bool = False, notes: Optional[List[str]] = None) -> Optional[PreparedTask]:
    """Read and check every split of a non-SFT task; None for SFT (or a dry run with synthetic data not yet written)."""
    notes = notes if notes is not None else []
    task = spec.task.name
    if task == "sft":
        return None
    task_def(task)
    if spec.backend.name != "hf":
        raise UserError(f"task={task}: the {spec.backend.name} backend fine-tunes causal LMs only (task=sft); "
                        f"use backend=hf for {task}.")
    _check_task_keys(spec)
    if not _ensure_synthetic(spec, dry_run, notes):
        return None
    d = spec.data
    max_tokens = int(spec.model.data.train_ds.max_seq_length) - SPECIAL_TOKENS
    own: List[str] = []
    files = {split: split_files(spec, split) for split in SPLIT_FILES}
    if not files["train"]:
        raise UserError(f"{SPLIT_KEYS['train']} is empty; name the train file(s), e.g. data.train_file=/path/train.jsonl.")
    _check_weights(spec, files["train"])
    read_train = _read_files(spec, "train", max_tokens, own)
    train = [row for _, rows in read_train for row in rows]
    sources = {split: _joined(names) for split, names in files.items() if names}
    split_info = None
    frac = d.split.validation
    read_valid: List[tuple] = []
    if frac is not None:
        if files["validation"]:
            raise UserError(f"data.split.validation={frac} and {SPLIT_KEYS['validation']}={files['validation']}: "
                            "give one; set data.validation_file=null to carve validation out of the train file.")
        if not 0 < frac < 1:
            raise UserError(f"data.split.validation={frac}: a fraction in (0, 1), e.g. 0.1.")
        train, valid = _carve_validation(train, float(frac), int(d.split.seed))
        split_info = {"validation": float(frac), "seed": int(d.split.seed), "from": sources["train"],
                      "train_rows": len(train), "validation_rows": len(valid)}
    elif files["validation"]:
        read_valid = _read_files(spec, "validation", max_tokens, own)
        valid = [row for _, rows in read_valid for row in rows]
    else:
        raise UserError(f"{SPLIT_KEYS['validation']} is empty and data.split.validation is not set; give a "
                        "validation file (data.validation_file=...) or data.split.validation=0.1 to carve one out of "
                        "the train file.")
    labels = _labels(task, spec, train)
    splits = {"train": train, "validation": valid}
    for src, rows in read_valid:
        _check_eval_labels(task, labels, src, rows, SPLIT_KEYS["train"])
    if files["test"]:
        read_test = _read_files(spec, "test", max_tokens, own)
        for src, rows in read_test:
            _check_eval_labels(task, labels, src, rows, SPLIT_KEYS["train"])
        splits["test"] = [row for _, rows in read_test for row in rows]
    elif spec.eval:
        raise UserError(f"{SPLIT_KEYS['test']} is empty, but eval=true scores the test split; set "
                        "data.test_file=<file>.")
    notes.extend(own)
    return PreparedTask(task, splits, labels, sources, split_info, own)


def _check_task_keys(spec: DictConfig) -> None:
    t = spec.task
    allowed = {"classification": ("truncate", "refuse"), "token_classification": ("split", "refuse"),
               "preference": ("truncate", "refuse")}[t.name]
    if t.overlong not in allowed:
        raise UserError(f"task.overlong={t.overlong}: task={t.name} takes {' or '.join(allowed)}.")
    if t.name != "classification" and t.labels and t.name != "preference":
        raise UserError(f"task.labels: task={t.name} collects its tags from the train split; drop task.labels.")
    if t.name == "preference" and t.labels and list(t.labels) != list(PREFERENCE_LABELS):
        raise UserError(f"task.labels={list(t.labels)}: the preference task's classes are a, b, tie.")
    if spec.model.peft.peft_scheme not in ("lora", "none"):
        raise UserError(f"model.peft.peft_scheme={spec.model.peft.peft_scheme}: task={t.name} trains its head in full "
                        "with peft=lora or peft=none.")
    es = spec.exp_manager.early_stopping_callback_params
    metric = es.monitor[4:] if es.monitor.startswith("val_") else None
    valid = ("loss",) + task_def(t.name).metrics
    if metric not in valid:
        raise UserError(f"exp_manager.early_stopping_callback_params.monitor={es.monitor}: task={t.name} reports "
                        f"{', '.join('val_' + m for m in valid)}.")


def _joined(names: List[str]) -> str:
    return names[0] if len(names) == 1 else ",".join(names)


def task_source_checksums(spec: DictConfig) -> Dict[str, str]:
    """sha256 of the user's files a task run was prepared from (recorded in run.json)."""
    return {f: _sha256(Path(f)) for split in SPLIT_FILES for f in split_files(spec, split) if os.path.isfile(f)}


def task_summary(prepared: Optional[PreparedTask]) -> List[str]:
    """The lines `hpc-ft train` shows about a task's data: rows per split, labels, the split's seed."""
    if prepared is None:
        return []
    rows = ", ".join(f"{name} {len(rows)}" for name, rows in prepared.splits.items())
    shown = ", ".join(prepared.labels[:12]) + (" ..." if len(prepared.labels) > 12 else "")
    lines = [f"data ({prepared.task}): {rows} rows; {len(prepared.labels)} labels: {shown}"]
    if prepared.split:
        lines.append(f"  validation carved from train: {prepared.split['validation']:.0%} with seed {prepared.split['seed']}")
    return lines


def task_data_key(spec) -> Optional[tuple]:
    """What a task's prepared data depends on (sweep points sharing it are read and checked once); None for sft."""
    if spec.task.name == "sft":
        return None
    d, t = spec.data, spec.task
    return (t.name, t.overlong, tuple(t.labels or ()), d.source, d.train_file, d.validation_file, d.test_file,
            *(tuple(split_files(spec, split)) for split in SPLIT_FILES),
            tuple(spec.model.data.train_ds.concat_sampling_probabilities), d.format,
            tuple(sorted(as_dict(d.columns).items())), d.split.validation, d.split.seed, d.seed,
            d.synthetic.n_train, d.synthetic.n_valid, d.synthetic.n_test, bool(spec.eval),
            int(spec.model.data.train_ds.max_seq_length))
