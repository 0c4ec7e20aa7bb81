"""The one submit pipeline: check -> render -> write -> executor.submit -> record -> register.

`launch_run` (train, demo), `launch_steps` (eval, convert, export), `hpc_ft.submit.control.resume_run`
and every sweep (`hpc_ft.sweep.launch`, one array) end in `submit_and_record`. `--dry-run` takes the same
path, writes nothing (unless `out` names a folder for the run folder) and stops before submitting.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from omegaconf import DictConfig

from hpc_ft.backends import get_backend
from hpc_ft.backends.launch import prologue, runtime_env_prefix
from hpc_ft.errors import UserError
from hpc_ft.executors import Executor, Submitted, get_executor
from hpc_ft.executors import job_name as scheduler_job_name
from hpc_ft.render import JobScript, Step, render_job_script
from hpc_ft.render.render import sbatch_options
from hpc_ft.submit import rundir as rd
from hpc_ft.submit.record import RunRecord, register, submitter, write_record
from hpc_ft.tasks.prepare import prepare_task_data, task_source_checksums, task_summary

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
    """Prepare the data preset's files from data.source when the job names them (file_names) and they are missing."""
    from hpc_ft.data.sources import preset_files_to_prepare

    missing = preset_files_to_prepare(spec)
    if missing:
        if dry_run:
            notes.append(f"data: {spec.data.dir} is not prepared yet (a real submit prepares it from "
                         f"data.source={spec.data.source})")
        else:
            prepare_data(spec)
    return {}


def prepare_data(spec: DictConfig):
    from hpc_ft.data.sources import prepare

    return prepare(spec.data)


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
    problems = list(get_backend(spec.backend.name).input_problems(spec))
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
    written: bool = True        # False: a dry run that wrote nothing (no --out)
    data_summary: List[str] = field(default_factory=list)  # per split: rows, first example, lengths (stderr)


def job_name(spec: DictConfig, run_id: str, kind: str) -> str:
    return scheduler_job_name(spec.exp_manager.name, kind, run_id)


def render_scripts(spec: DictConfig, run_dir: Path, run_id: str, with_eval: bool,
                   one_job: bool = False) -> Dict[str, JobScript]:
    """The run's job scripts: "train" (and, where the executor queues jobs, "eval" with afterok on it).

    `one_job`: train then eval in the one "train" script, as the local executor runs them (a sweep's
    array task is one job)."""
    backend = get_backend(spec.backend.name)
    c, t = spec.cluster, spec.trainer
    env = {**{str(k): str(v) for k, v in c.env.items()}, **backend.job_env(spec)}
    log = str(run_dir / "logs" / "job.out")
    prepare_steps: List[Step] = backend.prepare_steps(spec, str(run_dir))  # e.g. NeMo's packing step
    train_steps: List[Step] = backend.train_steps(spec, str(run_dir))
    eval_steps: List[Step] = backend.eval_steps(spec, str(run_dir)) if with_eval else []
    gpus = t.devices if c.gpu.request != "none" else 0
    common = dict(run_dir=str(run_dir), run_id=run_id, env=env, runtime_env_prefix=runtime_env_prefix(spec),
                  prologue=prologue(spec))
    if not get_executor(spec).queues_jobs or one_job:
        # One job runs train then eval: the local executor has no dependencies.
        sb = sbatch_options(spec, job_name=job_name(spec, run_id, "train"), output=log, nodes=t.num_nodes,
                            gpus_per_node=gpus, comment=f"hpc-ft:{run_id}")
        return {"train": render_job_script(spec, steps=prepare_steps + train_steps + eval_steps, sbatch=sb,
                                           description="train" + (" + eval" if eval_steps else ""), **common)}
    from hpc_ft.executors.slurm import AFTEROK_PLACEHOLDER

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
                              dependency=AFTEROK_PLACEHOLDER if prepare_steps else None),
        **common)
    if eval_steps:
        scripts["eval"] = render_job_script(
            spec, steps=eval_steps, description="eval (after train: afterok)",
            sbatch=sbatch_options(spec, job_name=job_name(spec, run_id, "eval"), output=log, nodes=1,
                                  gpus_per_node=gpus, dependency=AFTEROK_PLACEHOLDER,
                                  comment=f"hpc-ft:{run_id}"),
            **common)
    return scripts


