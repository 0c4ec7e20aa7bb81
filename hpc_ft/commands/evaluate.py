"""`hpc-ft eval`: render/submit the eval job of a run, or score a predictions jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from hpc_ft.errors import UserError


def _score(path: str, misses: int, as_json: bool) -> int:
    from hpc_ft.track.accuracy import score_predictions

    res = score_predictions(path)
    if as_json:
        print(json.dumps({"n": res.n, "correct": res.correct, "accuracy": res.accuracy,
                          "misses": [m.__dict__ if hasattr(m, "__dict__") else m for m in res.misses[:misses]]},
                         ensure_ascii=False, indent=2))
        return 0
    if not res.n:
        raise UserError(f"{path}: no predictions in the file. Check the eval job's log (`hpc-ft logs`).")
    print(f"accuracy {res.accuracy:.1%} ({res.correct}/{res.n}) on {path}")
    for m in res.misses[:misses]:
        d = m.__dict__ if hasattr(m, "__dict__") else m
        print(f"  miss: pred={d['pred']!r} label={d['label']!r}  | {d['input'][-60:]!r}")
    if len(res.misses) > misses:
        print(f"  ... {len(res.misses) - misses} more misses")
    return 0


#: groups an eval of a run may switch (where and in what it runs); the others would change what was trained
EVAL_GROUPS = ("cluster", "container")


def _split_group_overrides(overrides):
    """(group, option) pairs (`cluster=slurm_local`) and the key=value overrides, for an eval of a run."""
    from hpc_ft.compose.compose import GROUPS

    groups, dotlist = [], []
    for o in overrides:
        key, _, value = o.partition("=")
        if key in GROUPS:
            if key not in EVAL_GROUPS:
                raise UserError(f"{o}: an eval of a run keeps the run's {key}; only "
                                f"{', '.join(g + '=' for g in EVAL_GROUPS)} and key=value overrides apply.")
            groups.append((key, value))
        else:
            dotlist.append(o)
    return groups, dotlist


def eval_spec_for_run(run_dir: Path, overrides):
    """The training run's resolved config with eval-time overrides; TP/PP must stay the training's."""
    from hpc_ft.compose.compose import load_group_option, schema_config
    from hpc_ft.compose.checks import check_spec

    train = OmegaConf.load(run_dir / "config.yaml")
    spec = OmegaConf.merge(schema_config(), train)
    groups, dotlist = _split_group_overrides(overrides)
    try:
        for group, option in groups:
            spec = OmegaConf.merge(spec, {group: load_group_option(group, option)})
        spec = OmegaConf.merge(spec, OmegaConf.from_dotlist(dotlist))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - shown to the user as a config error
        raise UserError(f"eval overrides: {str(exc).splitlines()[0]}") from None
    check_spec(spec)
    for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
        if spec.model[key] != train.model[key]:
            raise UserError(
                f"model.{key}={spec.model[key]}: PEFT evaluation must use the training value "
                f"{train.model[key]} (NeMo asserts it). Drop the override or set model.{key}={train.model[key]}."
            )
    return spec


def _check_adapter_named(spec) -> None:
    """An eval job without --run has no training run of its own: NeMo needs the adapter named, and a task's
    head, labels and prepared test split live in its training run."""
    if spec.task.name != "sft":
        raise UserError(
            f"task={spec.task.name}: an eval without --run has no trained head or label list to score with; "
            "evaluate the training run with `hpc-ft eval --run RUN` (or train with eval=true).")
    if spec.backend.name == "nemo" and spec.model.peft.peft_scheme not in (None, "none") \
            and not spec.model.peft.restore_from_path:
        raise UserError(
            "model.peft.restore_from_path: not set, and without --run there is no training run whose adapter to "
            "load. Evaluate a run with `hpc-ft eval --run RUN`, or set model.peft.restore_from_path=<adapter .nemo>."
        )


def run_eval(args) -> int:
    from hpc_ft.commands.common import print_launch, registry, resolve_run
    from hpc_ft.compose import compose_job
    from hpc_ft.submit.launch import launch_eval

    if args.predictions:
        return _score(args.predictions, args.misses, args.json)
    if args.run:
        row = resolve_run(args.run)
        spec = eval_spec_for_run(Path(row["run_dir"]), args.overrides)
        launch = launch_eval(spec, row, dry_run=args.dry_run, registry=None if args.dry_run else registry(),
                             out=args.out)
    else:
        spec = compose_job(args.overrides)
        _check_adapter_named(spec)
        launch = launch_eval(spec, None, dry_run=args.dry_run, registry=None if args.dry_run else registry(),
                             out=args.out)
    print_launch(launch, [], dry_run=args.dry_run, as_json=args.json)
    return 0
