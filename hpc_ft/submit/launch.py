"""Launch a run: prepare inputs, render the train (and eval) job scripts, submit, record.

`hpc-ft train` and `hpc-ft demo` go through `launch_run`; `--dry-run` takes the same path and stops
just before submitting.
"""

from __future__ import annotations

import getpass
import os
import re
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from omegaconf import DictConfig

from hpc_ft.backends import backend_module
from hpc_ft.backends.launch import prologue, runtime_env_prefix
from hpc_ft.errors import UserError
from hpc_ft.render import JobScript, Step, render_job_script
from hpc_ft.render.render import sbatch_options
from hpc_ft.submit import rundir as rd

_SLURM_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def timeout_minutes(value: str) -> float:
    """Slurm's time formats -> minutes: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    m = _SLURM_TIME.match(str(value).strip())
    if not m:
        raise UserError(f"cluster.time={value}: not a Slurm time limit. Use HH:MM:SS, D-HH:MM:SS or minutes.")
    d, a, b, c = m.groups()
    if d is not None:
        h, mi, s = int(a), int(b or 0), int(c or 0)
        return int(d) * 1440 + h * 60 + mi + s / 60
    if b is None:
        return float(a)
    if c is None:
        return int(a) + int(b) / 60
    return int(a) * 60 + int(b) + int(c) / 60


def ensure_data(spec: DictConfig, dry_run: bool, notes: List[str]) -> Dict[str, Optional[str]]:
    """Make sure the prepared jsonl files exist; prepare them from data.source when they do not."""
    d = spec.data
    files = [d.train_file, d.validation_file, d.test_file]
    if not all(os.path.isfile(f) for f in files):
        if dry_run:
            notes.append(f"data: {d.dir} is not prepared yet (a real submit prepares it from data.source={d.source})")
        else:
            prepare_data(spec)
    return {f: rd.file_sha256(f) for f in files}


def prepare_data(spec: DictConfig):
    from hpc_ft.data import jcommonsenseqa as jc

    d = spec.data
    if d.source == "synthetic":
        s = d.synthetic
        return jc.make_synthetic(d.dir, n_train=s.n_train, n_valid=s.n_valid, n_test=s.n_test, seed=d.seed)
    if not d.source:
        raise UserError(
            f"data: {d.train_file} does not exist and data.source is not set. Run "
            "`hpc-ft data prepare data.source=<JGLUE checkout>` or set data.source=synthetic."
        )
    if not os.path.isdir(d.source):
        raise UserError(f"data.source={d.source}: no such directory. Point it at a JGLUE checkout.")
    return jc.convert_jglue(d.source, d.dir, seed=d.seed, n_valid=d.n_valid)


def container_image_problem(spec: DictConfig, when_unset: str) -> Optional[str]:
    """What is wrong with container.image (unset, missing, unreadable), or None when it can be used."""
    if not spec.container.image:
        return when_unset
    from hpc_ft.containers.runtime import check_image

    try:
        check_image(spec.container.image)
    except UserError as exc:
        return str(exc)
    return None


def check_inputs(spec: DictConfig, dry_run: bool, notes: List[str]) -> None:
    """Files the job needs that a real submit must not queue without."""
    problems = []
    if spec.backend.name == "nemo":
        if not spec.model.restore_from_path or not os.path.isfile(spec.model.restore_from_path):
            problems.append(
                f"model.restore_from_path={spec.model.restore_from_path}: the base .nemo does not exist. "
                "Convert it first: `hpc-ft model convert` (or point the key at your .nemo)."
            )
    elif spec.model.build != "tiny":
        cfg = os.path.join(spec.model.hf_path or "", "config.json")
        if not os.path.isfile(cfg):
            problems.append(
                f"model.hf_path={spec.model.hf_path}: no config.json there. Fetch it first: `hpc-ft model fetch`."
            )
    if spec.cluster.container_runtime != "none":
        problem = container_image_problem(
            spec, "container.image: not set but the cluster uses a container. Set container.image=<.sif>.")
        if problem:
            problems.append(problem)
    for p in problems:
        if dry_run:
            notes.append(p)
        else:
            raise UserError(p)


@dataclass
class Launch:
    run_id: str
    run_dir: Path
    scripts: Dict[str, JobScript]
    job_ids: Dict[str, str] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    local_job: Any = None       # the submitit LocalJob when run locally (to wait on it)


def job_name(spec: DictConfig, run_id: str, kind: str) -> str:
    return f"hpcft.{spec.exp_manager.name}.{kind}.{run_id}"


def render_scripts(spec: DictConfig, run_dir: Path, run_id: str, with_eval: bool,
                   one_job: bool = False) -> Dict[str, JobScript]:
    """The run's job scripts: "train" (and, on Slurm, "eval" with afterok on it).

    `one_job`: train then eval in the one "train" script, as the local executor runs them (a sweep's
    array task is one job)."""
    backend = backend_module(spec.backend.name)
    c, t = spec.cluster, spec.trainer
    env = {**{str(k): str(v) for k, v in c.env.items()}, **backend.job_env(spec)}
    log = str(run_dir / "logs" / "job.out")
    prepare_steps: List[Step] = backend.prepare_steps(spec, str(run_dir))  # e.g. NeMo's packing step
    train_steps: List[Step] = backend.train_steps(spec, str(run_dir))
    eval_steps: List[Step] = backend.eval_steps(spec, str(run_dir)) if with_eval else []
    gpus = t.devices if c.gpu.request != "none" else 0
    common = dict(run_dir=str(run_dir), run_id=run_id, env=env, runtime_env_prefix=runtime_env_prefix(spec),
                  prologue=prologue(spec))
    if c.executor == "local" or one_job:
        # One local job runs train then eval: the local executor has no dependencies.
        sb = sbatch_options(spec, job_name=job_name(spec, run_id, "train"), output=log, nodes=t.num_nodes,
                            gpus_per_node=gpus, comment=f"hpc-ft:{run_id}")
        return {"train": render_job_script(spec, steps=prepare_steps + train_steps + eval_steps, sbatch=sb,
                                           description="train" + (" + eval" if eval_steps else ""), **common)}
    scripts: Dict[str, JobScript] = {}
    if prepare_steps:  # its own job on one GPU; training waits on it (afterok)
        scripts["pack"] = render_job_script(
            spec, steps=prepare_steps, description="pack (before train)",
            sbatch=sbatch_options(spec, job_name=job_name(spec, run_id, "pack"), output=log, nodes=1,
                                  gpus_per_node=min(gpus, 1), comment=f"hpc-ft:{run_id}"),
            **common)
    scripts["train"] = render_job_script(
        spec, steps=train_steps, description="train" + (" (after pack: afterok)" if prepare_steps else ""),
        sbatch=sbatch_options(spec, job_name=job_name(spec, run_id, "train"), output=log, nodes=t.num_nodes,
                              gpus_per_node=gpus, comment=f"hpc-ft:{run_id}",
                              dependency="afterok:{pack_job_id}" if prepare_steps else None),
        **common)
    if eval_steps:
        scripts["eval"] = render_job_script(
            spec, steps=eval_steps, description="eval (after train: afterok)",
            sbatch=sbatch_options(spec, job_name=job_name(spec, run_id, "eval"), output=log, nodes=1,
                                  gpus_per_node=gpus, dependency="afterok:{train_job_id}",
                                  comment=f"hpc-ft:{run_id}"),
            **common)
    return scripts


@contextmanager
def _writable(key: str, value: str) -> Iterator[None]:
    """A folder that cannot be created or written (a file in the way, no permission) -> UserError naming `key`."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or value
        raise UserError(
            f"{key}={value}: cannot write {where} ({exc.strerror or exc}). "
            f"Point {key} (or work_dir) at a folder you can write to."
        ) from None


