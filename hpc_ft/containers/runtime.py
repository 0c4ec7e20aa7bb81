"""The container runtime seam: how a command runs inside `singularity`, `apptainer`, or no container.

Everything that knows a runtime's command name, flags or environment prefix lives here, so the
sbatch template and the node-side runner only ask this module for an argv prefix.

Environment: Singularity/Apptainer pass the host environment through, but an image's
%environment (e.g. HF_HUB_OFFLINE=1) wins over a plain host variable. A variable exported as
SINGULARITYENV_NAME / APPTAINERENV_NAME wins over %environment and is the only way in under
--cleanenv. Secrets travel that way by *name*: a script exports `SINGULARITYENV_HF_TOKEN="$HF_TOKEN"`
and never holds the value.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from hpc_ft.errors import UserError, did_you_mean

RUNTIMES = ("singularity", "apptainer", "none")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Runtime:
    """What differs between the runtimes."""

    name: str
    binary: str | None  # command to run; None for "none"
    env_prefix: str | None  # SINGULARITYENV_ / APPTAINERENV_
    var_prefix: str | None  # SINGULARITY_ / APPTAINER_ (build and registry settings)


_RUNTIMES = {
    "singularity": Runtime("singularity", "singularity", "SINGULARITYENV_", "SINGULARITY_"),
    "apptainer": Runtime("apptainer", "apptainer", "APPTAINERENV_", "APPTAINER_"),
    "none": Runtime("none", None, None, None),
}


def get_runtime(name: str, key: str = "container.runtime") -> Runtime:
    """The `Runtime` for 'singularity', 'apptainer' or 'none' (UserError naming `key` otherwise)."""
    if name in _RUNTIMES:
        return _RUNTIMES[name]
    raise UserError(f"{key}={name!r} is not a container runtime; use one of {', '.join(RUNTIMES)}.{did_you_mean(str(name), RUNTIMES)}")


def env_prefix(runtime: str) -> str | None:
    """`SINGULARITYENV_`, `APPTAINERENV_`, or None for no container."""
    return get_runtime(runtime).env_prefix


def runtime_binary(runtime: str) -> str | None:
    """Absolute path of the runtime's command on this machine, or None when it is not installed."""
    rt = get_runtime(runtime)
    return shutil.which(rt.binary) if rt.binary else None


def detect_runtime() -> str:
    """'apptainer' or 'singularity' when one is on PATH (apptainer first), else 'none'."""
    for name in ("apptainer", "singularity"):
        if shutil.which(name):
            return name
    return "none"


def require_binary(runtime: str, purpose: str = "run containers") -> str:
    """The runtime's path, or a UserError saying it is missing and what to do."""
    rt = get_runtime(runtime)
    if rt.binary is None:
        raise UserError(f"container.runtime=none cannot {purpose}; set container.runtime=singularity or apptainer")
    path = shutil.which(rt.binary)
    if path is None:
        other = "apptainer" if runtime == "singularity" else "singularity"
        hint = f" ('{other}' is installed: set container.runtime={other})" if shutil.which(other) else ""
        raise UserError(
            f"'{rt.binary}' is not installed on this machine (needed to {purpose}).{hint} "
            f"Run this on a node that has it (often after `module load {rt.binary}`), or use --dry-run to print the commands."
        )
    return path


def _check_env_names(env_names: Iterable[str]) -> list[str]:
    names = list(env_names)
    bad = [n for n in names if not _ENV_NAME.match(n)]
    if bad:
        raise UserError(f"environment variable names {bad} are not valid shell names (letters, digits, '_'; pass names, not NAME=value)")
    return names


