"""Data preparers: write a data preset's files (data.dir) from data.source, one entry per preset kind (data.preparer)."""

from __future__ import annotations

import os
import random
from pathlib import Path

from hpc_ft.data import jcommonsenseqa as jc
from hpc_ft.errors import UserError, did_you_mean

ALPACA_FILES = {"train": "train.jsonl", "valid": "valid.jsonl", "test": "test.jsonl"}
ALPACA_INSTRUCTION = "次の説明に当てはまる言葉を一つ答えてください。"


def synthetic_alpaca_rows(n_rows: int, rng: random.Random) -> list[dict]:
    """Alpaca rows of the synthetic task (the JCommonsenseQA set's concepts): instruction, input = the description, output = the word."""
    rows = []
    for _ in range(n_rows):
        concept, answer = rng.choice(jc.SYNTHETIC_CONCEPTS)
        rows.append({"instruction": ALPACA_INSTRUCTION, "input": concept, "output": answer})
    return rows


def make_synthetic_alpaca(out_dir: str | Path, n_train: int, n_valid: int, n_test: int, seed: int) -> jc.PreparedData:
    for name, value in (("n_train", n_train), ("n_valid", n_valid), ("n_test", n_test)):
        if value < 1:
            raise UserError(f"data.synthetic.{name}={value}: a synthetic split needs at least one row; pass a positive count.")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    counts = {"train": n_train, "valid": n_valid, "test": n_test}
    paths = {}
    for split, count in counts.items():
        paths[split] = out / ALPACA_FILES[split]
        jc.write_jsonl(paths[split], synthetic_alpaca_rows(count, rng))
    return jc.PreparedData(train=paths["train"].resolve(), valid=paths["valid"].resolve(), test=paths["test"].resolve(),
                           rows=counts, sha256={k: jc.sha256_of(p) for k, p in paths.items()})


def _jcommonsenseqa(d) -> jc.PreparedData:
    if d.source == "synthetic":
        s = d.synthetic
        return jc.make_synthetic(d.dir, n_train=s.n_train, n_valid=s.n_valid, n_test=s.n_test, seed=d.seed)
    if not os.path.isdir(d.source):
        raise UserError(f"data.source={d.source}: no such directory. Point it at a JGLUE checkout.")
    return jc.convert_jglue(d.source, d.dir, seed=d.seed, n_valid=d.n_valid)


def _alpaca(d) -> jc.PreparedData:
    if d.source != "synthetic":
        raise UserError(f"data.source={d.source}: the alpaca preset prepares only 'synthetic'; put your own rows "
                        f"in {d.dir} (train.jsonl, valid.jsonl, test.jsonl) or set model.data.*_ds.file_names.")
    s = d.synthetic
    return make_synthetic_alpaca(d.dir, s.n_train, s.n_valid, s.n_test, d.seed)


PREPARERS = {"jcommonsenseqa": _jcommonsenseqa, "alpaca": _alpaca}


def prepare(d) -> jc.PreparedData:
    """Write data.dir from data.source with the preset's preparer."""
    if not d.source:
        raise UserError(
            f"data: {d.train_file} does not exist and data.source is not set. Run "
            "`hpc-ft data prepare data.source=<JGLUE checkout>`, set data.source=synthetic, "
            "or point model.data.*_ds.file_names at your files."
        )
    if d.preparer not in PREPARERS:
        raise UserError(f"data.preparer={d.preparer}: not one of {', '.join(PREPARERS)}.{did_you_mean(d.preparer, PREPARERS)}")
    return PREPARERS[d.preparer](d)


def preset_files_to_prepare(spec) -> list[str]:
    """The data preset's files (data.train_file, ...) that the job's file_names name and that do not exist yet.

    Files the user named are never prepared: only a preset's own (data.dir) are written from data.source."""
    d, md = spec.data, spec.model.data
    named = {str(f) for ds in (md.train_ds, md.validation_ds, md.test_ds) for f in ds.file_names}
    preset = [str(f) for f in (d.train_file, d.validation_file, d.test_file)]
    return [f for f in preset if f in named and not os.path.exists(f)]
