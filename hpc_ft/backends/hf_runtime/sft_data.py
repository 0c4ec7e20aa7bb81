"""Instruction jsonl {input, output} -> token ids with the loss on the answer only (prompt masked, answer + EOS), and the padding collator."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hpc_ft.errors import UserError

IGNORE_INDEX = -100


def read_instruction_rows(path: str | Path, argument: str) -> list[dict]:
    """Rows of a jsonl file with string fields `input` and `output`; errors name the argument, file and line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{argument} {path}: no such file; prepare the data first or fix the path.")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{argument} {path}:{line_no}: not valid JSON ({exc.msg}); fix that line.") from None
            if not isinstance(row, dict) or not isinstance(row.get("input"), str) or "output" not in row:
                raise UserError(
                    f"{argument} {path}:{line_no}: each row needs a string 'input' and an 'output'; "
                    "re-run the data conversion."
                )
            rows.append({"input": row["input"], "output": str(row["output"])})
    if not rows:
        raise UserError(f"{argument} {path}: the file has no rows; prepare the data again.")
    return rows


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Prompt ids as both training and generation see them: the tokenizer's own specials, with BOS first if it has one."""
    ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids.insert(0, bos)
    return ids


def encode_example(tokenizer, prompt: str, answer: str, max_length: int) -> tuple[dict | None, bool]:
    """(input_ids = prompt + answer + EOS with labels masking the prompt, whether the prompt was cut).

    A prompt too long loses its start (its first token, BOS, is kept: the question sits at the end);
    the example is None when the answer alone does not fit.
    """
    prompt_ids = encode_prompt(tokenizer, prompt)
    answer_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    room = max_length - len(answer_ids)
    if room < 2:
        return None, False
    cut = len(prompt_ids) > room
    if cut:
        prompt_ids = prompt_ids[:1] + prompt_ids[len(prompt_ids) - room + 1:]
    example = {"input_ids": prompt_ids + answer_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids}
    return example, cut


@dataclass
class EncodedSplit:
    examples: list[dict]
    truncated: int
    dropped: int


def encode_split(tokenizer, rows: list[dict], max_length: int) -> EncodedSplit:
    examples, truncated, dropped = [], 0, 0
    for row in rows:
        example, cut = encode_example(tokenizer, row["input"], row["output"], max_length)
        if example is None:
            dropped += 1
            continue
        truncated += cut
        examples.append(example)
    return EncodedSplit(examples, truncated, dropped)


class AnswerOnlyCollator:
    """Right-pads a batch: pad id, attention mask 0, label -100 on the padding."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[row, :n] = torch.tensor(feature["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.tensor(feature["labels"], dtype=torch.long)
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