@contextmanager
def writable(key: str, value: str) -> Iterator[None]:
    """A folder that cannot be created or written (a file in the way, no permission) -> UserError naming `key`."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or value
        raise UserError(
            f"{key}={value}: cannot write {where} ({exc.strerror or exc}). "
            f"Point {key} (or work_dir) at a folder you can write to."
        ) from None


# ---- the one submit-and-record function ------------------------------------------------------------


@dataclass
class Submission:
    """What to hand to an executor and how to record it."""

    executor: Executor
    scripts: Dict[str, Path]          # kind -> script, in order; each waits on the one before (afterok)
    records: List[RunRecord]          # the runs recorded: one, or one per array task
    folder: Path                      # submitit's folder (<run_dir>/logs/submitit)
    timeout_min: float
    signal_delay_s: int
    array_size: Optional[int] = None  # one array job of this many tasks (a sweep)
    new_runs: bool = True             # registry rows to add (else: to update)


def submit_and_record(sub: Submission, registry=None) -> Dict[str, Submitted]:
    """Submit the scripts (train, then eval afterok on it), write the job ids into every record's run.json,
    then register the runs. Nothing stays queued when a later script is refused."""
    ex = sub.executor
    ex.check(next(iter(sub.scripts.values())))
    done: Dict[str, Submitted] = {}
    try:
        for kind, path in sub.scripts.items():
            if sub.array_size:
                done[kind] = ex.submit_array(path, sub.folder, sub.array_size, timeout_min=sub.timeout_min,
                                             signal_delay_s=sub.signal_delay_s)
            else:
                # each job waits (afterok) on the one before it: pack -> train -> eval
                after = list(done.values())[-1].job_id if done else None
                done[kind] = ex.submit(path, sub.folder, timeout_min=sub.timeout_min,
                                       signal_delay_s=sub.signal_delay_s, after=after)
    except UserError:
        ex.take_back([s.job_id for s in done.values()])  # train queued, eval refused: take it back
        raise
    for i, rec in enumerate(sub.records):
        if sub.array_size:
            rec.set_jobs({"train": done["train"].task_ids[i]})
        else:
            rec.set_jobs({**rec.jobs, **{k: s.job_id for k, s in done.items()}})
        write_record(rec)
    register(registry, sub.records, new=sub.new_runs)
    return done


def submission_for(spec: DictConfig, scripts: Dict[str, Path], records: List[RunRecord], folder: Path, *,
                   array_size: Optional[int] = None, new_runs: bool = True) -> Submission:
    return Submission(executor=get_executor(spec), scripts=scripts, records=records, folder=folder,
                      timeout_min=timeout_minutes(spec.cluster.time),
                      signal_delay_s=int(spec.cluster.signal_before_timeout_s), array_size=array_size,
                      new_runs=new_runs)


def new_record(spec: DictConfig, run_id: str, run_dir: Path, *, dry_run: bool, **fields: Any) -> RunRecord:
    """The record of a run made from `spec` (the fields every run has; `fields`: the rest)."""
    c = spec.cluster
    return RunRecord(run_id=run_id, name=spec.exp_manager.name, run_dir=str(run_dir), backend=spec.backend.name,
                     cluster=c.name, executor=c.executor, dry_run=dry_run, **fields)


def run_dir_for(spec: DictConfig, run_id: str, dry_run: bool, out: Optional[str]) -> Path:
    """Where the run folder goes: under exp_dir; a dry run's under `out` (and nowhere without it)."""
    if dry_run and out:
        return Path(out).absolute() / spec.exp_manager.name / run_id
    return Path(spec.exp_manager.exp_dir) / spec.exp_manager.name / run_id


def launch_run(spec: DictConfig, overrides: Sequence[str], *, dry_run: bool = False, with_eval: bool = False,
               registry=None, out: Optional[str] = None) -> Launch:
    notes: List[str] = []
    check_inputs(spec, dry_run, notes)
    with writable("data.dir", spec.data.dir):
        task_data = prepare_task_data(spec, dry_run, notes)  # classification/NER/preference: their own reading
        if spec.task.name == "sft":
            ensure_data(spec, dry_run, notes)
    from hpc_ft.data.checks import backend_data_files, check_job_data

    data_report = None
    if spec.task.name == "sft":
        data_report = check_job_data(spec, dry_run=dry_run, notes=notes)  # every row, before anything is queued
    run_id = rd.new_run_id()
    run_dir = run_dir_for(spec, run_id, dry_run, out)
    data_files = None
    if data_report is not None:
        data_files = backend_data_files(spec, data_report, run_dir)  # nemo: file_names -> run_dir/data/*.jsonl
    scripts = render_scripts(spec, run_dir, run_id, with_eval)
    # a task: the user's files' checksums, then (below) the checked splits and labels the job reads, in run_dir/data/
    data = data_files.record if data_files is not None else {"files": task_source_checksums(spec)}
    record = new_record(
        spec, run_id, run_dir, dry_run=dry_run, overrides=list(overrides), config_hash=rd.config_hash(spec),
        eval=bool(with_eval), requeues=0, submitted_by=submitter(), data=data,
        container={"runtime": spec.cluster.container_runtime, "image": spec.container.image,
                   "digest": image_digest(spec, dry_run)},
        registry=str(registry.path) if registry is not None else None)
    launch = Launch(run_id=run_id, run_dir=run_dir, scripts=scripts, notes=notes, written=not dry_run or bool(out),
                    data_summary=data_report.summary_lines() if data_report is not None else task_summary(task_data))
    if dry_run and not out:
        return launch  # a dry run leaves nothing behind
    with writable("exp_manager.exp_dir", str(run_dir.parent)):
        rd.make_run_dir(spec, run_id, parent=str(run_dir.parent))
    if data_files is not None:
        data_files.write()  # the converted files (their sha256 into the record)
    elif task_data is not None:
        data["task"] = task_data.write(run_dir / "data")
    rd.write_text(run_dir / "config.yaml", rd.config_yaml(spec))
    paths: Dict[str, Path] = {}
    for kind, script in scripts.items():
        paths[kind] = run_dir / ("job.sbatch" if kind == "train" else f"{kind}.sbatch")
        rd.write_text(paths[kind], script.text, 0o755)
    write_record(record)
    if dry_run:
        return launch
    try:
        done = submit_and_record(submission_for(spec, paths, [record], run_dir / "logs" / "submitit"), registry)
    except UserError:
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)  # nothing stays queued: leave nothing behind
        raise
    launch.job_ids = dict(record.jobs)
    launch.local_job = done["train"].handle if not get_executor(spec).queues_jobs else None
    return launch


