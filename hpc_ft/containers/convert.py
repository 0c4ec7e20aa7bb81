"""Dockerfile <-> Singularity definition file, through spython (`hpc-ft container convert Dockerfile [-o FILE.def]`).

spython's parsers and writers are used as they are, with repairs for what they get wrong: labels
are rewritten in each target's syntax (`KEY VALUE` for Singularity, `KEY="VALUE"` for Docker),
lines containing "USER" keep their Docker instruction, and the `spython-base` stage name of a
one-stage file is dropped (spython cannot read it back).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hpc_ft.containers.recipes import parse_spython, write_singularity
from hpc_ft.errors import UserError


def convert_dockerfile(dockerfile: str | os.PathLike, out_def: str | os.PathLike | None = None, *, force: bool = False) -> str:
    """Convert `dockerfile` to Singularity definition text; also write it to `out_def` when given.

    Refuses to overwrite an existing `out_def` unless `force`. Review the result: Docker
    semantics spython cannot carry over (ARG without default, multi-stage COPY --from,
    HEALTHCHECK) need a person.
    """
    src = Path(dockerfile)
    if not src.is_file():
        raise UserError(f"Dockerfile {src} does not exist")
    if out_def is not None:
        out = Path(out_def)
        if out.exists() and not force:
            raise UserError(f"{out} already exists; choose another -o path or pass --force to overwrite")
    stages = parse_spython(src, "docker")
    if not any(stage.fromHeader for stage in stages.values()):
        raise UserError(f"{src}: no FROM line, nothing to convert")
    header = f"# Converted from {src.name} by hpc-ft (spython). Review before building.\n"
    text = header + write_singularity(stages).rstrip() + "\n"
    if out_def is not None:
        out = Path(out_def)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    return text


def _guard_user(lines: list[str], instruction: str) -> list[str]:
    """spython's DockerWriter writes any line containing "USER" without its instruction
    (meant for `USER name`), so `PYTHONNOUSERSITE=1` would lose its ENV; spell those out."""
    return [f"{instruction} {ln}" if "USER" in ln and not ln.startswith("USER ") else ln for ln in lines]


def convert_definition(definition: str | os.PathLike, out_dockerfile: str | os.PathLike | None = None, *, force: bool = False) -> str:
    """Convert a Singularity `.def` to Dockerfile text (spython's DockerWriter); also write it when asked.

    Labels become `LABEL key="value"` (spython's DockerWriter cannot write the pairs its own
    parser produces). %test does not carry over: spython would emulate it with echo lines and a
    HEALTHCHECK that Docker rejects, so those lines are dropped and the header says so.
    """
    from spython.main.parse.writers import DockerWriter

    from hpc_ft.containers.recipes import SPYTHON_SCRIPT_LINE, quiet_spython

    src = Path(definition)
    if not src.is_file():
        raise UserError(f"definition file {src} does not exist")
    if out_dockerfile is not None and Path(out_dockerfile).exists() and not force:
        raise UserError(f"{out_dockerfile} already exists; choose another -o path or pass --force to overwrite")
    stages = parse_spython(src, "singularity")
    had_test = False
    for stage in stages.values():
        stage.labels = _guard_user([f'{k}="{v}"' for k, v in stage.labels], "LABEL")
        stage.environ = _guard_user(stage.environ, "ENV")
        stage.install = _guard_user([ln for ln in stage.install if not SPYTHON_SCRIPT_LINE.match(ln.strip())], "RUN")
        had_test = had_test or stage.test is not None
        stage.test = None
    with quiet_spython():
        body = DockerWriter(stages).convert()
    if len(stages) == 1:  # one stage needs no name, and spython cannot read back 'AS spython-base'
        body = re.sub(r"(?m)^(FROM \S+) AS spython-base$", r"\1", body)
    header = f"# Converted from {src.name} by hpc-ft (spython). Review before building.\n"
    if had_test:
        header += f"# {src.name} has a %test section; Docker has no equivalent, run those checks yourself.\n"
    text = header + body.rstrip() + "\n"
    if out_dockerfile is not None:
        out = Path(out_dockerfile)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    return text
