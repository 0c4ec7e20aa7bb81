"""How long the submit-time data checks take on a 100,000-row jsonl file: read (datasets), recognise, render, count tokens, summarise.

Target: <= 2 s for the checks and the length summary (hpc_ft.data.checks.check_job_data) on 100,000
alpaca rows, with the model's tokenizer.json counting tokens. The baseline, measured in the same run,
is the least any check can do: json.loads of every line. Prints figures; asserts nothing.

    python bench/bench_data_checks.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpc_ft.data.jcommonsenseqa import SYNTHETIC_CONCEPTS  # noqa: E402

TARGET_S = 2.0


def write_rows(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            concept, answer = rng.choice(SYNTHETIC_CONCEPTS)
            detail = "、".join(rng.choice(SYNTHETIC_CONCEPTS)[0] for _ in range(rng.randint(0, 3)))
            row = {"instruction": "次の説明に当てはまる言葉を一つ答えてください。", "input": f"{concept}。{detail}（{i}）",
                   "output": answer}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_tokenizer(model_dir: Path, sample: Path) -> None:
    """A byte-level BPE tokenizer.json trained on the rows (what a model folder holds)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = sample.read_text(encoding="utf-8").splitlines()[:5000]
    tokenizer.train_from_iterator(lines, trainer=trainer)
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(model_dir / "tokenizer.json"))


def baseline(path: Path) -> float:
    started = time.perf_counter()
    with open(path, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    assert rows
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from hpc_ft.compose import compose_job
    from hpc_ft.data.checks import check_job_data

    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        work = Path(tmp)
        train, valid = work / "train.jsonl", work / "valid.jsonl"
        write_rows(train, args.rows)
        write_rows(valid, 100, seed=1)
        write_tokenizer(work / "model", train)
        spec = compose_job([f"work_dir={work}", "template=alpaca-ja", "model.build=null", f"model.hf_path={work / 'model'}",
                            f"model.data.train_ds.file_names=[{train}]", f"model.data.validation_ds.file_names=[{valid}]",
                            "model.data.test_ds.file_names=[]"])
        t0 = time.perf_counter()
        import datasets  # noqa: F401 - the import is paid once per submit; shown on its own
        import_s = time.perf_counter() - t0
        check_job_data(spec, dry_run=False, notes=[])  # warm: file system cache, tokenizer load code paths
        times, base = [], []
        for _ in range(args.repeat):
            base.append(baseline(train))
            started = time.perf_counter()
            report = check_job_data(spec, dry_run=False, notes=[])
            lines = report.summary_lines()
            times.append(time.perf_counter() - started)
        checks, floor = statistics.median(times), statistics.median(base)
        size_mb = train.stat().st_size / 1e6
    print(f"data checks + length summary, {args.rows:,} alpaca rows ({size_mb:.1f} MB jsonl), template alpaca-ja, "
          f"tokenizer.json: median {checks:.2f} s over {args.repeat} runs (min {min(times):.2f} s)")
    print(f"baseline json.loads of every line: median {floor:.2f} s; ratio checks/baseline {checks / floor:.2f}")
    print(f"import datasets (once per submit, not in the figure above): {import_s:.2f} s")
    print("summary as shown at submit:")
    for line in lines:
        print("  " + line)
    print(f"target: <= {TARGET_S:.1f} s -> {'met' if checks <= TARGET_S else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
