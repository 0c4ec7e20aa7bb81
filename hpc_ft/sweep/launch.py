"""Launch a sweep: every point composed and validated, pruned by the planner, the rest submitted as ONE job array.

Layout on disk (one folder a person can read without the tool)::

    <exp_dir>/<name>/sweep-<sweep_id>/
      sweep.json         the sweep: id, command line, array job id, executor, counts
      points.json        every point: index, task, overrides, fits, ok, reason, tp, pp, mbs, gbs, lr, ...
      array.sbatch       the dispatcher (templates/array.sbatch.j2): --array=0-K%P, one task per kept point
      <task>/            one ordinary run directory per kept point (config.yaml, job.sbatch, run.json, logs/)

Each point's job.sbatch is rendered by the same path as a single run (`render_scripts`), so one template
governs what runs; the dispatcher only picks the task's script, forwards signals, and after a GPU
out-of-memory failure cancels the not-yet-started points of the same memory layout with a larger MBS.
On `cluster=local` the dispatcher runs the kept points one after another in one local job.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hpc_ft.errors import UserError
from hpc_ft.compose.points import Point, SpecView, compose_points, with_values
from hpc_ft.tasks.prepare import task_data_key

from hpc_ft.submit.rundir import POINTS_JSON, SWEEP_JSON  # noqa: E402,F401 - where the sweep's files are named
ARRAY_SCRIPT = "array.sbatch"
ARRAY_TEMPLATE = "array.sbatch.j2"
OOM_MARKER = "cancelled_oom"  # <sweep_dir>/<task>/state/cancelled_oom: the task that ran out of GPU memory
_NOT_RESOURCES = ("--job-name=", "--output=", "--comment=")


@dataclass
class PlannedPoint:
    """A point with the planner's verdict and, when kept, its array task."""

    point: Point
    fits: Optional[bool] = None       # the memory verdict (None: not planned)
    ok: Optional[bool] = None         # fits and breaks no rule (None: not planned)
    reason: str = ""
    kept: bool = False
    forced: bool = False
    per_gpu_gib: Optional[float] = None
    capacity_gib: Optional[float] = None
    layout: Optional[int] = None      # memory layout: equal for points that differ only in batch sizes (and lr, ...)
    task: Optional[int] = None
    run_id: Optional[str] = None
    run_dir: Optional[str] = None

    def record(self) -> Dict[str, Any]:
        p, s = self.point, self.point.spec
        out: Dict[str, Any] = {
            "index": p.index, "task": self.task, "overrides": list(p.overrides), "swept": dict(p.swept),
            "kept": self.kept, "fits": self.fits, "ok": self.ok, "reason": self.reason, "forced": self.forced,
            "per_gpu_gib": self.per_gpu_gib, "capacity_gib": self.capacity_gib, "layout": self.layout,
            "run_id": self.run_id, "run_dir": self.run_dir,
        }
        if s is not None:
            m, t = s.model, s.trainer
            out.update(tp=m.tensor_model_parallel_size, pp=m.pipeline_model_parallel_size, mbs=m.micro_batch_size,
                       gbs=m.global_batch_size, lr=m.optim.lr, devices=t.devices, num_nodes=t.num_nodes,
                       model=m.name, backend=s.backend.name, cluster=s.cluster.name, steps=s.sweep.steps)
        else:
            out.update(tp=None, pp=None, mbs=None, gbs=None, lr=None, devices=None, num_nodes=None, model=None,
                       backend=None, cluster=None, steps=None)
        return out


@dataclass
class SweepLaunch:
    sweep_id: str
    sweep_dir: Optional[Path]
    points: List[PlannedPoint]
    array_text: Optional[str] = None
    array_job_id: Optional[str] = None
    executor: str = "slurm"
    parallelism: int = 1
    notes: List[str] = field(default_factory=list)
    dry_run: bool = False
    local_job: Any = None

    @property
    def kept(self) -> List[PlannedPoint]:
        return [p for p in self.points if p.kept]


# ---- planning -------------------------------------------------------------------------------------