def launch_run(spec: DictConfig, overrides: Sequence[str], *, dry_run: bool = False, with_eval: bool = False,
               registry=None) -> Launch:
    from hpc_ft.submit import executors

    notes: List[str] = []
    check_inputs(spec, dry_run, notes)
    with _writable("data.dir", spec.data.dir):
        checksums = ensure_data(spec, dry_run, notes)
    run_id = rd.new_run_id()
    with _writable("exp_manager.exp_dir", spec.exp_manager.exp_dir):
        run_dir = rd.make_run_dir(spec, run_id)
    rd.write_text(run_dir / "config.yaml", rd.config_yaml(spec))
    scripts = render_scripts(spec, run_dir, run_id, with_eval)
    rd.write_text(run_dir / "job.sbatch", scripts["train"].text, 0o755)
    record: Dict[str, Any] = {
        "run_id": run_id,
        "name": spec.exp_manager.name,
        "run_dir": str(run_dir),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "hpc_ft_version": rd.code_version(),
        "overrides": list(overrides),
        "backend": spec.backend.name,
        "cluster": spec.cluster.name,
        "executor": spec.cluster.executor,
        "config_hash": rd.config_hash(spec),
        "jobs": {},
        "job_ids": [],
        "eval": bool(with_eval),
        "container": {"runtime": spec.cluster.container_runtime, "image": spec.container.image,
                      "digest": _image_digest(spec, dry_run)},
        "data": {"files": checksums},
        "submitted_by": {"user": getpass.getuser(), "host": socket.gethostname(), "python": sys.executable},
        "dry_run": dry_run,
        "requeues": 0,
        # which registry owns this run: `hpc-ft runs --reconcile` adopts only orphans
        "registry": str(registry.path) if registry is not None else None,
    }
    launch = Launch(run_id=run_id, run_dir=run_dir, scripts=scripts, notes=notes)
    if "eval" in scripts:
        rd.write_text(run_dir / "eval.sbatch", scripts["eval"].text, 0o755)
    if "pack" in scripts:
        rd.write_text(run_dir / "pack.sbatch", scripts["pack"].text, 0o755)
    rd.write_run_json(run_dir, record)
    if dry_run:
        return launch

    try:
        _submit(spec, launch, scripts, record, run_dir)
    except UserError:
        import shutil
        import subprocess

        if launch.job_ids and spec.cluster.executor == "slurm":  # train queued, eval refused: take it back
            subprocess.run(["scancel", *launch.job_ids.values()], capture_output=True)
        shutil.rmtree(run_dir, ignore_errors=True)  # nothing stays queued: leave nothing behind
        raise
    if registry is not None:
        registry.add_run(run_id=run_id, name=spec.exp_manager.name, config_hash=record["config_hash"],
                         run_dir=str(run_dir), backend=spec.backend.name, cluster=spec.cluster.name,
                         executor=spec.cluster.executor, job_ids=record["job_ids"])
    return launch


