"""CLI: model fetch | convert | export (pinned Hub download, HF -> .nemo job, merged HF export)."""

from __future__ import annotations

import argparse
import sys


def _overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                   help="Hydra overrides, as for train: model=elyza_llama2_7b model.revision=<commit> work_dir=...")


def add_commands(sub) -> None:
    p = sub.add_parser("model", help="base models: fetch from the Hub, convert to .nemo, export to HF")
    msub = p.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    msub.required = True

    f = msub.add_parser("fetch", help="download model.repo_id at model.revision (a pinned commit) into model.hf_path")
    _overrides(f)
    f.add_argument("--allow-unpinned", action="store_true",
                   help="accept a branch or tag for model.revision (default: main) and record the commit it points at")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_fetch)

    c = msub.add_parser("convert", help="the HF -> NeMo conversion job (model.hf_path -> model.restore_from_path) in the container")
    _overrides(c)
    c.add_argument("--dry-run", action="store_true", help="render the job and print it; submit nothing")
    c.add_argument("--force", action="store_true", help="convert even when model.restore_from_path already exists")
    c.add_argument("--gpus", type=int, default=0,
                   help="GPUs to request (default 0: the converter runs on the CPU; some partitions need a GPU request)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_convert)

    e = msub.add_parser(
        "export", help="a trained run -> an HF model folder (hf: merge the best LoRA adapter; nemo: merge.py + nemo_to_hf job)")
    e.add_argument("args", nargs="*", metavar="RUN|OVERRIDE",
                   help="a run (id prefix, job id or run directory; default: the latest run) and/or key=value overrides. "
                        "With --nemo: overrides composing the model (model=..., cluster=..., container=...)")
    e.add_argument("-o", "--output", required=True, metavar="OUT", help="the HF model folder to write")
    e.add_argument("--nemo", metavar="PATH",
                   help="export this .nemo instead of a run: a full model, or the base .nemo when --lora is given")
    e.add_argument("--lora", metavar="PATH", help="with --nemo: a LoRA .nemo to merge into the base first")
    e.add_argument("--dry-run", action="store_true",
                   help="hf: say what would be merged; nemo: render the export job and print it")
    e.add_argument("--force", action="store_true", help="replace OUT when it exists and is not empty")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_export)


# ----------------------------------------------------------------------------- fetch


