"""The `hpc-ft` command line: subcommands registered from each area's `commands` module."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from hpc_ft.errors import UserError

# Each module exposes `add_commands(subparsers)`; handlers are set with `set_defaults(func=...)`
# and return an exit code. Modules must keep their top-level imports light (startup time is
# benchmarked): import heavy libraries inside the handlers.
COMMAND_MODULES = (
    "hpc_ft.commands.jobs",       # train, eval, demo, status, runs, logs, watch, cancel, plot
    "hpc_ft.commands.plan",       # plan
    "hpc_ft.commands.sweep",      # sweep status|best
    "hpc_ft.commands.data",       # data prepare
    "hpc_ft.commands.model",      # model fetch|convert|build|export
    "hpc_ft.commands.container",  # container convert|build|verify
    "hpc_ft.commands.cluster",    # cluster check
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpc-ft",
        description="Fine-tune LLMs on Slurm from a few Hydra overrides, and watch the runs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # an area not built yet must not break the others
            if exc.name == name:
                continue
            raise
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"hpc-ft: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("hpc-ft: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `hpc-ft ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
