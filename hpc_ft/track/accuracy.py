"""Exact-match accuracy of a predictions file ({input, pred, label} per line), with the misses.

Works on NeMo's ``<prefix>_test_<name>_inputs_preds_labels.jsonl`` and on the hf backend's
predictions alike. A prediction counts when it equals the label after stripping surrounding
whitespace and any trailing end-of-sequence text (``</s>``, ``<|endoftext|>``, ...) that NeMo
leaves in generated text. A label may also be a list of accepted answers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from hpc_ft.errors import UserError

EOS_TEXTS: tuple[str, ...] = ("</s>", "<|endoftext|>", "<|eot_id|>", "<|im_end|>", "<|end|>", "<eos>", "<EOS>")


def normalize_answer(text: str, eos_texts: tuple[str, ...] = EOS_TEXTS) -> str:
    """Strip whitespace and trailing EOS texts (repeated, with whitespace between)."""
    text = text.strip()
    changed = True
    while changed and text:
        changed = False
        for eos in eos_texts:
            if eos and text.endswith(eos):
                text = text[: -len(eos)].rstrip()
                changed = True
    return text


def abbreviate(text: str, width: int = 80) -> str:
    """One line, at most ``width`` characters: the start and the end (where the question is)."""
    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    head = width // 3
    tail = width - head - 1
    return f"{flat[:head]}…{flat[-tail:]}"


@dataclass(frozen=True)
class Miss:
    line: int  # 1-based line number in the file
    input: str  # abbreviated
    pred: str
    label: str


@dataclass
class AccuracyReport:
    path: Path
    n: int
    correct: int
    misses: list[Miss] = field(default_factory=list)

    @property
    def accuracy(self) -> float | None:
        """correct / n; None for an empty file."""
        return self.correct / self.n if self.n else None


def _answer(value: object, key: str, path: Path, lineno: int) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [str(value)]
    if key == "label" and isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise UserError(
        f"{path}:{lineno}: '{key}' must be a string{' or a list of strings' if key == 'label' else ''}, "
        f"not {type(value).__name__}. Fix: write one JSON object per line with string 'pred' and 'label'."
    )


def score_predictions(
    path: str | os.PathLike,
    eos_texts: tuple[str, ...] = EOS_TEXTS,
    input_width: int = 80,
    max_misses: int | None = None,
) -> AccuracyReport:
    """Exact-match accuracy of a predictions jsonl. Blank lines are skipped; any other line that
    is not a JSON object with ``pred`` and ``label`` raises ``UserError`` naming file and line."""
    path = Path(path)
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: predictions file not found. Fix: run the evaluation first, or check the path.") from None
    report = AccuracyReport(path=path, n=0, correct=0)
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise UserError(f"{path}:{lineno}: not valid JSON ({exc.msg}). Fix: one JSON object per line.") from None
            if not isinstance(record, dict) or "pred" not in record or "label" not in record:
                raise UserError(
                    f"{path}:{lineno}: expected a JSON object with 'pred' and 'label' (and 'input'). "
                    "Fix: write predictions as {\"input\": ..., \"pred\": ..., \"label\": ...}."
                )
            preds = _answer(record["pred"], "pred", path, lineno)
            labels = _answer(record["label"], "label", path, lineno)
            pred = normalize_answer(preds[0], eos_texts)
            accepted = {normalize_answer(label, eos_texts) for label in labels}
            report.n += 1
            if pred in accepted:
                report.correct += 1
            elif max_misses is None or len(report.misses) < max_misses:
                raw_input = record.get("input", "")
                report.misses.append(
                    Miss(
                        line=lineno,
                        input=abbreviate(raw_input if isinstance(raw_input, str) else json.dumps(raw_input, ensure_ascii=False), input_width),
                        pred=pred,
                        label=normalize_answer(labels[0], eos_texts),
                    )
                )
    return report
