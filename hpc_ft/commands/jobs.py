"""CLI: train, eval, demo, status, runs, logs, watch, cancel, resume, plot."""

from __future__ import annotations

import argparse
import json
import sys

from hpc_ft.errors import UserError


def _overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                   help="Hydra overrides: key=value, group=option, +key=value, ~key, a=1,2 (with -m)")


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="compose, validate, render and submit a fine-tuning job")
    _overrides(p)
    p.add_argument("--dry-run", action="store_true", help="do everything but submit; print the sbatch script "
                                                          "(writes nothing unless --out)")
    p.add_argument("--out", metavar="DIR", help="with --dry-run: write the rendered run folder under DIR "
                                                "(DIR/<name>/<run_id>/) instead of nothing")
    p.add_argument("--force", action="store_true", help="submit even when the planner says it cannot fit")
    p.add_argument("-m", "--multirun", action="store_true", help="a sweep: one job array over all points")
    p.add_argument("--json", action="store_true", help="machine-readable output (with --dry-run -m: the points)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="the generate/eval job; or accuracy of a predictions jsonl")
    _overrides(p)
    p.add_argument("--run", help="evaluate this run's best checkpoint (default: compose from overrides)")
    p.add_argument("--predictions", help="compute accuracy of this predictions jsonl {input,pred,label} and show misses")
    p.add_argument("--dry-run", action="store_true", help="render the eval job and print it; submit nothing, "
                                                          "write nothing unless --out")
    p.add_argument("--out", metavar="DIR", help="with --dry-run: write the rendered run folder under DIR")
    p.add_argument("--misses", type=int, default=10, help="how many misses to show (default 10)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="the main job on the embedded default, end to end, with a report")
    _overrides(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("status", help="state, progress, losses, best checkpoint of a run (default: the latest of "
                                      "this work_dir); exit 0 only when it COMPLETED")
    p.add_argument("run", nargs="?", help="run id (a prefix is enough), run directory or job id")
    p.add_argument("--json", action="store_true")
    p.add_argument("--wait", action="store_true", help="block until the run ends")
    p.set_defaults(func=cmd_status)
    add_tracking_commands(sub)


def cmd_train(args) -> int:
    from hpc_ft.commands.common import print_launch, registry
    from hpc_ft.compose import compose_job
    from hpc_ft.submit.launch import launch_run
    from hpc_ft.submit.preflight import preflight

    if args.multirun:
        from hpc_ft.commands.sweep import cmd_sweep_train

        return cmd_sweep_train(args)
    spec = compose_job(args.overrides)
    warnings = preflight(spec, force=args.force, overrides=args.overrides)
    if args.out and not args.dry_run:
        raise UserError("--out DIR: only with --dry-run (a real run's folder is exp_manager.exp_dir/<name>/<run_id>).")
    launch = launch_run(spec, args.overrides, dry_run=args.dry_run, with_eval=bool(spec.eval),
                        registry=None if args.dry_run else registry(), out=args.out)
    print_launch(launch, warnings, dry_run=args.dry_run, as_json=args.json)
    return 0


def cmd_eval(args) -> int:
    from hpc_ft.commands.evaluate import run_eval

    return run_eval(args)


def cmd_demo(args) -> int:
    from hpc_ft.commands.demo import run_demo

    return run_demo(args.overrides)


def cmd_status(args) -> int:
    from hpc_ft.commands.common import registry, resolve_run
    from hpc_ft.track.status import format_status, run_status, wait_for_end

    from hpc_ft.track.outcome import UNDECIDED, exit_code_for

    row = resolve_run(args.run)
    reg = None if row.get("unregistered") else registry()
    st = wait_for_end(row, registry=reg) if args.wait else run_status(row, reg)
    undecided = st.pop("undecided", None)
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        print(format_status(st))
    if undecided:
        print(f"hpc-ft: run {st['run_id']}: cannot tell how it ends: {undecided}", file=sys.stderr)
        return UNDECIDED
    return exit_code_for(st.get("state"))  # 0 only for COMPLETED (docs/user-guide.md: exit codes)


def add_tracking_commands(sub) -> None:
    p = sub.add_parser("runs", help="registered runs, newest first")
    p.add_argument("--json", action="store_true")
    p.add_argument("--state", help="only runs in this state (e.g. RUNNING, COMPLETED, FAILED)")
    p.add_argument("--name", help="only runs whose name contains this")
    p.add_argument("--limit", type=int, default=None, help="at most this many rows")
    p.add_argument("--reconcile", action="store_true",
                   help="first find hpc-ft jobs that Slurm knows and no registry recorded (a submitting shell "
                        "that died right after sbatch) and record them here")
    p.add_argument("--since", type=float, default=7.0, metavar="DAYS",
                   help="with --reconcile: look at jobs that ended up to this many days ago (default 7)")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("logs", help="print a run's log (default: latest run)")
    p.add_argument("run", nargs="?")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing as the log grows, until the run ends")
    p.add_argument("-n", "--lines", type=int, default=None, help="only the last N lines")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("watch", help="a live progress bar: step, loss, val loss, s/step, ETA")
    p.add_argument("run", nargs="?")
    p.add_argument("--interval", type=float, default=2.0)
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("cancel", help="cancel a run's jobs (default: the latest run)")
    p.add_argument("run", nargs="?")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("resume", help="submit a run that ended early (timeout, node failure, cancel) again in its "
                                      "own run directory: it continues from its newest checkpoint")
    p.add_argument("run", nargs="?")
    p.add_argument("--force", action="store_true", help="submit again even when training already completed")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("plot", help="train/val loss of a run (or throughput of a sweep) to a PNG")
    p.add_argument("run", help="run id, run directory, or sweep id")
    p.add_argument("-o", "--output", required=True, help="the PNG file to write")
    p.set_defaults(func=cmd_plot)


def cmd_runs(args) -> int:
    from hpc_ft.commands.common import registry
    from hpc_ft.track.listing import format_runs, list_runs

    reg = registry()
    if args.reconcile:
        from hpc_ft.submit.reconcile import reconcile

        found = reconcile(reg, since_days=args.since)
        lost = [r for r in found if r.action == "not found"]
        for r in [r for r in found if r.action != "not found"] + lost[:3]:
            print(f"hpc-ft: reconcile: {r.line()}", file=sys.stderr)
        if len(lost) > 3:
            print(f"hpc-ft: reconcile: ... and {len(lost) - 3} more jobs whose run directory is gone", file=sys.stderr)
        if not found:
            print("hpc-ft: reconcile: every hpc-ft job Slurm knows is registered", file=sys.stderr)
    rows = list_runs(reg, state=args.state, name=args.name, limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        print(format_runs(rows))
    return 0


def cmd_logs(args) -> int:
    from hpc_ft.commands.common import resolve_run
    from hpc_ft.track.follow import follow_log, print_log

    row = resolve_run(args.run)
    if args.follow:
        return follow_log(row)
    return print_log(row, args.lines)


def cmd_watch(args) -> int:
    from hpc_ft.commands.common import resolve_run
    from hpc_ft.track.follow import watch

    return watch(resolve_run(args.run), interval=args.interval)


def cmd_cancel(args) -> int:
    from hpc_ft.commands.common import registry, resolve_run
    from hpc_ft.submit.control import cancel_run

    row = resolve_run(args.run)
    done = cancel_run(row, registry())
    print(f"run {row['run_id']}: cancelled {', '.join(done) if done else 'nothing (no job still queued or running)'}")
    return 0


def cmd_resume(args) -> int:
    from hpc_ft.commands.common import registry, resolve_run
    from hpc_ft.submit.control import resume_run

    row = resolve_run(args.run)
    jobs = resume_run(row, registry(), force=args.force)
    if args.json:
        print(json.dumps({"run_id": row["run_id"], "run_dir": row["run_dir"], "jobs": jobs}, indent=2))
    else:
        print(f"run {row['run_id']} resubmitted: {' '.join(f'{k}={v}' for k, v in jobs.items())}")
        print(f"  it continues from the newest checkpoint in {row['run_dir']}")
        print(f"  watch:   hpc-ft status {row['run_id']} [--wait]")
    return 0


def cmd_plot(args) -> int:
    """A run (id, dir, job id) or, when RUN names a sweep, the sweep's throughput chart."""
    from hpc_ft.commands.common import registry, resolve_run

    reg = registry()
    sweep = reg.get_sweep(args.run) if args.run else None
    if sweep is not None:
        from hpc_ft.sweep.plot import plot_sweep

        path = plot_sweep(sweep, args.output, reg)
    else:
        from hpc_ft.track.plot import plot_run

        path = plot_run(resolve_run(args.run), args.output)
    print(f"wrote {path}")
    return 0
