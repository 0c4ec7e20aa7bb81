"""Read one data file's rows with the `datasets` library; every unreadable file is one UserError naming file:line and a fix.

Files: jsonl, json (lines or one array), csv, parquet, or a folder written by `Dataset.save_to_disk`.
The happy path is `datasets` alone; only when it fails is the file scanned to find the line at fault.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hpc_ft.errors import UserError

TEXT_KINDS = {".jsonl": "json", ".json": "json", ".csv": "csv"}
BINARY_KINDS = {".parquet": "parquet", ".pq": "parquet"}
SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass
class DataFile:
    """One file's table (read with `datasets`): its columns as Python lists, rows on demand, and how to name row i."""

    path: Path
    kind: str                                  # json | csv | parquet | saved
    table: object = field(repr=False)          # the datasets.Dataset
    _columns: dict = field(default_factory=dict, repr=False)
    _rows: list | None = field(default=None, repr=False)
    _lines: list[int] | None = field(default=None, repr=False)

    @property
    def columns(self) -> list[str]:
        return list(self.table.column_names)

    def __len__(self) -> int:
        return self.table.num_rows

    def column(self, name: str) -> list:
        """A column's values (None where a row lacks it), converted once."""
        if name not in self._columns:
            self._columns[name] = self.table.data.column(name).to_pylist()
        return self._columns[name]

    def is_text(self, name: str) -> bool:
        """Every value of the column is a string (or null): no conversion needed."""
        import pyarrow as pa

        kind = self.table.data.column(name).type
        return pa.types.is_string(kind) or pa.types.is_large_string(kind)

    def first_null(self, name: str) -> int | None:
        """The index of the first row whose value is missing, None when every row has one."""
        column = self.table.data.column(name)
        if column.null_count == 0:
            return None
        return self.column(name).index(None)

    def any_text(self, name: str) -> bool:
        """Some row has a non-blank value in the column."""
        import pyarrow.compute as pc

        column = self.table.data.column(name)
        if not self.is_text(name):
            return any(v not in (None, "") for v in self.column(name))
        return bool(pc.any(pc.not_equal(pc.utf8_trim_whitespace(column), "")).as_py())

    @property
    def rows(self) -> list[dict]:
        if self._rows is None:
            self._rows = self.table.to_list()
        return self._rows

    def where(self, index: int) -> str:
        """'file:line' for a text file (row index 0 is the first data line), 'file row N' otherwise."""
        if self.kind == "csv":
            return f"{self.path}:{index + 2}"
        if self.kind == "json":
            lines = self._line_numbers()
            if lines is not None and index < len(lines):
                return f"{self.path}:{lines[index]}"
            return f"{self.path} item {index + 1}"
        return f"{self.path} row {index + 1}"

    def _line_numbers(self) -> list[int] | None:
        """Line number of each row of a JSON-lines file (blank lines are skipped), None for a JSON array."""
        if self._lines is None:
            text = self.path.read_text(encoding="utf-8")
            if text.lstrip().startswith("["):
                return None
            self._lines = [n for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
        return self._lines


def kind_of(path: Path) -> str:
    if path.is_dir():
        if any((path / marker).is_file() for marker in SAVED_MARKERS):
            return "saved"
        raise UserError(
            f"{path}: is a directory, not a data file; name the .jsonl/.json/.csv/.parquet file in it "
            "(or a folder written by datasets' save_to_disk)."
        )
    suffix = path.suffix.lower()
    if suffix in TEXT_KINDS:
        return TEXT_KINDS[suffix]
    if suffix in BINARY_KINDS:
        return BINARY_KINDS[suffix]
    raise UserError(
        f"{path}: unknown file type '{suffix or '(none)'}'; use .jsonl, .json, .csv, .parquet "
        "or a save_to_disk folder."
    )


def check_readable(path: Path) -> str:
    """The file's kind, after refusing one that is missing, unreadable, empty or (text) not UTF-8."""
    if not path.exists():
        raise UserError(f"{path}: no such file; fix the path in model.data.*.file_names (or prepare the data first).")
    kind = kind_of(path)
    if kind == "saved":
        return kind
    if not os.access(path, os.R_OK):
        raise UserError(f"{path}: cannot be read (permission denied); fix its permissions (chmod a+r).")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror}); fix the file or its permissions.") from None
    if not data.strip():
        raise UserError(f"{path}: the file is empty; a split needs at least one row.")
    if kind in ("json", "csv"):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise UserError(
                f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8, "
                f"e.g. iconv -f SHIFT_JIS -t UTF-8 {path.name} > utf8-{path.name}."
            ) from None
    return kind


def _quiet_datasets():
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # a reader failure is explained by _explain, once
    return datasets


def read_data_file(path: str | Path) -> DataFile:
    """All rows of one file, read with `datasets` (nothing cached outside a temporary folder)."""
    path = Path(path).expanduser()
    kind = check_readable(path)
    datasets = _quiet_datasets()
    try:
        if kind == "saved":
            table = datasets.load_from_disk(str(path), keep_in_memory=True)
            if isinstance(table, datasets.DatasetDict):
                raise UserError(
                    f"{path}: a DatasetDict with splits {', '.join(table)}; name one split's folder "
                    f"(e.g. {path / next(iter(table))})."
                )
        else:
            with tempfile.TemporaryDirectory(prefix="hpcft-datasets-") as cache:
                # on_mixed_types=None: no per-line pre-scan (twice as fast); a file whose rows mix types
                # then fails here and _explain() names the line
                options = {"on_mixed_types": None} if kind == "json" else {}
                table = datasets.load_dataset(kind, data_files=str(path), split="train", cache_dir=cache,
                                              keep_in_memory=True, **options)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is explained from the file itself
        raise _explain(path, kind, exc) from None
    if table.num_rows == 0:
        raise UserError(f"{path}: no rows; a split needs at least one row.")
    return DataFile(path=path, kind=kind, table=table)


def _explain(path: Path, kind: str, exc: Exception) -> UserError:
    """Why `datasets` could not read the file, located at a line where the file allows."""
    if kind == "json":
        found = _first_bad_json_line(path)
        if found:
            return UserError(found)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(f"{path}: cannot be read as {kind} ({first[:200]}); fix the file.")


def _first_bad_json_line(path: Path) -> str | None:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            return f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); fix that line."
        return f"{path}: a JSON array whose items are not all objects with the same fields; use one object per row."
    types: dict[str, tuple[str, int]] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            return f"{path}:{line_no}: not valid JSON ({exc.msg} at column {exc.colno}); fix or remove that line."
        if not isinstance(row, dict):
            return f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}; one object per line."
        for key, value in row.items():
            kind = _json_kind(value)
            seen = types.setdefault(key, (kind, line_no))
            if kind != "null" and seen[0] == "null":
                types[key] = (kind, line_no)
            elif kind not in ("null", seen[0]):
                return (f"{path}:{line_no}: field '{key}' is {kind} here but {seen[0]} on line {seen[1]}; "
                        f"give '{key}' the same type on every line.")
    return None


def _json_kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"



def file_checksum(path: str | Path) -> str:
    """sha256 of a file, or of a save_to_disk folder's files (names and contents, in name order)."""
    import hashlib

    path = Path(path)
    digest = hashlib.sha256()
    members = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for member in members:
        if path.is_dir():
            digest.update(str(member.relative_to(path)).encode() + b"\0")
        with open(member, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