def format_binds(binds: Iterable[str | Sequence[str]] | Mapping[str, str] | None, key: str = "cluster.binds") -> str:
    """`['/data', '/scratch:/work:ro']`, `[('/scratch', '/work')]` or `{'/data': '/data'}` -> `/data,/scratch:/work:ro`."""
    if not binds:
        return ""
    if isinstance(binds, Mapping):
        items = [f"{src}:{dst}" if src != dst else src for src, dst in binds.items()]
    else:
        items = [":".join(str(x) for x in b) if isinstance(b, (tuple, list)) else b for b in binds]
    out = []
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        if "," in item:
            raise UserError(f"{key}: bind '{item}' contains a comma, which separates binds; rename the path or bind its parent")
        parts = item.split(":")
        if len(parts) > 3 or not parts[0].startswith("/") or (len(parts) >= 2 and not parts[1].startswith("/")):
            raise UserError(f"{key}: bind '{item}' must be /host/path[:/container/path[:ro|rw]]")
        if len(parts) == 3 and parts[2] not in ("ro", "rw"):
            raise UserError(f"{key}: bind '{item}' has option '{parts[2]}'; use ro or rw")
        out.append(item)
    return ",".join(out)


def exec_argv(
    runtime: str,
    image: str | os.PathLike | None,
    binds: Iterable[str] | Mapping[str, str] | None = None,
    env_names: Iterable[str] = (),
    nv: bool = True,
    *,
    cleanenv: bool = False,
    command: Sequence[str] = (),
) -> list[str]:
    """The argv that runs `command` in the container, e.g. `singularity exec --nv --bind a:b,c IMAGE cmd...`.

    `env_names` are the host variables the command needs inside; they are checked here and passed
    by name with `env_exports` (shell) or `exec_environ` (Python), never as values in argv.
    With `cleanenv` the host environment is left out except for those names.
    For runtime 'none' the command runs as is.
    """
    rt = get_runtime(runtime)
    _check_env_names(env_names)
    if rt.binary is None:
        return list(command)
    if image is None or str(image) == "":
        raise UserError(f"container.image is empty but container.runtime={runtime}; set container.image=/path/to/image.sif")
    argv = [rt.binary, "exec"]
    if nv:
        argv.append("--nv")
    if cleanenv:
        argv.append("--cleanenv")
    bind_arg = format_binds(binds)
    if bind_arg:
        argv += ["--bind", bind_arg]
    argv.append(str(image))
    argv += list(command)
    return argv


def env_exports(runtime: str, env_names: Iterable[str]) -> list[str]:
    """Shell lines that pass host variables into the container by name (the values stay out of the script).

    singularity: `export SINGULARITYENV_HF_TOKEN="${HF_TOKEN}"`; none: nothing (the host env is the env).
    A line is only emitted for a variable that is set when the script runs.
    """
    names = _check_env_names(env_names)
    prefix = env_prefix(runtime)
    if prefix is None:
        return []
    return [f'if [ -n "${{{n}+x}}" ]; then export {prefix}{n}="${{{n}}}"; fi' for n in names]


def exec_environ(runtime: str, env_names: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of `environ` (default os.environ) with PREFIX+NAME set for each name present, for subprocess."""
    names = _check_env_names(env_names)
    env = dict(os.environ if environ is None else environ)
    prefix = env_prefix(runtime)
    if prefix is not None:
        for n in names:
            if n in env:
                env[prefix + n] = env[n]
    return env


def check_image(path: str | os.PathLike | None, key: str = "container.image") -> Path:
    """The image path if it exists and is readable (a .sif file or a sandbox folder), else a UserError naming `key`."""
    if path is None or str(path).strip() == "":
        raise UserError(f"{key} is not set; set {key}=/path/to/image.sif (build one with `hpc-ft container build NAME`)")
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(
            f"{key}={str(path)!r} does not exist. Build or pull it with `hpc-ft container build NAME` "
            f"(names in containers/images.lock), or point {key} at an existing .sif"
        )
    if p.is_dir():
        if not os.access(p, os.R_OK | os.X_OK):
            raise UserError(f"{key}={str(path)!r} is a folder this user cannot read; fix its permissions")
        return p
    if not p.is_file():
        raise UserError(f"{key}={str(path)!r} is not a file or a sandbox folder")
    if not os.access(p, os.R_OK):
        raise UserError(f"{key}={str(path)!r} is not readable by this user; fix its permissions (chmod a+r) or copy it")
    return p