def plan_points(points: Sequence[Point], force: bool = False) -> List[PlannedPoint]:
    """The planner's fast path (no alternatives, no levers) on every valid point; refused points are pruned."""
    from hpc_ft.plan import plan
    from hpc_ft.submit.preflight import model_config_source, plan_request

    sources: Dict[Tuple, Any] = {}
    layouts: Dict[str, int] = {}
    out: List[PlannedPoint] = []
    for p in points:
        pp = PlannedPoint(point=p)
        out.append(pp)
        if p.spec is None:
            pp.reason = f"invalid: {p.error}"
            continue
        s = p.spec
        m = s.model
        try:
            key = (m.hf_config, m.hf_path, m.name, m.build)
            if key not in sources:
                sources[key] = model_config_source(s)
            source = sources[key]
            req = plan_request(s, source=source) if source is not None else None
            result = plan(req, alternatives=False, suggest=False) if req is not None else None
        except UserError as exc:
            pp.reason = f"invalid: {exc}"
            continue
        if result is None:
            pp.kept = True
            pp.reason = (f"planner: no config.json for model '{m.name}' (set model.hf_config=<config.json>); "
                         "memory fit not checked")
            layout_key = repr((m.name, m.tensor_model_parallel_size, m.pipeline_model_parallel_size,
                               s.trainer.devices, s.trainer.num_nodes))
        else:
            pp.fits, pp.ok = result.fits, result.ok
            pp.per_gpu_gib = round(result.per_gpu_gib, 2) if result.estimate else None
            pp.capacity_gib = round(result.capacity_gib, 2) if result.estimate else None
            pp.reason = "" if result.ok else result.reason
            pp.kept = result.ok or (force and not result.violations)  # --force: the memory verdict only
            pp.forced = not result.ok and pp.kept
            layout_key = repr(req.with_(mbs=1, gbs=1))
        pp.layout = layouts.setdefault(layout_key, len(layouts))
    return out


# ---- rendering ------------------------------------------------------------------------------------


def _resources(sbatch: Sequence[str]) -> List[str]:
    return [o for o in sbatch if not o.startswith(_NOT_RESOURCES)]


def _oom_markers() -> List[str]:
    from hpc_ft.track.job_log import GPU_OOM_MARKERS

    return list(GPU_OOM_MARKERS)


def render_array(first: SpecView, *, sweep_id: str, sweep_dir: Path, kept: Sequence[PlannedPoint],
                 parallelism: int) -> str:
    """The dispatcher script: the array's #SBATCH lines (resources of the points) and the task table."""
    import jinja2

    from hpc_ft import __version__
    from hpc_ft.render.render import sbatch_options, template_env
    from hpc_ft.render.shell import sbatch_value, slurm_filename

    c, t = first.cluster, first.trainer
    gpus = t.devices if c.gpu.request != "none" else 0
    k = len(kept)
    opts = sbatch_options(first, job_name=f"hpcft.{first.exp_manager.name}.sweep.{sweep_id}", output="-",
                          nodes=t.num_nodes, gpus_per_node=gpus, array=f"0-{k - 1}%{parallelism}",
                          comment=f"hpc-ft:sweep:{sweep_id}")
    # every task writes into its own run directory: <sweep_dir>/<task>/logs/job.out (%a: the task id)
    output = f"--output={sbatch_value(slurm_filename(str(sweep_dir)) + '/%a/logs/job.out')}"
    opts = [output if o.startswith("--output=") else o for o in opts]
    try:
        return template_env().get_template(ARRAY_TEMPLATE).render(
            version=__version__, sweep_id=sweep_id, sweep_dir=str(sweep_dir), sbatch=opts, tasks=k,
            parallelism=parallelism, points=[p.point.index for p in kept], layouts=[p.layout for p in kept],
            mbs=[int(p.point.spec.model.micro_batch_size) for p in kept], oom_markers=_oom_markers())
    except jinja2.TemplateError as exc:
        raise UserError(f"template {ARRAY_TEMPLATE}: {getattr(exc, 'message', None) or exc}. Fix it, or remove the "
                        "site copy from $HPC_FT_TEMPLATE_DIR to use the shipped one.") from None


