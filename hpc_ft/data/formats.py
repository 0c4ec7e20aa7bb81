"""Row formats: recognise a file's layout from its columns and turn each row into an Example (named text fields or chat turns).

One entry of FORMATS per format; adding one is adding an entry, nothing in a backend changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

from hpc_ft.errors import UserError, did_you_mean

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


class RowError(ValueError):
    """A row that cannot become an example; the caller adds the file:line."""


@dataclass(frozen=True)
class Example:
    """One training example: named text fields (input, output, instruction, ...) or chat turns (role, content)."""

    fields: Mapping[str, str] = field(default_factory=dict)
    messages: tuple[tuple[str, str], ...] = ()

    @property
    def is_chat(self) -> bool:
        return bool(self.messages)


@dataclass(frozen=True)
class FormatOptions:
    """What a format needs from the job's keys: the answer field (NeMo's label_key) and a column mapping."""

    label_key: str = "output"
    columns: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    detect: Callable[[set, FormatOptions], bool]
    required: Callable[[FormatOptions], Sequence[str]]   # columns every file of this format must have
    to_example: Callable[[dict, FormatOptions], Example]
    # flat formats: field name -> the column holding it (read column-wise, fast); None for nested rows
    field_columns: Optional[Callable[[Sequence[str], FormatOptions], dict]] = None
    optional_fields: tuple = ()                           # fields whose missing value is "" (alpaca's input)


def _text(value, name: str) -> str:
    if value is None:
        raise RowError(f"field '{name}' is missing or null")
    if isinstance(value, (dict, list)):
        raise RowError(f"field '{name}' is a {type(value).__name__}, not text")
    return str(value)


def _nemo(row: dict, opts: FormatOptions) -> Example:
    fields = {k: str(v) for k, v in row.items() if v is not None and not isinstance(v, (dict, list))}
    _text(row.get(opts.label_key), opts.label_key)
    return Example(fields=fields)


def _alpaca(row: dict, opts: FormatOptions) -> Example:
    fields = {"instruction": _text(row.get("instruction"), "instruction"),
              "input": "" if row.get("input") is None else _text(row["input"], "input"),
              "output": _text(row.get("output"), "output")}
    if row.get("system") is not None:
        fields["system"] = _text(row["system"], "system")
    return Example(fields=fields)


def _turns(turns, key: str, role_key: str, content_key: str, roles: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    if not isinstance(turns, list) or not turns:
        raise RowError(f"field '{key}' must be a non-empty list of turns")
    out = []
    for n, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
            raise RowError(f"{key}[{n}] must be an object with '{role_key}' and '{content_key}'")
        role = turn[role_key]
        if role not in roles:
            raise RowError(f"{key}[{n}] has unknown {role_key} '{role}' (known: {', '.join(roles)})"
                           f"{did_you_mean(str(role), roles)}")
        out.append((roles[role], _text(turn[content_key], f"{key}[{n}].{content_key}")))
    if not any(role == "assistant" for role, _ in out):
        raise RowError(f"'{key}' has no assistant turn, so nothing would carry the loss")
    return tuple(out)


def _chat(row: dict, opts: FormatOptions) -> Example:
    return Example(messages=_turns(row.get("messages"), "messages", "role", "content", {r: r for r in ROLES}))


def _sharegpt(row: dict, opts: FormatOptions) -> Example:
    turns = _turns(row.get("conversations"), "conversations", "from", "value", SHAREGPT_ROLES)
    if row.get("system") and turns[0][0] != "system":
        turns = (("system", _text(row["system"], "system")),) + turns
    return Example(messages=turns)


def _columns(row: dict, opts: FormatOptions) -> Example:
    return Example(fields={name: _text(row.get(column), column) for name, column in opts.columns.items()})


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("columns", "any columns, mapped to template fields with data.columns.<field>=<column>",
               lambda cols, o: bool(o.columns), lambda o: tuple(o.columns.values()), _columns,
               field_columns=lambda cols, o: dict(o.columns)),
        Format("chat", "messages: [{role, content}] with roles system/user/assistant",
               lambda cols, o: "messages" in cols, lambda o: ("messages",), _chat),
        Format("sharegpt", "conversations: [{from, value}] with from human/gpt/system",
               lambda cols, o: "conversations" in cols, lambda o: ("conversations",), _sharegpt),
        Format("alpaca", "instruction, input (may be empty), output",
               lambda cols, o: {"instruction", "output"} <= cols, lambda o: ("instruction", "output"), _alpaca,
               field_columns=lambda cols, o: {c: c for c in ("instruction", "input", "output", "system") if c in cols},
               optional_fields=("input", "system")),
        Format("nemo", "NeMo SFT jsonl: input and the label_key field (output), plus any fields the template names",
               lambda cols, o: o.label_key in cols, lambda o: (o.label_key,), _nemo,
               field_columns=lambda cols, o: {c: c for c in cols}),
    )
}
FORMAT_NAMES = ("auto",) + tuple(FORMATS)


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise UserError(f"data.format={name}: not one of {', '.join(FORMAT_NAMES)}.{did_you_mean(name, FORMAT_NAMES)}")
    return FORMATS[name]


def detect_format(name: str, columns: Sequence[str], opts: FormatOptions, where: str) -> Format:
    """The format named by data.format, or the first whose columns the file has (data.format=auto)."""
    cols = set(columns)
    if name != "auto":
        fmt = get_format(name)
    else:
        fmt = next((f for f in FORMATS.values() if f.detect(cols, opts)), None)
        if fmt is None:
            raise UserError(
                f"{where}: cannot tell the data format from its columns ({', '.join(columns) or 'none'}); "
                "set data.format (nemo, alpaca, chat, sharegpt) or map columns: "
                "+data.columns.input=<column> +data.columns.output=<column>."
            )
    missing = [c for c in fmt.required(opts) if c not in cols]
    if missing:
        if fmt.name == "columns":
            key = next(k for k, v in opts.columns.items() if v == missing[0])
            raise UserError(f"data.columns.{key}={missing[0]}: {where} has no column '{missing[0]}' "
                            f"(it has {', '.join(columns)}){did_you_mean(missing[0], columns)}; fix the mapping.")
        raise UserError(f"{where}: data.format={fmt.name} needs column '{missing[0]}' "
                        f"(the file has {', '.join(columns)}); fix the file or data.format.")
    return fmt
