"""Render a job script from templates/sbatch.j2: Slurm options, environment, and the job's steps."""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from omegaconf import DictConfig

from hpc_ft.errors import UserError
from hpc_ft.executors import get_executor
from hpc_ft.render.shell import Token, sbatch_value, shell_comment, shell_join, shell_quote, slurm_filename


@dataclass
class Step:
    """One command of a job, run under the job's supervisor. argv tokens are quoted when rendered."""

    name: str
    argv: List[Token]
    skip_if_exists: Optional[str] = None


@dataclass
class JobScript:
    text: str
    sbatch: List[str]
    steps: List[Step]


def template_dirs() -> List[Path]:
    """Site templates ($HPC_FT_TEMPLATE_DIR) first, then the shipped ones."""
    here = Path(__file__).resolve().parent.parent
    shipped = here / "templates" if (here / "templates").is_dir() else here.parent / "templates"
    dirs = []
    site = os.environ.get("HPC_FT_TEMPLATE_DIR")
    if site:
        dirs.append(Path(site).expanduser())
    dirs.append(shipped)
    return dirs


_ENV = None


def template_env():
    """Jinja environment: StrictUndefined, no autoescape (shell is not HTML), quoting filters."""
    global _ENV
    if _ENV is None:
        import jinja2

        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader([str(d) for d in template_dirs()]),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
        )
        env.filters["q"] = shell_quote
        env.filters["shjoin"] = shell_join
        env.filters["sbv"] = sbatch_value
        env.filters["comment"] = shell_comment
        _ENV = env
    return _ENV


def _template_error(template: str, exc: Exception) -> UserError:
    """A broken (site) template: name the file and line, not a Jinja traceback."""
    where = getattr(exc, "filename", None)
    line = getattr(exc, "lineno", None)
    if not where:  # render-time errors (e.g. an undefined name): the template frame of the traceback
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(".j2")]
        if frames:
            where, line = frames[-1].filename, frames[-1].lineno
    at = f"{where or template}" + (f":{line}" if line else "")
    return UserError(
        f"template {at}: {getattr(exc, 'message', None) or exc}. Fix it, or remove the site copy from "
        "$HPC_FT_TEMPLATE_DIR to use the shipped one."
    )


def _gpu_option(spec: DictConfig, gpus_per_node: int) -> Optional[str]:
    req = spec.cluster.gpu.request
    if gpus_per_node <= 0 or req == "none":
        return None
    if req == "gres":
        return f"--gres=gpu:{gpus_per_node}"
    return f"--gpus-per-node={gpus_per_node}"


def sbatch_options(
    spec: DictConfig,
    *,
    job_name: str,
    output: str,
    nodes: int,
    gpus_per_node: int,
    array: Optional[str] = None,
    dependency: Optional[str] = None,
    time: Optional[str] = None,
    comment: Optional[str] = None,
) -> List[str]:
    """The #SBATCH lines of a job, in a stable order."""
    c = spec.cluster
    opts: List[str] = [f"--job-name={sbatch_value(job_name)}", f"--nodes={nodes}"]
    if get_executor(spec).queues_jobs and nodes > 1:
        opts.append("--ntasks-per-node=1")
    opts.append(f"--cpus-per-task={c.cpus_per_task}")
    if c.mem_per_cpu:
        opts.append(f"--mem-per-cpu={sbatch_value(c.mem_per_cpu)}")
    if c.mem:
        opts.append(f"--mem={sbatch_value(c.mem)}")
    gpu = _gpu_option(spec, gpus_per_node)
    if gpu:
        opts.append(gpu)
    for key in ("partition", "account", "qos"):
        if c[key]:
            opts.append(f"--{key}={sbatch_value(c[key])}")
    opts.append(f"--time={sbatch_value(time or c.time)}")
    opts.append(f"--output={sbatch_value(slurm_filename(output))}")
    opts.append("--open-mode=append")
    opts.append("--requeue")
    if c.export:
        export = str(c.export)
        if export == "NONE" and spec.secrets:  # secrets travel by name from the submitting shell, never as values
            export = ",".join(spec.secrets)
        opts.append(f"--export={sbatch_value(export)}")
    if array:
        opts.append(f"--array={array}")
    if dependency:
        opts.append(f"--dependency={dependency}")
        opts.append("--kill-on-invalid-dep=yes")
    if comment:
        opts.append(f"--comment={sbatch_value(comment)}")
    for k, v in c.sbatch_extra.items():
        opts.append(f"--{k}={sbatch_value(v)}" if v not in (None, "") else f"--{k}")
    return opts


def render_job_script(
    spec: DictConfig,
    *,
    run_dir: str,
    run_id: str,
    steps: Sequence[Step],
    sbatch: Sequence[str],
    env: Dict[str, str],
    description: str,
    runtime_env_prefix: str = "",
    template: str = "sbatch.j2",
    prologue: Sequence[str] = (),
) -> JobScript:
    import jinja2

    from hpc_ft import __version__

    c = spec.cluster
    try:
        text = template_env().get_template(template).render(
            version=__version__,
            interpreter_bin=os.path.dirname(sys.executable),
            run_id=run_id,
            run_dir=run_dir,
            description=description,
            sbatch=list(sbatch),
            local_log=get_executor(spec).script_writes_log,
            modules=list(c.modules),
            setup=list(c.setup),
            env=sorted(env.items()),
            secrets=list(spec.secrets),
            runtime_env_prefix=runtime_env_prefix,
            max_requeues=c.max_requeues,
            signal_before_s=c.signal_before_timeout_s,
            steps=list(steps),
            prologue=list(prologue),
        )
    except jinja2.TemplateError as exc:
        raise _template_error(template, exc) from None
    return JobScript(text=text, sbatch=list(sbatch), steps=list(steps))