class _Inputs:
    """check_inputs / ensure_data / the image digest, once per distinct model, data and image."""

    def __init__(self, dry_run: bool, notes: List[str]) -> None:
        self.dry_run, self.notes = dry_run, notes
        self._checked: set = set()
        self._data: Dict[Tuple, Dict[str, Optional[str]]] = {}
        self._task: Dict[Tuple, Any] = {}  # a classification/NER/preference point's checked data (PreparedTask)
        self._digest: Dict[Tuple, Optional[str]] = {}

    def check(self, spec: SpecView) -> None:
        from hpc_ft.submit.launch import check_inputs, ensure_data, writable

        m, c = spec.model, spec.cluster
        key = (spec.backend.name, m.restore_from_path, m.hf_path, m.build, c.container_runtime, spec.container.image)
        if key not in self._checked:
            before = len(self.notes)
            check_inputs(spec, self.dry_run, self.notes)
            self._dedupe(before)
            self._checked.add(key)
        tkey = task_data_key(spec)
        if tkey is not None and tkey not in self._task:
            from hpc_ft.tasks.prepare import prepare_task_data

            before = len(self.notes)
            self._task[tkey] = prepare_task_data(spec, self.dry_run, self.notes)
            self._dedupe(before)
        d = spec.data
        dkey = (d.dir, d.train_file, d.validation_file, d.test_file, d.source)
        if dkey not in self._data:
            before = len(self.notes)
            with writable("data.dir", d.dir):
                ensure_data(spec, self.dry_run, self.notes)
            self._data[dkey] = {}
            self._dedupe(before)
        self._check_rows(spec)

    def _check_rows(self, spec: SpecView) -> None:
        """hpc_ft.data's submit checks, once per distinct files + data options; nemo sweeps take NeMo rows as they are."""
        from hpc_ft.backends.base import get_backend
        from hpc_ft.data.checks import check_job_data
        from hpc_ft.data.spec import options_from_spec, splits_from_spec

        key = (spec.backend.name, options_from_spec(spec).to_json(), repr(splits_from_spec(spec)), bool(spec.eval))
        if key in self._data:
            return
        before = len(self.notes)
        report = check_job_data(spec, dry_run=self.dry_run, notes=self.notes)
        if get_backend(spec.backend.name).converts_data(report):
            raise UserError(f"model.data.train_ds.file_names: a {spec.backend.name} sweep passes NeMo jsonl rows as they are, and these "
                            "need converting (another format or data.prompt_template_no_input); convert them once with "
                            "`hpc-ft train ... --dry-run` (its run folder's data/) and sweep over those files.")
        self._data[key] = report.checksums()
        self._dedupe(before)

    def task_record(self, spec: SpecView, run_dir: Path) -> Dict[str, Any]:
        """A task point's checked splits and labels written into its run's data/ (run.json's data.task)."""
        prepared = self._task.get(task_data_key(spec))
        return {"task": prepared.write(run_dir / "data")} if prepared is not None else {}

    def checksums(self, spec: SpecView) -> Dict[str, Optional[str]]:
        from hpc_ft.data.spec import options_from_spec, splits_from_spec

        return self._data[(spec.backend.name, options_from_spec(spec).to_json(), repr(splits_from_spec(spec)),
                           bool(spec.eval))]

    def digest(self, spec: SpecView) -> Optional[str]:
        from hpc_ft.submit.launch import image_digest

        key = (spec.container.digest, spec.container.image, spec.cluster.container_runtime)
        if key not in self._digest:
            self._digest[key] = image_digest(spec, self.dry_run)
        return self._digest[key]

    def _dedupe(self, before: int) -> None:
        new = [n for n in self.notes[before:] if n not in self.notes[:before]]
        del self.notes[before:]
        self.notes.extend(new)


def _point_spec(pp: PlannedPoint, run_dir: Path) -> SpecView:
    from hpc_ft.backends import get_backend

    spec = pp.point.spec
    own = get_backend(spec.backend.name).point_values(spec, run_dir)  # e.g. NeMo: its own exp_dir per point
    return with_values(spec, own) if own else spec