def _submit(spec: DictConfig, launch: Launch, scripts: Dict[str, JobScript], record: Dict[str, Any],
            run_dir: Path) -> None:
    from hpc_ft.submit import executors

    folder = run_dir / "logs" / "submitit"
    if spec.cluster.executor == "slurm":
        train_text = scripts["train"].text
        if "pack" in scripts:  # the packing job first; training waits on it (afterok)
            executors.test_only(run_dir / "pack.sbatch")
            launch.job_ids["pack"] = executors.submit_slurm(scripts["pack"].text, folder).job_id
            train_text = train_text.replace("afterok:{pack_job_id}", f"afterok:{launch.job_ids['pack']}")
            rd.write_text(run_dir / "job.sbatch", train_text, 0o755)
        executors.test_only(run_dir / "job.sbatch")
        sub = executors.submit_slurm(train_text, folder)
        launch.job_ids["train"] = sub.job_id
        if "eval" in scripts:
            text = scripts["eval"].text.replace("afterok:{train_job_id}", f"afterok:{sub.job_id}")
            rd.write_text(run_dir / "eval.sbatch", text, 0o755)
            launch.job_ids["eval"] = executors.submit_slurm(text, folder).job_id
    else:
        sub, job = executors.submit_local(run_dir / "job.sbatch", folder, timeout_minutes(spec.cluster.time),
                                          int(spec.cluster.signal_before_timeout_s))
        launch.job_ids["train"] = sub.job_id
        launch.local_job = job
    record["jobs"] = launch.job_ids
    record["job_ids"] = list(launch.job_ids.values())
    rd.write_run_json(run_dir, record)


