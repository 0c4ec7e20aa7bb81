"""The one quoting rule for everything that reaches a shell: values are literal, never code."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Iterable, Union

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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
        pre = shlex.quote(self.prefix) if self.prefix else ""
        suf = shlex.quote(self.suffix) if self.suffix else ""
        return f'{pre}"${{{self.name}}}"{suf}'


Token = Union[str, int, float, bool, ShellVar]


def shell_quote(value: Token) -> str:
    """Quote one value for bash. Strings with any special character are single-quoted."""
    if isinstance(value, ShellVar):
        return value.render()
    if isinstance(value, bool):
        value = str(value)
    text = str(value)
    if "\x00" in text:
        raise ValueError("a NUL byte cannot be passed through a shell")
    return shlex.quote(text)


def shell_join(argv: Iterable[Token]) -> str:
    return " ".join(shell_quote(a) for a in argv)


def sbatch_value(value: Token) -> str:
    """Quote a value on an `#SBATCH` line (sbatch reads these lines itself, not through bash)."""
    text = str(value)
    if "\n" in text or "\r" in text:
        raise ValueError(f"an #SBATCH value cannot contain a newline: {text!r}")
    if re.search(r"[\s\"'\\#]", text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text