def launch_sweep(overrides: Sequence[str], *, dry_run: bool = False, force: bool = False,
                 registry=None, out: Optional[str] = None) -> SweepLaunch:
    """Compose, plan, render (always) and submit (unless dry_run) the sweep as one array through the submit
    pipeline; register it and its points. A dry run writes nothing unless `out` names a folder for it."""
    from hpc_ft.executors import get_executor
    from hpc_ft.submit import rundir as rd
    from hpc_ft.submit.launch import new_record, render_scripts, submission_for, submit_and_record, writable
    from hpc_ft.submit.record import submitter, write_record

    points = plan_points(compose_points(overrides), force=force)
    kept = [p for p in points if p.kept]
    sweep_id = rd.new_run_id()
    notes: List[str] = []
    if not kept:
        return SweepLaunch(sweep_id=sweep_id, sweep_dir=None, points=points, dry_run=dry_run, notes=notes)
    first = kept[0].point.spec
    executors_seen = {p.point.spec.cluster.executor for p in kept}
    if len(executors_seen) > 1:
        raise UserError("cluster.executor: the sweep's points run on both Slurm and the local executor "
                        f"({', '.join(sorted(executors_seen))}); sweep one cluster at a time.")
    executor = get_executor(first)
    parallelism = int(first.sweep.parallelism)
    throughput = first.sweep.steps is not None
    if any(p.point.spec.eval for p in kept) and throughput:
        notes.append("eval=true: no eval step in a throughput sweep (sweep.steps is set); points only train")

    inputs = _Inputs(dry_run, notes)
    for p in kept:
        inputs.check(p.point.spec)
    _tiny_model_note(kept, executor.queues_jobs, parallelism, notes)

    exp_dir, name = first.exp_manager.exp_dir, first.exp_manager.name
    base = str(Path(out).absolute()) if (dry_run and out) else exp_dir
    sweep_dir = Path(base) / name / f"sweep-{sweep_id}"
    rendered = []
    resources: Optional[List[str]] = None
    for task, pp in enumerate(kept):  # everything rendered and checked before anything is written
        pp.task, pp.run_id, pp.run_dir = task, f"{sweep_id}_{task}", str(sweep_dir / str(task))
        spec = _point_spec(pp, Path(pp.run_dir))
        with_eval = bool(spec.eval) and spec.sweep.steps is None
        script = render_scripts(spec, Path(pp.run_dir), pp.run_id, with_eval, one_job=True)["train"]
        mine = _resources(script.sbatch)
        if resources is None:
            resources = mine
        elif mine != resources:
            diff = sorted(set(mine) ^ set(resources))
            raise UserError(
                f"point {pp.point.index} ({label(pp.point)}) asks Slurm for other resources than point "
                f"{kept[0].point.index} ({label(kept[0].point)}): {', '.join(diff)}. One job array has one "
                "resource request; sweep trainer.devices, trainer.num_nodes or cluster.* in separate "
                "`hpc-ft train -m` commands."
            )
        rendered.append((pp, spec, script, with_eval))

    array_text = render_array(first, sweep_id=sweep_id, sweep_dir=sweep_dir, kept=kept, parallelism=parallelism)
    launch = SweepLaunch(sweep_id=sweep_id, sweep_dir=sweep_dir, points=points, array_text=array_text,
                         executor=executor.name, parallelism=parallelism, notes=notes, dry_run=dry_run)
    if dry_run and not out:
        return launch  # a dry run leaves nothing behind

    with writable("exp_manager.exp_dir", base):
        sweep_dir.mkdir(parents=True, exist_ok=False)
        (sweep_dir / "logs").mkdir()
    who = submitter()
    records = []
    to_yaml = rd.ConfigYaml()
    for pp, spec, script, with_eval in rendered:
        run_dir = rd.make_run_dir(spec, str(pp.task), parent=str(sweep_dir))
        text = to_yaml(spec)
        rd.write_new(run_dir / "config.yaml", text)
        rd.write_new(run_dir / "job.sbatch", script.text, 0o755)
        record = new_record(
            spec, pp.run_id, run_dir, dry_run=dry_run, overrides=list(pp.point.overrides),
            config_hash=rd.text_hash(text), eval=with_eval, requeues=0, submitted_by=who,
            container={"runtime": spec.cluster.container_runtime, "image": spec.container.image,
                       "digest": inputs.digest(spec)},
            data={"files": inputs.checksums(spec), **inputs.task_record(spec, run_dir)}, sweep_id=sweep_id, sweep_dir=str(sweep_dir),
            point=pp.point.index, task=pp.task)
        record.executor = executor.name
        records.append(record)
        write_record(record, new=True)

    array_path = sweep_dir / ARRAY_SCRIPT
    rd.write_text(array_path, array_text, 0o755)
    meta = {"sweep_id": sweep_id, "name": name, "sweep_dir": str(sweep_dir), "created": records[0].created,
            "overrides": list(overrides), "executor": executor.name, "cluster": first.cluster.name,
            "backend": first.backend.name, "points": len(points), "tasks": len(kept),
            "pruned": len(points) - len(kept), "parallelism": parallelism, "steps": first.sweep.steps,
            "array_job_id": None, "dry_run": dry_run, "hpc_ft_version": records[0].hpc_ft_version}
    _write_json(sweep_dir / POINTS_JSON, [p.record() for p in points])
    _write_json(sweep_dir / SWEEP_JSON, meta)
    if dry_run:
        return launch

    done = submit_and_record(submission_for(first, {"train": array_path}, records, sweep_dir / "logs" / "submitit",
                                            array_size=len(kept)), registry)
    launch.array_job_id, launch.local_job = done["train"].job_id, done["train"].handle
    meta["array_job_id"] = launch.array_job_id
    _write_json(sweep_dir / SWEEP_JSON, meta)
    if registry is not None:
        registry.add_sweep(sweep_id=sweep_id, name=name, sweep_dir=str(sweep_dir), job_id=launch.array_job_id,
                           points=len(points))
    return launch