def _image_digest(spec: DictConfig, dry_run: bool) -> Optional[str]:
    if spec.container.digest:
        return spec.container.digest
    image = spec.container.image
    if spec.cluster.container_runtime == "none" or not image or not os.path.isfile(image):
        return None
    from hpc_ft.containers.verify import record_digest

    return record_digest(image)


def launch_eval(spec: DictConfig, row: Optional[Dict[str, Any]], *, dry_run: bool = False, registry=None) -> Launch:
    """The eval job alone: in a training run's directory (row given) or in a new run directory."""
    steps = lambda run_dir: backend_module(spec.backend.name).eval_steps(spec, str(run_dir))  # noqa: E731
    return launch_steps(spec, "eval", steps, row, dry_run=dry_run, registry=registry)


def launch_steps(spec: DictConfig, kind: str, make_steps, row: Optional[Dict[str, Any]] = None, *,
                 dry_run: bool = False, registry=None, gpus: Optional[int] = None) -> Launch:
    """One job of `kind` (eval, convert, ...) whose steps `make_steps(run_dir)` returns.

    With `row` the job joins that run's directory (and its registry row); otherwise it gets a new run.
    """
    from hpc_ft.submit import executors

    notes: List[str] = []
    if row is not None:
        run_dir, run_id = Path(row["run_dir"]), row["run_id"]
    else:
        if kind == "eval":
            check_inputs(spec, True, notes)
        run_id = rd.new_run_id()
        run_dir = rd.make_run_dir(spec, run_id)
        rd.write_text(run_dir / "config.yaml", rd.config_yaml(spec))
        rd.write_run_json(run_dir, {"run_id": run_id, "name": spec.exp_manager.name, "run_dir": str(run_dir),
                                    "kind": kind, "backend": spec.backend.name, "cluster": spec.cluster.name,
                                    "executor": spec.cluster.executor, "jobs": {}, "job_ids": [],
                                    "config_hash": rd.config_hash(spec), "dry_run": dry_run,
                                    "hpc_ft_version": rd.code_version()})
    backend = backend_module(spec.backend.name)
    c, t = spec.cluster, spec.trainer
    env = {**{str(k): str(v) for k, v in c.env.items()}, **backend.job_env(spec)}
    if gpus is None:
        gpus = t.devices if c.gpu.request != "none" else 0
    script = render_job_script(
        spec, run_dir=str(run_dir), run_id=run_id, env=env, runtime_env_prefix=runtime_env_prefix(spec),
        steps=make_steps(run_dir), description=kind,
        sbatch=sbatch_options(spec, job_name=job_name(spec, run_id, kind), output=str(run_dir / "logs" / "job.out"),
                              nodes=1, gpus_per_node=gpus, comment=f"hpc-ft:{run_id}"))
    path = run_dir / f"{kind}.sbatch"
    rd.write_text(path, script.text, 0o755)
    launch = Launch(run_id=run_id, run_dir=run_dir, scripts={kind: script}, notes=notes)
    if dry_run:
        return launch
    folder = run_dir / "logs" / "submitit"
    if c.executor == "slurm":
        executors.test_only(path)
        launch.job_ids[kind] = executors.submit_slurm(script.text, folder).job_id
    else:
        sub, job = executors.submit_local(path, folder, timeout_minutes(c.time), int(c.signal_before_timeout_s))
        launch.job_ids[kind], launch.local_job = sub.job_id, job
    rec = rd.read_run_json(run_dir)
    rec.setdefault("jobs", {}).update(launch.job_ids)
    rec["job_ids"] = list(rec["jobs"].values())
    rd.write_run_json(run_dir, rec)
    if registry is not None:
        if row is not None and registry.get(run_id):
            registry.update_run(run_id, job_ids=rec["job_ids"], state="PENDING")
        else:
            registry.add_run(run_id=run_id, name=spec.exp_manager.name, config_hash=rec.get("config_hash", ""),
                             run_dir=str(run_dir), backend=spec.backend.name, cluster=c.name, executor=c.executor,
                             job_ids=rec["job_ids"])
    return launch
