"""The hf demo end to end in one process: make_synthetic -> tiny_model -> train -> generate (with the base), printing the figures.

    HF_HUB_OFFLINE=1 python bench/hf_demo_pipeline.py [--seed 0] [--threads 1] [--work-dir DIR] [--keep]
        [--n-train 600 --n-valid 100 --n-test 200] [--train-arg=--lr=5e-3 ...] [--model-arg=--hidden=64 ...]

Prints wall time per stage, val loss first/best, the step early stopping fired at, and the
exact-match accuracy of the untuned base and of the fine-tuned adapter on the held-out test split.
The defaults below are the demo's; a last FIGURES line holds them all as JSON.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

_started = time.perf_counter()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpc_ft.data.jcommonsenseqa import make_synthetic  # noqa: E402

# The demo defaults: small enough for 2 CPU cores, large enough for a clear learning signal.
DEMO_DATA = {"n_train": 600, "n_valid": 100, "n_test": 200}
DEMO_MODEL = ["--hidden", "64", "--layers", "2", "--heads", "4", "--intermediate", "176", "--vocab-size", "1000",
              "--warmup-steps", "100", "--echo-steps", "300"]
DEMO_TRAIN = ["--max-steps", "2000", "--eval-steps", "25", "--patience", "3", "--min-delta", "0.001",
              "--micro-batch-size", "8", "--global-batch-size", "8", "--lr", "5e-3", "--peft", "lora",
              "--lora-r", "16", "--lora-alpha", "32", "--lora-dropout", "0.0", "--lora-targets", "all-linear",
              "--max-seq-length", "128", "--precision", "32"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the model and the training")
    p.add_argument("--work-dir", default=None, help="where to write (default: a temporary folder, removed after)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1 is as fast as 2 for this model size and much faster on a busy machine)")
    for split, n in DEMO_DATA.items():
        p.add_argument(f"--{split.replace('_', '-')}", type=int, default=n, help=f"synthetic rows (default {n})")
    p.add_argument("--train-arg", action="append", default=[], help="extra train.py argument, e.g. --train-arg=--lr=5e-3")
    p.add_argument("--model-arg", action="append", default=[], help="extra tiny_model argument")
    return p.parse_args()


def run_pipeline(work: Path, seed: int, train_extra: list[str], model_extra: list[str], threads: int,
                 sizes: dict) -> dict:
    figures: dict = {}
    t0 = time.perf_counter()
    data = make_synthetic(work / "data", seed=seed, **sizes)
    figures["data_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    for heavy in ("torch", "transformers", "peft", "transformers.trainer"):  # so the stages below exclude imports
        importlib.import_module(heavy)
    from hpc_ft.backends.hf_runtime import generate, tiny_model, train

    figures["import_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if tiny_model.main(["--data-dir", str(work / "data"), "--output", str(work / "model"), "--seed", str(seed),
                        "--threads", str(threads), *DEMO_MODEL, *model_extra]):
        raise SystemExit("tiny_model failed")
    figures["model_s"] = time.perf_counter() - t0

    events = work / "events.jsonl"
    t0 = time.perf_counter()
    if train.main(["--model-dir", str(work / "model"), "--train-file", str(data.train), "--valid-file",
                   str(data.valid), "--output-dir", str(work / "checkpoints"), "--events", str(events),
                   "--seed", str(seed), "--threads", str(threads), *DEMO_TRAIN, *train_extra]):
        raise SystemExit("train failed")
    figures["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = generate.run(generate.build_parser().parse_args([
        "--model-dir", str(work / "model"), "--adapter", f"auto:{work / 'checkpoints'}", "--test-file",
        str(data.test), "--output", str(work / "predictions" / "test.jsonl"), "--base-output",
        str(work / "predictions" / "test_base.jsonl"), "--events", str(events), "--threads", str(threads),
    ]))
    figures["generate_s"] = time.perf_counter() - t0

    all_events = [json.loads(line) for line in events.read_text(encoding="utf-8").splitlines()]
    evals = [e for e in all_events if e["kind"] == "eval"]
    end = next(e for e in all_events if e["kind"] == "end")
    figures.update(
        val_loss_first=evals[0]["val_loss"], val_loss_best=end["best_val_loss"], stop_reason=end["reason"],
        stop_step=end["step"], best_checkpoint=Path(end["best_checkpoint"]).name, peak_rss_mb=end["peak_rss_mb"],
        base_accuracy=result["base_accuracy"], accuracy=result["accuracy"], n_test=result["n"],
    )
    return figures


def main() -> int:
    args = parse_args()
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="hf-demo-"))
    try:
        sizes = {split: getattr(args, split) for split in DEMO_DATA}
        figures = run_pipeline(work, args.seed, args.train_arg, args.model_arg, args.threads, sizes)
    finally:
        if not args.work_dir and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    figures["total_s"] = time.perf_counter() - _started
    print("\n== hf demo pipeline (seed %d) ==" % args.seed)
    print(f"stages (s): data {figures['data_s']:.1f} | imports {figures['import_s']:.1f} | tiny model "
          f"{figures['model_s']:.1f} | train {figures['train_s']:.1f} | generate {figures['generate_s']:.1f} | "
          f"total incl. startup {figures['total_s']:.1f}")
    print(f"val_loss {figures['val_loss_first']:.4f} (first eval) -> {figures['val_loss_best']:.4f} (best, "
          f"{figures['best_checkpoint']}); stopped by {figures['stop_reason']} at step {figures['stop_step']}")
    print(f"exact match on {figures['n_test']} test rows: base {figures['base_accuracy']:.1%} -> "
          f"fine-tuned {figures['accuracy']:.1%} (+{(figures['accuracy'] - figures['base_accuracy']) * 100:.1f} points)")
    print("FIGURES " + json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in figures.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