def _write_json(path: Path, data: Any) -> None:
    from hpc_ft.submit.rundir import write_text

    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _tiny_model_note(kept: Sequence[PlannedPoint], queued: bool, parallelism: int, notes: List[str]) -> None:
    for p in kept:
        m = p.point.spec.model
        if m.build == "tiny" and not os.path.isfile(os.path.join(m.hf_path, "config.json")):
            if queued and parallelism > 1 and len(kept) > 1:
                notes.append(
                    f"model.hf_path={m.hf_path}: the tiny model is not built yet, so the first {parallelism} tasks "
                    "would each build it. Build it once first: `python -m hpc_ft.backends.hf_runtime.tiny_model "
                    f"--train-file {' '.join(p.point.spec.model.data.train_ds.file_names)} --output {m.hf_path} "
                    "--if-missing` (or sweep.parallelism=1)."
                )
            return


# ---- the command ----------------------------------------------------------------------------------


def label(point: Point) -> str:
    """The swept values of a point, as overrides: `model.micro_batch_size=4 model.optim.lr=0.001`."""
    return " ".join(f"{k}={v}" for k, v in point.swept.items())


def _fmt_lr(v: Any) -> str:
    return "-" if v is None else f"{v:g}"


def format_points(points: Sequence[PlannedPoint]) -> str:
    """A table of the points: kept ones with their task and memory estimate, pruned ones with the reason."""
    lines = [f"{'POINT':>5} {'TASK':>4} {'TP':>3} {'PP':>3} {'MBS':>4} {'GBS':>5} {'LR':>8}  VERDICT"]
    for p in points:
        r = p.record()
        cells = [str(r[k]) if r[k] is not None else "-" for k in ("tp", "pp", "mbs", "gbs")]
        if p.kept:
            mem = f" ({p.per_gpu_gib:.1f}/{p.capacity_gib:.1f} GiB)" if p.per_gpu_gib is not None else ""
            verdict = ("kept (--force): " + p.reason) if p.forced else ("kept" + mem + (f"; {p.reason}" if p.reason else ""))
        else:
            verdict = "PRUNED: " + p.reason
        task = "-" if p.task is None else str(p.task)
        lines.append(f"{p.point.index:>5} {task:>4} {cells[0]:>3} {cells[1]:>3} {cells[2]:>4} {cells[3]:>5} "
                     f"{_fmt_lr(r['lr']):>8}  {verdict}")
    return "\n".join(lines)
