"""CLI: sweep status|best (a sweep is started with `hpc-ft train -m ...`; `hpc-ft plot SWEEP` draws it)."""

from __future__ import annotations

import json


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
