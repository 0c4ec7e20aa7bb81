"""CLI: `hpc-ft train -m` (a sweep) and sweep status|best (`hpc-ft plot SWEEP` draws one)."""

from __future__ import annotations

import json
import sys

from hpc_ft.errors import UserError


def add_commands(sub) -> None:
    p = sub.add_parser("sweep", help="a sweep's points: status table, fastest point")
    ssub = p.add_subparsers(dest="sweep_command", metavar="SUBCOMMAND")
    ssub.required = True
    s = ssub.add_parser("status", help="one row per point: TP, PP, MBS, GBS, state, s/step, tokens/s, peak memory, cause")
    s.add_argument("sweep", nargs="?", help="sweep id (a prefix is enough) or sweep directory (default: the latest)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
    b = ssub.add_parser("best", help="the fastest successful point (tokens/s; ties by s/step) and its overrides")
    b.add_argument("sweep", nargs="?", help="sweep id (a prefix is enough) or sweep directory (default: the latest)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_best)


def cmd_status(args) -> int:
    from hpc_ft.commands.common import registry
    from hpc_ft.sweep.status import format_sweep_status, resolve_sweep, sweep_status

    reg = registry()
    st = sweep_status(resolve_sweep(reg, args.sweep), reg)
    print(json.dumps(st, indent=2, ensure_ascii=False) if args.json else format_sweep_status(st))
    return 0


def cmd_best(args) -> int:
    from hpc_ft.commands.common import registry
    from hpc_ft.sweep.status import best_point, format_best, resolve_sweep, sweep_status

    reg = registry()
    st = sweep_status(resolve_sweep(reg, args.sweep), reg)
    best = best_point(st)
    print(json.dumps(best, indent=2, ensure_ascii=False) if args.json else format_best(st, best))
    return 0


def cmd_sweep_train(args) -> int:
    """`hpc-ft train -m ...`: returns as soon as the array is queued, printing the sweep id."""
    from hpc_ft.commands.common import registry
    from hpc_ft.executors import executor_named
    from hpc_ft.sweep.launch import format_points, label, launch_sweep

    launch = launch_sweep(args.overrides, dry_run=args.dry_run, force=args.force,
                          registry=None if args.dry_run else registry(), out=getattr(args, "out", None))
    for note in launch.notes:
        print(f"hpc-ft: warning: {note}", file=sys.stderr)
    records = [p.record() for p in launch.points]
    pruned = [p for p in launch.points if not p.kept]
    if not launch.kept:
        if args.json:
            print(json.dumps(records, indent=2, ensure_ascii=False))
        else:
            print(format_points(launch.points), file=sys.stderr)
        reasons = "; ".join(f"point {p.point.index}: {p.reason}" for p in pruned[:3])
        raise UserError(f"no point of the sweep can run ({len(pruned)} pruned): {reasons}. "
                        "`hpc-ft plan` with one point's overrides explains more; --force keeps planner-refused points.")
    if args.dry_run:
        if args.json:
            print(json.dumps(records, indent=2, ensure_ascii=False))
        else:
            sys.stdout.write(launch.array_text)
            print(format_points(launch.points), file=sys.stderr)
        where = (f"rendered {launch.sweep_dir}" if getattr(args, "out", None)
                 else "rendered, nothing written (--out DIR keeps the files)")
        print(f"hpc-ft: dry run: {where} ({len(launch.kept)} points, {len(pruned)} pruned; "
              "nothing submitted)", file=sys.stderr)
        return 0
    if args.json:
        print(json.dumps({"sweep_id": launch.sweep_id, "sweep_dir": str(launch.sweep_dir),
                          "array_job_id": launch.array_job_id, "executor": launch.executor,
                          "tasks": len(launch.kept), "pruned": len(pruned), "points": records}, indent=2,
                         ensure_ascii=False))
        return 0
    where = executor_named(launch.executor).where(launch.array_job_id, launch.parallelism)
    print(f"sweep {launch.sweep_id}: {len(launch.kept)} points submitted as {where}; "
          f"{len(pruned)} pruned by the planner")
    shown = 20
    for p in pruned[:shown]:
        print(f"  pruned point {p.point.index} ({label(p.point)}): {p.reason}")
    if len(pruned) > shown:
        print(f"  ... and {len(pruned) - shown} more pruned points (all of them: hpc-ft sweep status {launch.sweep_id})")
    print(f"  sweep dir: {launch.sweep_dir}")
    print(f"  status:    hpc-ft sweep status {launch.sweep_id}    best: hpc-ft sweep best {launch.sweep_id}")
    return 0
