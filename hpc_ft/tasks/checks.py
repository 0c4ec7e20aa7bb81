"""Row checks of each task at submit: labels, IOB2 tags (repaired as seqeval reads them, and counted), empty responses, overlong sentences.

Each function takes the `Rows` of one split (columns already mapped) and returns the prepared rows;
a row that cannot be used is one `UserError` naming `file:line` and a fix.
"""

from __future__ import annotations

import json
import re
from typing import List, Optional, Sequence

from hpc_ft.errors import UserError
from hpc_ft.tasks import PREFERENCE_LABELS
from hpc_ft.tasks.rows import Rows

IOB2 = re.compile(r"^(O|[BI]-\S+)$")
PREFERENCE_ALIASES = {"a": "a", "b": "b", "tie": "tie", "winner_model_a": "a", "winner_model_b": "b",
                      "winner_tie": "tie", "model_a": "a", "model_b": "b"}
ONE_HOT = ("winner_model_a", "winner_model_b", "winner_tie")


def label_name(value, where: str) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (float, list, dict)):
        raise UserError(f"{where}: label {value!r} is not a string or an integer; give each row a class name "
                        "or a class number.")
    return str(value).strip()


def classification(rows: Rows) -> List[dict]:
    out = []
    for i, row in enumerate(rows.rows):
        text = row.get("text")
        if not isinstance(text, str):
            raise UserError(f"{rows.where(i)}: 'text' is {type(text).__name__}, not a string; every row needs text.")
        item = {"text": text, "label": label_name(row.get("label"), rows.where(i))}
        pair = row.get("text_pair")
        if pair is not None:
            if not isinstance(pair, str):
                raise UserError(f"{rows.where(i)}: 'text_pair' is {type(pair).__name__}, not a string.")
            item["text_pair"] = pair
        out.append(item)
    return out


def sort_labels(names: Sequence[str]) -> List[str]:
    """Class numbers in numeric order, names in text order."""
    unique = sorted(set(names))
    if all(re.fullmatch(r"-?\d+", n) for n in unique):
        return sorted(unique, key=int)
    return unique


def check_known_labels(rows: List[dict], source: Rows, labels: Sequence[str], key: str) -> None:
    known = set(labels)
    for i, row in enumerate(rows):
        if row["label"] not in known:
            raise UserError(
                f"{source.where(i)}: label '{row['label']}' is not among the train split's labels "
                f"({', '.join(labels)}); the model could never predict it. Fix the label, or add rows with it to "
                f"the train file ({key}).")


def token_classification(rows: Rows, max_tokens: int, overlong: str, notes: List[str]) -> List[dict]:
    """Tokens and IOB2 tags; an I-X that does not follow B-X/I-X becomes B-X (seqeval's reading), counted;
    a sentence of more than `max_tokens` tokens is split at entity boundaries (overlong=split) or refused."""
    out: List[dict] = []
    repaired = split = 0
    for i, row in enumerate(rows.rows):
        tokens, tags = row.get("tokens"), row.get("tags")
        if not isinstance(tokens, list) or not isinstance(tags, list):
            raise UserError(f"{rows.where(i)}: 'tokens' and 'tags' must be lists (of words and of IOB2 tags).")
        if len(tokens) != len(tags):
            raise UserError(f"{rows.where(i)}: {len(tokens)} tokens but {len(tags)} tags; give one tag per token.")
        if not tokens:
            continue
        fixed, n = _repair_iob2([str(t) for t in tags], rows, i)
        repaired += n
        tokens = [str(t) for t in tokens]
        if len(tokens) > max_tokens:
            if overlong != "split":
                raise UserError(
                    f"{rows.where(i)}: a sentence of {len(tokens)} tokens is longer than max_seq_length allows "
                    f"({max_tokens} tokens besides [CLS]/[SEP]); refused (task.overlong=refuse). Raise "
                    "model.data.train_ds.max_seq_length or set task.overlong=split.")
            pieces = _split_sentence(tokens, fixed, max_tokens)
            split += len(pieces) - 1
            out.extend(pieces)
            continue
        out.append({"tokens": tokens, "tags": fixed})
    if repaired:
        notes.append(f"{rows.path}: {repaired} I- tag(s) without a preceding B-/I- of the same type read as B- "
                     "(as seqeval reads IOB2)")
    if split:
        notes.append(f"{rows.path}: sentences longer than {max_tokens} tokens split into pieces that fit "
                     f"({split} extra piece(s); task.overlong=split)")
    return out


