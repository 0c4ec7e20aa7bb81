"""CLI: container convert | build | verify | list | lint (the admin side of container images)."""

from __future__ import annotations

import argparse
import sys

BUILD_TIME = "04:00:00"


def _lock_and_dir(p: argparse.ArgumentParser, images_dir: bool = True) -> None:
    p.add_argument("--lock", metavar="FILE",
                   help="the image lock (default: images.lock in $HPC_FT_CONTAINERS_DIR, the checkout's containers/ "
                        "or the installed copy)")
    if images_dir:
        p.add_argument("--images-dir", default=".", metavar="DIR",
                       help="the folder holding the .sif files (default: the current directory)")


def add_commands(sub) -> None:
    p = sub.add_parser("container", help="container images: convert, build, verify, list, lint")
    csub = p.add_subparsers(dest="container_command", metavar="SUBCOMMAND")
    csub.required = True

    c = csub.add_parser("convert", help="Dockerfile -> Singularity definition (spython); a .def -> Dockerfile")
    c.add_argument("source", metavar="FILE", help="a Dockerfile (or a .def to convert back)")
    c.add_argument("-o", "--output", metavar="OUT", help="write here (default: print on stdout)")
    c.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    c.set_defaults(func=cmd_convert)

    b = csub.add_parser("build", help="build (from its recipe) or pull an image of the lock, here or as a Slurm job")
    b.add_argument("name", help="image name in the lock, e.g. nemo-24.03")
    b.add_argument("--dry-run", action="store_true",
                   help="print the commands (with --slurm: the job script); run nothing")
    b.add_argument("--slurm", nargs="*", metavar="OVERRIDE", default=None,
                   help="submit a Slurm job instead of running here; optional cluster overrides follow, so put "
                        "--slurm last (e.g. hpc-ft container build nemo-24.03 --slurm cluster=nig cluster.partition=gpu)")
    _lock_and_dir(b)
    b.add_argument("--runtime", choices=("singularity", "apptainer"),
                   help="default: the one installed here (apptainer first), else singularity")
    b.add_argument("--method", choices=("build", "pull"),
                   help="build from the recipe (default when the lock names one) or pull the registry image")
    b.add_argument("--force", action="store_true", help="replace an existing image file")
    b.add_argument("--docker-login", action="store_true",
                   help="let the runtime prompt for the registry password (interactive only; default: $NGC_API_KEY)")
    b.add_argument("--tmpdir", metavar="DIR", help="the runtime's TMPDIR and CACHEDIR (a NeMo image needs tens of GB)")
    b.add_argument("--time", default=BUILD_TIME, help=f"Slurm time limit of the build job (default {BUILD_TIME})")
    b.add_argument("--cpus", type=int, default=8, help="CPUs of the build job (default 8)")
    b.add_argument("--mem", default="64G", help="memory of the build job (default 64G)")
    b.set_defaults(func=cmd_build)

    v = csub.add_parser("verify", help="check an image against the lock: exists, size, sha256, %%test")
    v.add_argument("name", help="image name in the lock")
    _lock_and_dir(v)
    v.add_argument("--record", action="store_true",
                   help="write the measured size and sha256 into the lock (after a build or pull)")
    v.add_argument("--produced-by", choices=("build", "pull"),
                   help="with --record: how the image was made (default: as the lock says, else build when it has a recipe)")
    v.add_argument("--no-test", action="store_true", help="do not run the image's %%test")
    v.add_argument("--runtime", choices=("singularity", "apptainer"), help="runtime for %%test (default: the one installed)")
    v.set_defaults(func=cmd_verify)

    ls = csub.add_parser("list", help="recipes and images of the lock, with their lock status")
    _lock_and_dir(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    lt = csub.add_parser("lint", help="lint every recipe (parse, round trip, pinned tag, labels, %%test); exit 1 on problems")
    lt.add_argument("--dir", metavar="DIR", help="recipe folder (default: $HPC_FT_CONTAINERS_DIR, containers/ or the installed copy)")
    lt.set_defaults(func=cmd_lint)


# ----------------------------------------------------------------------------- convert


def cmd_convert(args) -> int:
    from hpc_ft.containers.convert import convert_definition, convert_dockerfile
    from hpc_ft.containers.recipes import is_dockerfile

    src = args.source
    if src.endswith(".def") and not is_dockerfile(src):
        text = convert_definition(src, args.output, force=args.force)
    else:
        text = convert_dockerfile(src, args.output, force=args.force)
    if args.output:
        print(f"wrote {args.output} (converted from {src} with spython; review it before building)")
    else:
        sys.stdout.write(text)
    return 0


# ----------------------------------------------------------------------------- build


def _default_runtime() -> str:
    from hpc_ft.containers.runtime import detect_runtime

    found = detect_runtime()
    return found if found != "none" else "singularity"


def _build_job(plan, args) -> str:
    """The build as a Slurm job script, with the partition/account/qos/modules of the composed cluster."""
    from hpc_ft.compose import compose_job
    from hpc_ft.containers.build import render_job_script
    from hpc_ft.errors import UserError

    spec = compose_job(args.slurm or [])
    c = spec.cluster
    from hpc_ft.executors import get_executor

    if not get_executor(spec).queues_jobs:
        raise UserError(
            f"cluster={c.name} has executor={c.executor}; a Slurm build job needs a Slurm profile, "
            "e.g. --slurm cluster=nig (list them with `hpc-ft cluster list`)"
        )
    extra = []
    if c.qos:
        extra.append(f"--qos={c.qos}")
    for k, val in c.sbatch_extra.items():
        extra.append(f"--{k}={val}" if val not in (None, "") else f"--{k}")
    return render_job_script(plan, time=args.time, cpus=args.cpus, mem=args.mem, partition=c.partition,
                             account=c.account, extra_sbatch=extra, modules=list(c.modules), setup=list(c.setup))


def cmd_build(args) -> int:
    from pathlib import Path

    from hpc_ft.containers.build import plan_build, render_commands, run_build
    from hpc_ft.errors import UserError

    plan = plan_build(args.name, args.lock, args.images_dir, runtime=args.runtime or _default_runtime(),
                      method=args.method, login="prompt" if args.docker_login else "env", force=args.force,
                      tmpdir=args.tmpdir)
    if args.slurm is not None:
        text = _build_job(plan, args)
        if args.dry_run:
            sys.stdout.write(text)
            print(f"hpc-ft: dry run: build job for '{plan.name}' (nothing submitted)", file=sys.stderr)
            return 0
        from hpc_ft.executors import slurm as executors

        plan.sif.parent.mkdir(parents=True, exist_ok=True)
        script = plan.sif.parent / f"build-{plan.name}.sbatch"
        script.write_text(text, encoding="utf-8")
        executors.test_only(script)
        sub = executors.submit_slurm(text, plan.sif.parent / ".hpc-ft-build" / plan.name)
        print(f"build job {sub.job_id} submitted for image '{plan.name}' ({plan.method} with {plan.runtime})")
        print(f"  script: {script}")
        print(f"  log:    {plan.sif.parent / f'build-{plan.name}-{sub.job_id}.out'}")
        print(f"  then:   hpc-ft container verify {plan.name} --images-dir {plan.sif.parent} --record"
              + (f" --lock {args.lock}" if args.lock else ""))
        return 0
    if args.dry_run:
        sys.stdout.write(render_commands(plan))
        return 0
    rc = run_build(plan)
    if rc != 0:
        raise UserError(f"{plan.method} of image '{plan.name}' failed (exit {rc}); see the runtime's output above")
    size = Path(plan.sif).stat().st_size if plan.sif.is_file() else 0
    print(f"built {plan.sif} ({size} bytes)")
    print(f"  record it in the lock: hpc-ft container verify {plan.name} --images-dir {plan.sif.parent} --record"
          + (f" --lock {args.lock}" if args.lock else ""))
    return 0


# ----------------------------------------------------------------------------- verify


_MARK = {"ok": "ok", "fail": "FAIL", "skipped": "skip"}


def _produced_by(entry, chosen):
    if chosen:
        return chosen
    if entry.produced_by:
        return entry.produced_by
    return "build" if entry.recipe else "pull"


def cmd_verify(args) -> int:
    from hpc_ft.containers.lock import load_lock
    from hpc_ft.containers.verify import record_image, verify_image
    from hpc_ft.errors import UserError

    lock = load_lock(args.lock)
    entry = lock.get(args.name)
    result = verify_image(args.name, lock, args.images_dir, runtime=args.runtime, run_test=not args.no_test)
    print(f"image {args.name}: {result.path}")
    for check in result.checks:
        print(f"  [{_MARK.get(check.status, check.status):<4}] {check.name:<7} {check.detail}")
    if not args.record:
        print(f"{args.name}: {'OK' if result.ok else 'FAILED'}")
        return 0 if result.ok else 1
    blocking = [c for c in result.checks if c.name in ("exists", "test") and c.status == "fail"]
    if blocking:
        print(f"{args.name}: FAILED; not recorded in {lock.path} ({', '.join(c.name for c in blocking)} failed)")
        return 1
    produced_by = _produced_by(entry, args.produced_by)
    try:
        updated = record_image(args.name, lock, args.images_dir, produced_by, measured=result)
    except OSError as exc:
        raise UserError(
            f"cannot write {lock.path} ({exc.strerror}); copy it somewhere writable and pass --lock FILE "
            "(or set HPC_FT_CONTAINERS_DIR to a writable copy of the recipe folder)"
        ) from None
    new = updated.images[args.name]
    replaced = entry.sha256 is not None and entry.sha256 != new.sha256
    print(f"recorded {args.name} in {lock.path}: size_bytes={new.size_bytes} sha256={new.sha256} produced_by={produced_by}"
          + (f" (replaced {entry.sha256})" if replaced else ""))
    return 0


# ----------------------------------------------------------------------------- list, lint


def _status(entry) -> str:
    if entry.sha256 is None:
        return "unset (not built or recorded yet)"
    gib = entry.size_bytes / 2**30 if entry.size_bytes is not None else 0
    return f"recorded {entry.produced_by or '?'}: {gib:.1f} GiB sha256 {entry.sha256[:12]}…"


def cmd_list(args) -> int:
    import json
    from pathlib import Path

    from hpc_ft.containers.lock import load_lock
    from hpc_ft.containers.recipes import list_recipes

    lock = load_lock(args.lock)
    recipes = list_recipes(lock.path.parent)
    images_dir = Path(args.images_dir).expanduser()
    rows = []
    for name in sorted(lock.images):
        e = lock.images[name]
        rows.append({"name": name, "recipe": e.recipe, "source": e.source, "sif": e.sif,
                     "size_bytes": e.size_bytes, "sha256": e.sha256, "produced_by": e.produced_by,
                     "present": (images_dir / e.sif).is_file()})
    in_lock = {e.recipe for e in lock.images.values() if e.recipe}
    extra = [r.name for r in recipes if r.name not in in_lock]
    if args.json:
        print(json.dumps({"lock": str(lock.path), "images_dir": str(images_dir), "images": rows,
                          "recipes": [r.name for r in recipes], "recipes_not_in_lock": extra}, indent=2))
        return 0
    print(f"lock: {lock.path}")
    table = [("NAME", "RECIPE", "SOURCE", "HERE", "LOCK")] + [
        (r["name"], r["recipe"] or "(pull)", r["source"], "yes" if r["present"] else "no", _status(lock.images[r["name"]]))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])
    if extra:
        print(f"recipes not in the lock: {', '.join(extra)} "
              f"(variants or sources of another; `hpc-ft container build` builds lock entries only)")
    print(f"('HERE': the .sif is in {images_dir}; pass --images-dir DIR to look elsewhere)")
    return 0


def cmd_lint(args) -> int:
    from hpc_ft.containers.recipes import lint_recipe, list_recipes, recipes_dir

    folder = args.dir or recipes_dir()
    recipes = list_recipes(folder)
    bad = 0
    for path in recipes:
        problems = lint_recipe(path)
        if problems:
            bad += 1
            print(f"{path.name}: {len(problems)} problem(s)")
            for p in problems:
                print(f"  [{p.rule}] {p.message}")
        else:
            print(f"{path.name}: ok")
    if bad:
        print(f"{bad} of {len(recipes)} recipes have problems ({folder})")
        return 1
    print(f"all {len(recipes)} recipes are clean ({folder})")
    return 0
