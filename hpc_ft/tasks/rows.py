"""Reading a task's data files into plain rows: jsonl/csv/parquet through the data layer's reader (`datasets`), CoNLL column files, and the `data.columns` mapping.

Every problem is one `UserError` naming the file (and line where there is one) and a fix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from hpc_ft.errors import UserError

EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet", ".conll": "conll",
              ".txt": "conll", ".tsv": "conll", ".iob": "conll", ".iob2": "conll"}
DOCSTART = "-DOCSTART-"


@dataclass
class Rows:
    """The rows of one file, each with the line it came from (1-based; None where the format has none)."""

    path: Path
    format: str
    rows: List[dict]
    lines: List[Optional[int]]
    locate: Optional[Callable[[int], str]] = None  # the reader's own 'file:line' of row i (jsonl, csv)

    def where(self, index: int) -> str:
        if self.locate is not None:
            return self.locate(index)
        line = self.lines[index] if index < len(self.lines) else None
        return f"{self.path}:{line}" if line is not None else f"{self.path} (row {index + 1})"


def file_format(path: str, declared: Optional[str], key: str = "data.train_file") -> str:
    """data.format for a task's file: jsonl | csv | parquet | conll, or auto (from the extension)."""
    if declared and declared != "auto":
        if declared not in ("jsonl", "csv", "parquet", "conll"):
            raise UserError(f"data.format={declared}: a classification/NER/preference task reads auto, jsonl, csv, "
                            "parquet or conll files.")
        return declared
    ext = Path(path).suffix.lower()
    if ext not in EXTENSIONS:
        raise UserError(f"{key}={path}: cannot tell the format from '{ext or 'no extension'}'; set data.format="
                        "jsonl|csv|parquet|conll.")
    return EXTENSIONS[ext]


def read_rows(path: str, fmt: str, key: str) -> Rows:
    """Rows of `path` (`key` names the config key that points at it, for the messages)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{key}={path}: no such file. Fix the path (or set data.source=synthetic for the demo set).")
    if fmt == "conll":
        return read_conll(p)
    return read_table(p, fmt, key)


def read_table(path: Path, fmt: str, key: str) -> Rows:
    """jsonl/csv/parquet through the data layer's reader (`datasets`; a bad line named as file:line)."""
    try:
        from hpc_ft.data.files import read_data_file
    except ImportError:
        raise UserError(f"{key}: reading {fmt} needs the `datasets` package; install the hf extra: "
                        "pip install 'hpc-ft[hf]'.") from None
    data = read_data_file(path)
    return Rows(path, fmt, data.rows, [None] * len(data), locate=data.where)


def read_conll(path: Path) -> Rows:
    """CoNLL columns: token first, IOB2 tag last, columns between ignored; tab or space separated; a blank
    line ends a sentence; -DOCSTART- lines are skipped. A line with one column has no tag: refused."""
    rows: List[dict] = []
    lines: List[Optional[int]] = []
    tokens: List[str] = []
    tags: List[str] = []
    start = None
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, 1):
            line = raw.rstrip("\n").rstrip("\r")
            if not line.strip():
                if tokens:
                    rows.append({"tokens": tokens, "tags": tags})
                    lines.append(start)
                tokens, tags, start = [], [], None
                continue
            cols = line.split("\t") if "\t" in line else line.split()
            cols = [c.strip() for c in cols if c.strip()]
            if cols[0] == DOCSTART:
                continue
            if len(cols) < 2:
                raise UserError(
                    f"{path}:{number}: the tag column is missing ('{line.strip()[:60]}' has one column); each line "
                    "needs the token first and its IOB2 tag last, e.g. '東京\tB-LOC'.")
            tokens.append(cols[0])
            tags.append(cols[-1])
            start = start or number
    if tokens:
        rows.append({"tokens": tokens, "tags": tags})
        lines.append(start)
    return Rows(path, "conll", rows, lines)


def map_columns(rows: Rows, columns: Mapping[str, str], wanted: Sequence[str], optional: Sequence[str],
                extra_ok: Sequence[str] = ()) -> None:
    """Rename the columns named in `data.columns` (task field -> column in the file) in place; refuse a
    missing required field, naming the columns the file has."""
    unknown = [k for k in columns if k not in (*wanted, *optional, *extra_ok)]
    if unknown:
        raise UserError(f"data.columns.{unknown[0]}: not a field of this task (fields: "
                        f"{', '.join((*wanted, *optional, *extra_ok))}). Map those, e.g. data.columns.text=review.")
    if not rows.rows:
        return
    have = set(rows.rows[0])
    for task_field, column in columns.items():
        if column not in have:
            raise UserError(f"data.columns.{task_field}={column}: {rows.path} has no column '{column}' "
                            f"(it has {', '.join(sorted(have))}).")
    renamed = []
    for row in rows.rows:
        out = dict(row)
        for task_field, column in columns.items():
            out[task_field] = row[column]
        renamed.append(out)
    rows.rows = renamed
    missing = [f for f in wanted if f not in renamed[0]]
    if missing:
        raise UserError(
            f"{rows.path}: no column '{missing[0]}' (it has {', '.join(sorted(have))}); name the column holding "
            f"it with data.columns.{missing[0]}=<column>.")


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def as_dict(columns) -> Dict[str, str]:
    return {str(k): str(v) for k, v in (columns or {}).items()}
