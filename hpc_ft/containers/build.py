"""Render and run image builds: `singularity build SIF DEF`, or `singularity pull SIF docker://...` for a plain NGC image.

`plan_build` turns an image name from the lock into a `BuildPlan` (argv lists plus the shell
lines that set registry credentials *by reference*); `render_commands` prints it for --dry-run,
`render_job_script` makes a Slurm job of it, and `run_build` executes it here. Rendering never
reads a secret: NGC credentials appear as `SINGULARITY_DOCKER_USERNAME='$oauthtoken'` and
`SINGULARITY_DOCKER_PASSWORD="${NGC_API_KEY}"`, resolved by the shell when the job runs.

`--docker-login` makes singularity *ask* for the credentials on the terminal, as in the
reference tutorial; a batch job has no terminal, so rendered scripts use the environment
variables instead and `login="prompt"` is for interactive use only.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from hpc_ft.containers.lock import ImageEntry, ImageLock, load_lock
from hpc_ft.containers.recipes import load_recipe
from hpc_ft.containers.runtime import get_runtime, require_binary
from hpc_ft.errors import UserError

METHODS = ("build", "pull")
LOGINS = ("env", "prompt")
NGC_USERNAME = "$oauthtoken"
NGC_KEY_ENV = "NGC_API_KEY"
TEMPLATE_NAME = "container_build.sbatch.j2"  # in templates/, found like sbatch.j2 (site dir first)
_WHEEL = re.compile(r"^(?:.*/)?hpc_ft-(?P<version>[^-]+)-py3-none-any\.whl$")
_SBATCH_VALUE = re.compile(r"^[^\s'\"`$\\;&|<>]+$")


@dataclass
class BuildPlan:
    """Everything needed to produce one image; rendering and running both read this."""

    name: str
    runtime: str
    method: str  # build | pull
    source: str  # docker://...
    sif: Path
    recipe: Path | None
    workdir: Path
    steps: list[list[str]] = field(default_factory=list)
    env_lines: list[str] = field(default_factory=list)  # shell; variable references only
    env_values: dict[str, str] = field(default_factory=dict)  # non-secret values set for run_build
    credential_env: dict[str, str] = field(default_factory=dict)  # PREFIX_DOCKER_* -> source variable name
    login: str = "env"
    force: bool = False
    needs_wheel: bool = False


def _pick_method(entry: ImageEntry, lock: ImageLock, method: str | None) -> str:
    if method is None:
        return "build" if entry.recipe else "pull"
    if method not in METHODS:
        raise UserError(f"build method {method!r} is not one of {', '.join(METHODS)}")
    if method == "build" and not entry.recipe:
        raise UserError(f"image '{entry.name}' has no recipe in {lock.path}; use method 'pull' or add a recipe")
    return method


def _wheel_files(recipe_files: Sequence[tuple[str, str]]) -> list[str]:
    return [src for src, _ in recipe_files if _WHEEL.match(src)]


def plan_build(
    name: str,
    lock: ImageLock | str | os.PathLike | None = None,
    images_dir: str | os.PathLike = ".",
    *,
    runtime: str = "singularity",
    method: str | None = None,
    login: str = "env",
    fakeroot: bool = True,
    force: bool = False,
    tmpdir: str | os.PathLike | None = None,
    python: str | None = None,
) -> BuildPlan:
    """Plan building (from its recipe) or pulling image `name` into `images_dir`.

    login='env' takes registry credentials from the environment at run time (NGC: username
    '$oauthtoken', password from $NGC_API_KEY); login='prompt' adds --docker-login so the runtime
    asks on the terminal. `tmpdir` sets the runtime's TMPDIR/CACHEDIR (a NeMo pull needs tens of GB).
    """
    lk = lock if isinstance(lock, ImageLock) else load_lock(lock)
    entry = lk.get(name)
    rt = get_runtime(runtime)
    if rt.binary is None:
        raise UserError("container.runtime=none cannot build images; use singularity or apptainer")
    if login not in LOGINS:
        raise UserError(f"login {login!r} is not one of {', '.join(LOGINS)}")
    chosen = _pick_method(entry, lk, method)
    sif = Path(images_dir).expanduser().resolve() / entry.sif
    plan = BuildPlan(
        name=name, runtime=runtime, method=chosen, source=entry.source, sif=sif, recipe=None,
        workdir=sif.parent, login=login, force=force,
    )

    if tmpdir is not None:
        t = str(Path(tmpdir).expanduser().resolve())
        for var in ("TMPDIR", "CACHEDIR"):
            plan.env_values[f"{rt.var_prefix}{var}"] = t
            plan.env_lines.append(f"export {rt.var_prefix}{var}={shlex.quote(t)}")
        plan.env_lines.append(f"mkdir -p {shlex.quote(t)}")

    if entry.needs_ngc_login and login == "env":
        user_var, pass_var = f"{rt.var_prefix}DOCKER_USERNAME", f"{rt.var_prefix}DOCKER_PASSWORD"
        plan.env_lines += [
            f': "${{{NGC_KEY_ENV}:?{NGC_KEY_ENV} is not set: export your NGC API key (ngc.nvidia.com, Setup, API Key) before building}}"',
            f"export {user_var}={shlex.quote(NGC_USERNAME)}",
            f'export {pass_var}="${{{NGC_KEY_ENV}}}"',
        ]
        plan.env_values[user_var] = NGC_USERNAME
        plan.credential_env[pass_var] = NGC_KEY_ENV

    flags = ["--force"] if force else []
    if login == "prompt":
        flags.append("--docker-login")

    if chosen == "pull":
        plan.steps.append([rt.binary, "pull", *flags, str(sif), entry.source])
        return plan

    recipe = lk.recipe_path(entry)
    if recipe is None or not recipe.is_file():
        raise UserError(f"image '{name}': recipe {recipe} does not exist (see 'recipe' in {lk.path})")
    parsed = load_recipe(recipe)
    want = "docker://" + parsed.base
    if want != entry.source:
        raise UserError(f"{lk.path}: images.{name}.source is {entry.source!r} but {recipe.name} builds from {want!r}; make them agree")
    plan.recipe = recipe.resolve()
    relative_files = [src for src, _ in parsed.files if not src.startswith("/")]
    # Relative %files sources resolve against the directory the build runs in: the repository root.
    plan.workdir = recipe.resolve().parent.parent if relative_files else recipe.resolve().parent
    wheels = _wheel_files(parsed.files)
    if wheels:
        from hpc_ft import __version__

        versions = {_WHEEL.match(w).group("version") for w in wheels}
        if versions != {__version__}:
            raise UserError(
                f"{recipe.name} installs hpc-ft {', '.join(sorted(versions))} but this checkout is {__version__}; "
                f"update the wheel name and org.hpc-ft.version in {recipe.name}"
            )
        if not (plan.workdir / "pyproject.toml").is_file():
            raise UserError(
                f"image '{name}' installs hpc-ft from a wheel built from a source checkout, and {plan.workdir} is not one; "
                "run the build from a git clone of hpc-ft"
            )
        plan.needs_wheel = True
        wheel_dir = str(Path(wheels[0]).parent) or "."
        plan.steps.append([python or sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", wheel_dir, "."])
    build_flags = (["--fakeroot"] if fakeroot else []) + flags
    plan.steps.append([rt.binary, "build", *build_flags, str(sif), os.path.relpath(plan.recipe, plan.workdir)])
    return plan


def _argv_text(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def render_commands(plan: BuildPlan) -> str:
    """The plan as a shell snippet (what --dry-run prints). Holds variable names, never values."""
    lines = [f"# hpc-ft: {plan.method} container image '{plan.name}' with {plan.runtime} (dry run: nothing was executed)"]
    if plan.login == "prompt":
        lines.append("# --docker-login: the runtime asks for the registry username and password (NGC: $oauthtoken and your API key)")
    lines += plan.env_lines
    lines.append(f"cd {shlex.quote(str(plan.workdir))}")
    lines += [_argv_text(step) for step in plan.steps]
    return "\n".join(lines) + "\n"


def _check_sbatch_value(key: str, value) -> str:
    text = str(value)
    if not _SBATCH_VALUE.match(text):
        raise UserError(f"{key}={text!r}: #SBATCH values cannot contain spaces, quotes or shell characters")
    return text


def render_job_script(
    plan: BuildPlan,
    *,
    job_name: str | None = None,
    time: str = "04:00:00",
    cpus: int = 8,
    mem: str = "64G",
    partition: str | None = None,
    account: str | None = None,
    log_path: str | os.PathLike | None = None,
    extra_sbatch: Sequence[str] = (),
    template_dirs: Sequence[str | os.PathLike] = (),
    modules: Sequence[str] = (),
    setup: Sequence[str] = (),
) -> str:
    """A Slurm batch script that runs the plan on a compute node.

    The template is templates/container_build.sbatch.j2, looked up like every job template
    (`hpc_ft.render.render.template_dirs()`: $HPC_FT_TEMPLATE_DIR first, then the shipped ones);
    explicit `template_dirs` come before both. `modules` become `module load` lines and `setup`
    lines are copied verbatim (a site's cluster.modules / cluster.setup, e.g. to put singularity on PATH).
    """
    import jinja2

    from hpc_ft import __version__
    from hpc_ft.render.render import template_dirs as job_template_dirs

    if plan.login == "prompt":
        raise UserError("a batch job cannot answer --docker-login prompts; render with login='env' (credentials from $NGC_API_KEY)")
    search = [str(d) for d in template_dirs] + [str(d) for d in job_template_dirs()]
    loader = jinja2.FileSystemLoader(search)
    env = jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.filters["q"] = lambda v: shlex.quote(str(v))
    env.filters["argv"] = _argv_text
    for line in extra_sbatch:
        if "\n" in line or not line.startswith("--"):
            raise UserError(f"extra sbatch option {line!r} must be one '--option=value'")
    log = log_path if log_path is not None else plan.sif.parent / f"build-{plan.name}-%j.out"
    text = env.get_template(TEMPLATE_NAME).render(
        plan=plan,
        job_name=_check_sbatch_value("job_name", job_name or f"hpc-ft-build-{plan.name}"),
        time=_check_sbatch_value("time", time),
        cpus=int(cpus),
        mem=_check_sbatch_value("mem", mem),
        partition=_check_sbatch_value("partition", partition) if partition else None,
        account=_check_sbatch_value("account", account) if account else None,
        log_path=_check_sbatch_value("log_path", log),
        extra_sbatch=list(extra_sbatch),
        modules=[str(m) for m in modules],
        setup=[str(line) for line in setup],
        hpc_ft_version=__version__,
    )
    return text


def run_build(plan: BuildPlan, *, environ: Mapping[str, str] | None = None) -> int:
    """Execute the plan here; returns the exit code of the first failing step (0 when all pass).

    Refuses with a UserError when the runtime binary is missing, when NGC credentials are needed
    but $NGC_API_KEY is unset, or when the image exists and the plan has no force.
    """
    require_binary(plan.runtime, f"{plan.method} images")
    base_env = dict(os.environ if environ is None else environ)
    for target, source_var in plan.credential_env.items():
        if not base_env.get(source_var):
            raise UserError(
                f"{source_var} is not set: export your NGC API key (ngc.nvidia.com, Setup, API Key) to pull from nvcr.io, "
                "or build with --docker-login to type it at the prompt"
            )
        base_env[target] = base_env[source_var]
    base_env.update(plan.env_values)
    for key, value in plan.env_values.items():
        if key.endswith(("TMPDIR", "CACHEDIR")):
            Path(value).mkdir(parents=True, exist_ok=True)
    if plan.sif.exists() and not plan.force:
        raise UserError(f"{plan.sif} already exists; remove it or rebuild with --force")
    plan.sif.parent.mkdir(parents=True, exist_ok=True)
    for step in plan.steps:
        proc = subprocess.run(step, cwd=str(plan.workdir), env=base_env, check=False)
        if proc.returncode != 0:
            return proc.returncode
    return 0