def cmd_fetch(args) -> int:
    import json
    from pathlib import Path

    from hpc_ft.compose import compose_job
    from hpc_ft.errors import UserError
    from hpc_ft.models.fetch import MARKER, fetch_model, is_offline

    spec = compose_job(args.overrides)
    m = spec.model
    if not m.repo_id:
        how = " (it is built locally by the job: model.build=tiny)" if m.build else ""
        raise UserError(
            f"model={m.name} has no model.repo_id{how}; nothing to fetch. Pick a Hub model "
            "(e.g. model=elyza_llama2_7b) or set model.repo_id=ORG/NAME model.revision=<commit>"
        )
    if not m.hf_path:
        raise UserError(f"model.hf_path is not set for model={m.name}: where should the files go? Set model.hf_path=DIR")
    print(f"fetching {m.repo_id}@{m.revision or '(unpinned)'} into {m.hf_path}"
          + (" (offline: from the local cache)" if is_offline() else ""), file=sys.stderr)
    path = fetch_model(m.repo_id, m.revision, m.hf_path, token_env="HF_TOKEN", allow_unpinned=args.allow_unpinned)
    marker = {}
    try:
        marker = json.loads((Path(path) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    files = marker.get("files", [])
    commit = marker.get("commit", m.revision)
    if args.json:
        print(json.dumps({"repo_id": m.repo_id, "revision": m.revision, "commit": commit, "path": str(path),
                          "files": files}, indent=2))
        return 0
    print(f"{m.repo_id} at commit {commit}: {len(files)} files in {path}")
    if m.revision != commit:
        print(f"  pin it for the next time: model.revision={commit}")
    if spec.backend.name == "nemo" or m.restore_from_path:
        print("  next (nemo backend): hpc-ft model convert " + " ".join(args.overrides))
    return 0


# ----------------------------------------------------------------------------- convert


def cmd_convert(args) -> int:
    import os

    from hpc_ft.backends import nemo
    from hpc_ft.commands.common import print_launch, registry
    from hpc_ft.compose import compose_job
    from hpc_ft.errors import UserError
    from hpc_ft.submit.launch import container_image_problem, launch_steps

    spec = compose_job(args.overrides)
    m = spec.model
    if not m.restore_from_path:
        raise UserError(
            f"model.restore_from_path is not set for model={m.name}: the converter writes the .nemo there. "
            "Set model.restore_from_path=/path/to/model.nemo (the nemo model configs set it from model.hf_path)"
        )
    if not m.hf_path:
        raise UserError(f"model.hf_path is not set for model={m.name}: the converter reads the HF folder from there")
    if args.gpus < 0:
        raise UserError(f"--gpus={args.gpus}: give 0 or more")
    warnings = []
    problems = []
    if not os.path.isfile(os.path.join(m.hf_path, "config.json")):
        problems.append(f"model.hf_path={m.hf_path}: no config.json there; fetch the model first: "
                        "hpc-ft model fetch " + " ".join(args.overrides))
    if os.path.exists(m.restore_from_path) and not args.force:
        problems.append(f"model.restore_from_path={m.restore_from_path} already exists; pass --force to convert again")
    if spec.cluster.container_runtime == "none":
        warnings.append(f"cluster={spec.cluster.name} runs no container: the NeMo converter under /opt/NeMo must exist "
                        "on the node itself (pick a Singularity cluster profile and container=nemo_24.03)")
    else:
        problem = container_image_problem(
            spec, "container.image is not set; point it at the NeMo .sif (hpc-ft container build nemo-24.03)")
        if problem:
            problems.append(problem)
    if args.dry_run:
        warnings += problems
    elif problems:
        raise UserError(problems[0] + (f" (and {len(problems) - 1} more problem(s): run with --dry-run to see all)"
                                       if len(problems) > 1 else ""))
    launch = launch_steps(spec, "convert", lambda run_dir: nemo.convert_steps(spec), dry_run=args.dry_run,
                          registry=None if args.dry_run else registry(), gpus=args.gpus)
    print_launch(launch, warnings, dry_run=args.dry_run, as_json=args.json)
    if not args.dry_run and not args.json:
        print(f"  writes:  {m.restore_from_path}")
    return 0


# ----------------------------------------------------------------------------- export


def _split_args(items):
    """[RUN] [key=value ...]: the one item without '=' names the run."""
    from hpc_ft.errors import UserError

    runs = [a for a in items if "=" not in a]
    overrides = [a for a in items if "=" in a]
    if len(runs) > 1:
        raise UserError(f"model export: one run at a time, got {', '.join(runs)} (overrides are key=value)")
    return (runs[0] if runs else None), overrides


def _check_output(out, force: bool, dry_run: bool):
    from pathlib import Path

    from hpc_ft.errors import UserError

    p = Path(out).expanduser().resolve()
    if p.exists() and (not p.is_dir() or any(p.iterdir())) and not force and not dry_run:
        raise UserError(f"-o {p}: exists and is not empty; choose another folder or pass --force to replace it")
    return p


def hf_best_checkpoint(run_dir):
    """The best checkpoint of an hf run: <run>/checkpoints (trainer_state.json best_model_checkpoint, best/, ...)."""
    from pathlib import Path

    from hpc_ft.backends.hf_runtime.checkpoints import resolve_best_checkpoint
    from hpc_ft.errors import UserError

    ckpt = Path(run_dir) / "checkpoints"
    if not ckpt.is_dir():
        raise UserError(f"run {run_dir}: no checkpoints/ folder; did its training job run? (`hpc-ft status`, `hpc-ft logs`)")
    events = Path(run_dir) / "events.jsonl"
    try:
        return resolve_best_checkpoint(ckpt, events if events.is_file() else None)
    except UserError:
        raise UserError(
            f"run {run_dir}: no trained checkpoint in {ckpt} (no trainer_state.json best_model_checkpoint, best/ "
            "or checkpoint-N); did the training job finish? Check `hpc-ft status` and `hpc-ft logs`"
        ) from None


def task_labels_file(spec, run_dir, best):
    """labels.json of a classification/NER/preference run (beside the best checkpoint, else the run's data/)."""
    from pathlib import Path

    if spec.task.name == "sft":
        return None
    for candidate in (Path(best) / "labels.json", Path(run_dir) / "best" / "labels.json",
                      Path(run_dir) / "data" / "labels.json"):
        if candidate.is_file():
            return candidate
    return None


def task_head_kwargs(spec, run_dir, best) -> dict:
    """For a task run: merge into the AutoModelFor...Classification the run trained, with its labels."""
    import json

    from hpc_ft.errors import UserError
    from hpc_ft.tasks import task_def

    if spec.task.name == "sft":
        return {}
    labels_file = task_labels_file(spec, run_dir, best)
    if labels_file is None:
        raise UserError(f"run {run_dir}: no labels.json (data/ or beside the checkpoint); the head's label names are "
                        "needed to export it.")
    labels = json.loads(labels_file.read_text(encoding="utf-8"))["labels"]
    return {"auto_class": task_def(spec.task.name).auto_model,
            "model_kwargs": {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                             "label2id": {n: i for i, n in enumerate(labels)}}}


def _export_hf(row, spec, out, args) -> int:
    import json
    import shutil
    from pathlib import Path

    from hpc_ft.errors import UserError

    best = hf_best_checkpoint(row["run_dir"])
    base = Path(spec.model.hf_path)
    is_adapter = (best / "adapter_config.json").is_file()
    summary = {"run_id": row["run_id"], "backend": "hf", "checkpoint": str(best), "base": str(base),
               "output": str(out), "action": "merge_lora" if is_adapter else "copy", "dry_run": args.dry_run}
    if args.dry_run:
        if args.json:
            print(json.dumps(summary, indent=2))
        elif is_adapter:
            print(f"would merge the LoRA adapter {best}\n  into the base {base}\n  and save an HF model folder at {out}")
        else:
            print(f"would copy the full model checkpoint {best} to {out} (no adapter to merge)")
        return 0
    if is_adapter:
        from hpc_ft.models.convert import merge_lora

        merge_lora(base, best, out, overwrite=args.force, **task_head_kwargs(spec, row["run_dir"], best))
    else:
        if not (best / "config.json").is_file():
            raise UserError(f"{best}: neither an adapter (adapter_config.json) nor a model (config.json)")
        if out.exists():
            shutil.rmtree(out)
        skip = shutil.ignore_patterns("optimizer.pt", "scheduler.pt", "rng_state*.pth", "trainer_state.json",
                                      "training_args.bin", "scaler.pt")
        shutil.copytree(best, out, ignore=skip)
    labels = task_labels_file(spec, row["run_dir"], best)
    if labels is not None:
        shutil.copyfile(labels, out / "labels.json")  # the label names travel with the model
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"exported run {row['run_id']} ({'merged LoRA ' if is_adapter else ''}{best.name}) to {out}")
    return 0


def _has_gpus(spec) -> bool:
    return spec.cluster.gpu.request != "none" and int(spec.cluster.gpu.per_node) > 0


def _export_nemo_job(spec, commands, row, out, args) -> int:
    from hpc_ft.backends.launch import in_container
    from hpc_ft.commands.common import print_launch, registry
    from hpc_ft.render import Step
    from hpc_ft.submit.launch import launch_steps

    def make_steps(run_dir):
        names = ["merge", "export"] if len(commands) == 2 else ["export"]
        return [Step(n, in_container(spec, list(argv), gpus=_has_gpus(spec))) for n, argv in zip(names, commands)]

    # merge.py runs TP ranks (one GPU each); the HF export needs one GPU unless it was told --cpu-only
    gpus = (int(spec.model.tensor_model_parallel_size) if len(commands) == 2 else 1) if _has_gpus(spec) else 0
    launch = launch_steps(spec, "export", make_steps, row, dry_run=args.dry_run,
                          registry=None if args.dry_run else registry(), gpus=gpus)
    print_launch(launch, [], dry_run=args.dry_run, as_json=args.json)
    if not args.dry_run and not args.json:
        print(f"  writes:  {out}")
    return 0


def _export_nemo_run(row, spec, out, args) -> int:
    from hpc_ft.backends.nemo import exp_paths
    from hpc_ft.models.convert import export_commands

    from hpc_ft.models.convert import FULL_SCHEMES

    m = spec.model
    scheme = m.peft.peft_scheme
    trained = exp_paths(spec, row["run_dir"])["peft_nemo"]  # NeMo's final .nemo: the adapter, or the whole model without PEFT
    full = scheme in FULL_SCHEMES
    commands = export_commands(
        trained if full else m.restore_from_path, out, hf_reference_dir=m.hf_path, peft_scheme=None if full else scheme,
        peft_path=None if full else trained, family=m.family,
        tensor_parallel=m.tensor_model_parallel_size, pipeline_parallel=m.pipeline_model_parallel_size,
        precision="16", accelerator="gpu" if _has_gpus(spec) else "cpu", cpu_only=not _has_gpus(spec),
    )
    return _export_nemo_job(spec, commands, row, out, args)


def cmd_export(args) -> int:
    from pathlib import Path

    from hpc_ft.errors import UserError

    run_ref, overrides = _split_args(args.args)
    out = _check_output(args.output, args.force, args.dry_run)
    if args.nemo:
        if run_ref:
            raise UserError(f"model export: give a run ({run_ref}) or --nemo PATH, not both")
        from hpc_ft.compose import compose_job
        from hpc_ft.models.convert import export_commands

        spec = compose_job(overrides)
        m = spec.model
        if not m.hf_path:
            raise UserError(f"model.hf_path is not set for model={m.name}: the export needs the original HF folder "
                            "(its config and tokenizer)")
        if not args.dry_run and not Path(args.nemo).is_file():
            raise UserError(f"--nemo {args.nemo}: no such file")
        commands = export_commands(
            Path(args.nemo).expanduser().resolve(), out, hf_reference_dir=m.hf_path,
            peft_scheme="lora" if args.lora else None,
            peft_path=Path(args.lora).expanduser().resolve() if args.lora else None, family=m.family,
            tensor_parallel=m.tensor_model_parallel_size, pipeline_parallel=m.pipeline_model_parallel_size,
            precision="16", accelerator="gpu" if _has_gpus(spec) else "cpu", cpu_only=not _has_gpus(spec),
        )
        return _export_nemo_job(spec, commands, None, out, args)
    if args.lora:
        raise UserError("--lora goes with --nemo BASE.nemo; to export a run, give the run (its adapter is found there)")

    from hpc_ft.commands.common import resolve_run
    from hpc_ft.commands.evaluate import eval_spec_for_run

    row = resolve_run(run_ref)
    run_dir = Path(row["run_dir"])
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"run {run_dir}: no config.yaml, cannot tell its model; export with --nemo PATH and overrides")
    spec = eval_spec_for_run(run_dir, overrides)
    if spec.backend.name == "hf":
        return _export_hf(row, spec, out, args)
    if spec.backend.name == "nemo":
        return _export_nemo_run(row, spec, out, args)
    raise UserError(f"run {row['run_id']}: backend {spec.backend.name} has no export")