def _repair_iob2(tags: List[str], rows: Rows, index: int) -> tuple[List[str], int]:
    fixed: List[str] = []
    repaired = 0
    for j, tag in enumerate(tags):
        if not IOB2.match(tag):
            where = rows.where(index)
            if rows.format == "conll" and rows.lines[index] is not None:
                where = f"{rows.path}:{rows.lines[index] + j}"
            raise UserError(
                f"{where}: tag '{tag}' is not IOB2 (O, B-TYPE or I-TYPE); convert the tags (IOBES/BIOES: S- -> B-, "
                "E- -> I-; plain TYPE -> B-TYPE/I-TYPE).")
        if tag.startswith("I-"):
            prev = fixed[-1] if fixed else "O"
            if prev == "O" or prev[2:] != tag[2:]:
                tag = "B-" + tag[2:]
                repaired += 1
        fixed.append(tag)
    return fixed, repaired


def _split_sentence(tokens: List[str], tags: List[str], limit: int) -> List[dict]:
    """Pieces of at most `limit` tokens, cut before a token that does not continue an entity where possible."""
    pieces = []
    start = 0
    while start < len(tokens):
        end = min(start + limit, len(tokens))
        if end < len(tokens):
            cut = end
            while cut > start + 1 and tags[cut].startswith("I-"):
                cut -= 1
            end = cut if cut > start + 1 else end
        piece_tags = list(tags[start:end])
        if piece_tags[0].startswith("I-"):
            piece_tags[0] = "B-" + piece_tags[0][2:]  # an entity cut in two: its second half starts anew
        pieces.append({"tokens": tokens[start:end], "tags": piece_tags})
        start = end
    return pieces


def preference(rows: Rows) -> List[dict]:
    """prompt, response_a, response_b and a label a|b|tie (also winner_model_a/winner_model_b/winner_tie, or those
    three as one-hot columns). A prompt or response stored as a JSON list of turns is joined with newlines."""
    out = []
    for i, row in enumerate(rows.rows):
        item = {}
        for name in ("prompt", "response_a", "response_b"):
            value = _turns(row.get(name))
            if not isinstance(value, str):
                raise UserError(f"{rows.where(i)}: '{name}' is {type(value).__name__}, not text.")
            if name != "prompt" and not value.strip():
                raise UserError(
                    f"{rows.where(i)}: {name} is empty; a preference between an answer and nothing teaches nothing. "
                    "Drop the row or fill the response.")
            item[name] = value
        item["label"] = _preference_label(row, rows.where(i))
        out.append(item)
    return out


def _turns(value):
    if isinstance(value, list) and all(isinstance(v, str) or v is None for v in value):
        return "\n".join(v or "" for v in value)
    if isinstance(value, str) and value.startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        if isinstance(parsed, list) and all(isinstance(v, str) or v is None for v in parsed):
            return "\n".join(v or "" for v in parsed)
    return value


def _preference_label(row: dict, where: str) -> str:
    value: Optional[object] = row.get("label")
    if value is None and all(k in row for k in ONE_HOT):
        hot = [k for k in ONE_HOT if str(row[k]).strip() in ("1", "1.0", "True", "true")]
        if len(hot) != 1:
            raise UserError(f"{where}: winner_model_a/winner_model_b/winner_tie must have exactly one 1 "
                            f"(found {[row[k] for k in ONE_HOT]}).")
        return PREFERENCE_ALIASES[hot[0]]
    name = str(value).strip().lower() if value is not None else ""
    if name not in PREFERENCE_ALIASES:
        raise UserError(
            f"{where}: label {value!r} is not a, b or tie (nor winner_model_a/winner_model_b/winner_tie); "
            "fix the row, or map the label column with data.columns.label=<column>.")
    return PREFERENCE_ALIASES[name]


__all__ = ["classification", "token_classification", "preference", "sort_labels", "check_known_labels",
           "PREFERENCE_LABELS"]
