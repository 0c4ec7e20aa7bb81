"""CLI: data prepare (JGLUE JCommonsenseQA or the synthetic set -> the instruction jsonl files a job reads)."""

from __future__ import annotations

import json
import os
import sys


def add_commands(sub) -> None:
    p = sub.add_parser("data", help="training data: prepare the jsonl files")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    dsub.required = True
    d = dsub.add_parser("prepare", help="convert data.source (a JGLUE checkout, or 'synthetic') into data.dir")
    d.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                   help="Hydra overrides, e.g. data.source=~/JGLUE work_dir=~/ex01 (default source: synthetic)")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> int:
    from hpc_ft.compose import compose_job
    from hpc_ft.errors import UserError
    from hpc_ft.submit.launch import prepare_data

    spec = compose_job(args.overrides)
    d = spec.data
    expected = {"train": d.train_file, "valid": d.validation_file, "test": d.test_file}
    if not d.source and all(os.path.isfile(f) for f in expected.values()):
        # nothing to convert from: report the files the jobs will read
        from hpc_ft.data.jcommonsenseqa import sha256_of

        verb = "already prepared (data.source is unset)"
        paths = {k: os.path.abspath(v) for k, v in expected.items()}
        rows = [{"split": k, "path": paths[k], "rows": _count_lines(paths[k]), "sha256": sha256_of(paths[k])}
                for k in ("train", "valid", "test")]
    else:
        prepared = prepare_data(spec)
        if prepared is None:
            raise UserError(f"data.source={d.source}: nothing was prepared")
        verb = f"prepared from {d.source}"
        paths = {k: str(v) for k, v in prepared.paths().items()}
        rows = [{"split": split, "path": paths[split], "rows": prepared.rows.get(split),
                 "sha256": prepared.sha256.get(split)} for split in ("train", "valid", "test")]
    if args.json:
        print(json.dumps({"source": d.source, "dir": d.dir, "files": rows}, indent=2, ensure_ascii=False))
    else:
        print(f"{d.name}: {verb}, in {d.dir}")
        width = max(len(r["path"]) for r in rows)
        for r in rows:
            print(f"  {r['split']:<5} {r['path']:<{width}}  {r['rows']:>6} rows  sha256 {r['sha256']}")
    keys = {"train": "train_file", "valid": "validation_file", "test": "test_file"}
    mismatch = [f"data.{keys[k]}={v}" for k, v in expected.items()
                if os.path.abspath(v) != os.path.abspath(str(paths[k]))]
    if mismatch:
        print(f"hpc-ft: warning: the job reads {', '.join(mismatch)}, not the files written above; "
              "set those keys to match (or leave them at their defaults under data.dir)",
              file=sys.stderr)
    return 0


def _count_lines(path: str) -> int:
    with open(path, encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())
