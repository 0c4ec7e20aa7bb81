"""Test helper: parse a job script (hand-written or rendered) into #SBATCH options, exports and argv."""

from __future__ import annotations

import re
import shlex
from typing import Dict, List, Tuple

SHORT = {"-N": "--nodes", "-n": "--ntasks", "-c": "--cpus-per-task", "-p": "--partition", "-t": "--time",
         "-A": "--account", "-J": "--job-name", "-o": "--output"}


def sbatch_options(text: str) -> Dict[str, str]:
    opts: Dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("#SBATCH"):
            continue
        toks = shlex.split(line[len("#SBATCH"):])
        key = toks[0]
        if "=" in key:
            key, val = key.split("=", 1)
        else:
            val = toks[1] if len(toks) > 1 else ""
        opts[SHORT.get(key, key)] = val
    return opts


def exports(text: str) -> Dict[str, str]:
    env = {}
    for line in text.splitlines():
        m = re.match(r"^export\s+([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line.strip())
        if m:
            vals = shlex.split(m.group(2))
            env[m.group(1)] = vals[0] if vals else ""
    return env


def command_lines(text: str) -> List[List[str]]:
    """Commands (continuation lines joined) that are not comments, #SBATCH or exports."""
    joined, buf = [], ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        joined.append(buf + line)
        buf = ""
    out = []
    for line in joined:
        s = line.strip()
        if not s or s.startswith("#") or s.startswith("export "):
            continue
        out.append(shlex.split(s))
    return out


def substitute(argv: List[str], env: Dict[str, str]) -> List[str]:
    return [re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env[m.group(1) or m.group(2)], a) for a in argv]


def split_overrides(argv: List[str]) -> Tuple[List[str], Dict[str, object]]:
    """argv -> (the launch prefix up to the script, {override key: parsed value})."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    idx = next(i for i, a in enumerate(argv) if a.endswith(".py"))
    parser = OverridesParser.create()
    values = {}
    for a in argv[idx + 1:]:
        (ov,) = parser.parse_overrides([a])
        key = ("++" if a.startswith("++") else "") + ov.key_or_group
        values[key] = ov.value()
    return argv[: idx + 1], values


def rendered_step(text: str, step: str) -> List[str]:
    """The argv of `hpcft_step <step> ...` in a rendered hpc-ft script."""
    for line in text.splitlines():
        if line.startswith(f"hpcft_step {step} "):
            argv = shlex.split(line.split(" || ")[0])
            return argv[2:]
    raise AssertionError(f"no step {step!r} in the script")
