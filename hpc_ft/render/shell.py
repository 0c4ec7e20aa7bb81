"""The one quoting rule for everything that reaches a shell: values are literal, never code."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Iterable, Union

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ANSI_C_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


@dataclass(frozen=True)
class ShellVar:
    """A token that the job's shell expands at run time, e.g. ShellVar("SLURM_JOB_ID").

    The only way a `$` reaches the script unquoted: the name is checked, and the expansion is
    double-quoted so that its value is never split or globbed. `prefix`/`suffix` are literal text
    around it (quoted), e.g. ShellVar("HEAD", prefix="--rdzv_endpoint=", suffix=":29500").
    """

    name: str
    prefix: str = ""
    suffix: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"not a shell variable name: {self.name!r}")

    def render(self) -> str:
        pre = _quote_text(self.prefix) if self.prefix else ""
        suf = _quote_text(self.suffix) if self.suffix else ""
        return f'{pre}"${{{self.name}}}"{suf}'


Token = Union[str, int, float, bool, ShellVar]


def shell_quote(value: Token) -> str:
    """Quote one value for bash. Strings with any special character are single-quoted."""
    if isinstance(value, ShellVar):
        return value.render()
    if isinstance(value, bool):
        value = str(value)
    return _quote_text(str(value))


def _quote_text(text: str) -> str:
    """Single quotes; bash's $'...' (with \\n, \\r, \\xHH escapes) when the text holds control characters.

    $'...' keeps every statement of the script on one line: a value with "\\r\\n" inside plain quotes would
    make sbatch refuse the whole script ("Batch script contains DOS line breaks").
    """
    if "\x00" in text:
        raise ValueError("a NUL byte cannot be passed through a shell")
    if not _CONTROL.search(text):
        return shlex.quote(text)
    out = []
    for ch in text:
        if ch in _ANSI_C_ESCAPES:
            out.append(_ANSI_C_ESCAPES[ch])
        elif _CONTROL.match(ch):
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "$'" + "".join(out) + "'"


def shell_join(argv: Iterable[Token]) -> str:
    return " ".join(shell_quote(a) for a in argv)


def shell_comment(value: object) -> str:
    """Text for a `#` comment line of the script: control characters (a newline would end the comment and
    start a command) are shown as \\xHH escapes."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def slurm_filename(path: str) -> str:
    """A path for --output/--error, whose `%` patterns (%j, %x, ...) and backslashes Slurm interprets.

    Without a backslash, `%` is doubled (`%%` is a literal `%`). With one, Slurm disables all patterns
    and drops single backslashes (`\\\\` stands for one), so backslashes are doubled instead.
    """
    text = str(path)
    if "\\" in text:
        return text.replace("\\", "\\\\")
    return text.replace("%", "%%")


def sbatch_value(value: Token) -> str:
    """Quote a value on an `#SBATCH` line (sbatch reads these lines itself, not through bash)."""
    text = str(value)
    if "\n" in text or "\r" in text:
        raise ValueError(f"an #SBATCH value cannot contain a newline: {text!r}")
    if re.search(r"[\s\"'\\#]", text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text