def image_digest(spec: DictConfig, dry_run: bool) -> Optional[str]:
    if spec.container.digest:
        return spec.container.digest
    image = spec.container.image
    if spec.cluster.container_runtime == "none" or not image or not os.path.isfile(image):
        return None
    from hpc_ft.containers.verify import record_digest

    return record_digest(image)


def launch_eval(spec: DictConfig, row: Optional[Dict[str, Any]], *, dry_run: bool = False, registry=None,
                out: Optional[str] = None) -> Launch:
    """The eval job alone: in a training run's directory (row given) or in a new run directory."""
    steps = lambda run_dir: get_backend(spec.backend.name).eval_steps(spec, str(run_dir))  # noqa: E731
    return launch_steps(spec, "eval", steps, row, dry_run=dry_run, registry=registry, out=out,
                        write_dry_run=bool(out) and row is None)


def launch_steps(spec: DictConfig, kind: str, make_steps, row: Optional[Dict[str, Any]] = None, *,
                 dry_run: bool = False, registry=None, gpus: Optional[int] = None,
                 out: Optional[str] = None, write_dry_run: bool = True) -> Launch:
    """One job of `kind` (eval, convert, ...) whose steps `make_steps(run_dir)` returns.

    With `row` the job joins that run's directory (and its registry row); otherwise it gets a new run.
    `write_dry_run`: a dry run still writes its files (`hpc-ft model convert/export --dry-run`); the eval
    job's dry run writes nothing unless `out` names a folder for its new run folder.
    """
    notes: List[str] = []
    if row is not None:
        run_dir, run_id = Path(row["run_dir"]), row["run_id"]
    else:
        if kind == "eval":
            check_inputs(spec, True, notes)
        run_id = rd.new_run_id()
        run_dir = run_dir_for(spec, run_id, dry_run, out)
    backend = get_backend(spec.backend.name)
    c, t = spec.cluster, spec.trainer
    env = {**{str(k): str(v) for k, v in c.env.items()}, **backend.job_env(spec)}
    if gpus is None:
        gpus = t.devices if c.gpu.request != "none" else 0
    script = render_job_script(
        spec, run_dir=str(run_dir), run_id=run_id, env=env, runtime_env_prefix=runtime_env_prefix(spec),
        steps=make_steps(run_dir), description=kind,
        sbatch=sbatch_options(spec, job_name=job_name(spec, run_id, kind), output=str(run_dir / "logs" / "job.out"),
                              nodes=1, gpus_per_node=gpus, comment=f"hpc-ft:{run_id}"))
    launch = Launch(run_id=run_id, run_dir=run_dir, scripts={kind: script}, notes=notes,
                    written=not dry_run or write_dry_run)
    if not launch.written:
        return launch  # a dry run leaves nothing behind
    if row is None:
        rd.make_run_dir(spec, run_id, parent=str(run_dir.parent))
        rd.write_text(run_dir / "config.yaml", rd.config_yaml(spec))
        record = new_record(spec, run_id, run_dir, dry_run=dry_run, kind=kind, config_hash=rd.config_hash(spec))
        write_record(record)
    path = run_dir / f"{kind}.sbatch"
    rd.write_text(path, script.text, 0o755)
    if dry_run:
        return launch
    if row is not None:
        record = RunRecord.read(run_dir)
    done = submit_and_record(submission_for(spec, {kind: path}, [record], run_dir / "logs" / "submitit",
                                            new_runs=row is None or registry is None or registry.get(run_id) is None),
                             registry)
    launch.job_ids = {kind: done[kind].job_id}
    launch.local_job = done[kind].handle if not get_executor(spec).queues_jobs else None
    return launch
