"""Prepared task rows -> model inputs: sequence classification and preference (one label per row) and NER (a tag on each token's first subword).

A row longer than --max-seq-length is truncated (counted) or refused; a sentence is split into
pieces at word boundaries, and each piece remembers its words so predictions map back to whole tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from hpc_ft.errors import UserError

IGNORE_INDEX = -100


def read_rows(paths: str | Path | list, argument: str) -> list[dict]:
    """The prepared rows of one file (or of several, in order): jsonl written at submit by hpc_ft.tasks.prepare."""
    rows: list[dict] = []
    for path in map(Path, paths if isinstance(paths, list) else [paths]):
        if not path.is_file():
            raise UserError(f"{argument} {path}: no such file; the submit step writes it into the run's data/.")
        with open(path, encoding="utf-8") as handle:
            rows.extend(json.loads(line) for line in handle if line.strip())
    return rows


def read_labels(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--labels-file {path}: no such file; the submit step writes labels.json into the run's data/.")
    return list(json.loads(path.read_text(encoding="utf-8"))["labels"])


@dataclass
class Encoded:
    examples: list[dict]
    truncated: int = 0
    pieces: list[tuple[int, int, int]] = field(default_factory=list)  # NER: (row, first word, end word) per example


def encode_classification(tokenizer, rows: list[dict], labels: list[str], max_len: int, overlong: str) -> Encoded:
    index = {name: i for i, name in enumerate(labels)}
    out = Encoded([])
    for n, row in enumerate(rows):
        pair = row.get("text_pair")
        full = tokenizer(row["text"], pair, truncation=False)
        if len(full["input_ids"]) > max_len:
            if overlong == "refuse":
                raise UserError(f"row {n + 1}: {len(full['input_ids'])} tokens, more than --max-seq-length={max_len}; "
                                "refused (task.overlong=refuse). Raise model.data.train_ds.max_seq_length or set "
                                "task.overlong=truncate.")
            out.truncated += 1
            full = tokenizer(row["text"], pair, truncation=True, max_length=max_len)
        out.examples.append({"input_ids": full["input_ids"], "attention_mask": full["attention_mask"],
                             "labels": index[row["label"]]})
    return out


def preference_ids(tokenizer, row: dict, max_len: int) -> tuple[list[int], bool]:
    """<s> prompt \\n[A] response_a \\n[B] response_b: each part cut to its share when the whole does not fit."""
    parts = [row["prompt"], "\n[A] " + row["response_a"], "\n[B] " + row["response_b"]]
    ids = [list(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in parts]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    room = max_len - len(bos)
    cut = sum(len(x) for x in ids) > room
    if cut:
        shares = [room // 4, (room - room // 4) // 2, room - room // 4 - (room - room // 4) // 2]
        ids = [x[:s] if len(x) > s else x for x, s in zip(ids, shares)]
    return bos + [t for part in ids for t in part], cut


def encode_preference(tokenizer, rows: list[dict], labels: list[str], max_len: int, overlong: str) -> Encoded:
    index = {name: i for i, name in enumerate(labels)}
    out = Encoded([])
    for n, row in enumerate(rows):
        ids, cut = preference_ids(tokenizer, row, max_len)
        if cut and overlong == "refuse":
            raise UserError(f"row {n + 1}: prompt and responses exceed --max-seq-length={max_len}; refused "
                            "(task.overlong=refuse). Raise model.data.train_ds.max_seq_length or set task.overlong=truncate.")
        out.truncated += cut
        out.examples.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": index[row["label"]]})
    return out


def encode_tokens(tokenizer, rows: list[dict], labels: list[str], max_len: int, overlong: str) -> Encoded:
    """The first subword of each word carries its tag; the other subwords and [CLS]/[SEP] get -100. A sentence
    whose subwords do not fit is cut into word-aligned pieces (overlong=split) or refused."""
    index = {name: i for i, name in enumerate(labels)}
    out = Encoded([])
    for n, row in enumerate(rows):
        words, tags = row["tokens"], row.get("tags") or ["O"] * len(row["tokens"])
        widths = [max(1, len(tokenizer(w, add_special_tokens=False)["input_ids"])) for w in words]
        start = 0
        while start < len(words):
            end, used = start, 2
            while end < len(words) and used + widths[end] <= max_len:
                used += widths[end]
                end += 1
            if end == start:
                raise UserError(f"sentence {n + 1}: the word '{words[start][:30]}' alone has more subwords than "
                                f"--max-seq-length={max_len} allows; raise model.data.train_ds.max_seq_length.")
            if end < len(words) and overlong == "refuse":
                raise UserError(f"sentence {n + 1}: {sum(widths) + 2} subwords, more than --max-seq-length={max_len}; "
                                "refused (task.overlong=refuse). Raise the length or set task.overlong=split.")
            enc = tokenizer(words[start:end], is_split_into_words=True, truncation=False)
            label_ids, seen = [], set()
            for word in enc.word_ids():
                if word is None or word in seen:
                    label_ids.append(IGNORE_INDEX)
                else:
                    seen.add(word)
                    label_ids.append(index.get(tags[start + word], 0))
            out.examples.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                                 "labels": label_ids})
            out.pieces.append((n, start, end))
            out.truncated += start > 0
            start = end
    return out


ENCODERS = {"classification": encode_classification, "preference": encode_preference,
            "token_classification": encode_tokens}


def collator(task: str, tokenizer):
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

    if task == "token_classification":
        return DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE_INDEX)
    return DataCollatorWithPadding(tokenizer)
