"""Score a classification, NER or preference model on the test split, the untuned base (same seeded head) beside it; predictions jsonl and an eval_result event with the metrics.

Predictions: classification {text, pred, label, probs}; preference {prompt, pred, label, probs} with
probs over a, b, tie; NER {tokens, pred, tags} with one predicted tag per whole token.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hpc_ft.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hpc_ft.backends.hf_runtime.task_eval",
                                description="Evaluate a task model on prepared test rows; predictions and metrics.")
    p.add_argument("--task", required=True, choices=["classification", "token_classification", "preference"])
    p.add_argument("--model-dir", required=True, help="base model folder")
    p.add_argument("--adapter", default="auto", help="auto:<training output dir>, a checkpoint folder, or none")
    p.add_argument("--labels-file", required=True)
    p.add_argument("--test-file", required=True)
    p.add_argument("--output", required=True, help="predictions jsonl of the fine-tuned model")
    p.add_argument("--base-output", default=None, help="also score the untuned base; its predictions go here")
    p.add_argument("--max-seq-length", type=int, default=512)
    p.add_argument("--overlong", default="truncate", choices=["truncate", "split", "refuse"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=42, help="the training seed: the untuned head is initialised with it")
    p.add_argument("--events", default=None)
    p.add_argument("--threads", type=int, default=None)
    return p


def load_for_eval(args, labels: list[str], adapter: Path | None):
    """The untuned base + seeded head (adapter None), a full fine-tuned model, or base + head + LoRA adapter."""
    from hpc_ft.backends.hf_runtime.task_train import auto_class, load_task_model

    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        return auto_class(args.task).from_pretrained(adapter).eval()
    model = load_task_model(args.model_dir, args.task, labels, "none", None, args.seed)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model.eval()


def logits_of(model, tokenizer, task: str, examples: list[dict], batch_size: int) -> list:
    """Per example: the logits (numpy), [classes] or [positions, tags]."""
    import torch

    from hpc_ft.backends.hf_runtime.task_data import collator

    collate = collator(task, tokenizer)
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = collate([dict(e) for e in chunk])
        batch.pop("labels")
        with torch.no_grad():
            logits = model(**batch).logits.float().numpy()
        for row, example in zip(logits, chunk):
            out.append(row[: len(example["input_ids"])] if task == "token_classification" else row)
    return out


def score(args, model, tokenizer, rows: list[dict], labels: list[str], output: Path) -> dict:
    import numpy as np

    from hpc_ft.backends.hf_runtime.task_data import ENCODERS, IGNORE_INDEX
    from hpc_ft.backends.hf_runtime.task_metrics import entity_metrics, sequence_metrics, softmax

    encoded = ENCODERS[args.task](tokenizer, rows, labels, args.max_seq_length, args.overlong)
    logits = logits_of(model, tokenizer, args.task, encoded.examples, args.batch_size)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", encoding="utf-8") as handle:
        if args.task == "token_classification":
            preds: list[list[str]] = [[] for _ in rows]
            for (row, _first, _end), example, lg in zip(encoded.pieces, encoded.examples, logits):
                keep = np.asarray(example["labels"]) != IGNORE_INDEX  # each word's first subword, in order
                preds[row].extend(labels[i] for i in lg.argmax(-1)[keep])
            for row, pred in zip(rows, preds):
                handle.write(json.dumps({"tokens": row["tokens"], "pred": pred, "tags": row["tags"]},
                                        ensure_ascii=False) + "\n")
            return entity_metrics(preds, [row["tags"] for row in rows])
        stacked = np.stack(logits)
        gold = np.asarray([e["labels"] for e in encoded.examples])
        probs = softmax(stacked.astype(np.float64))
        key = "text" if args.task == "classification" else "prompt"
        for row, p in zip(rows, probs):
            handle.write(json.dumps({key: row[key], "pred": labels[int(p.argmax())], "label": row["label"],
                                     "probs": {name: round(float(v), 6) for name, v in zip(labels, p)}},
                                    ensure_ascii=False) + "\n")
        return sequence_metrics(stacked, gold, len(labels))


def run(args: argparse.Namespace) -> dict:
    from hpc_ft.backends.hf_runtime.events import EventLog, say
    from hpc_ft.backends.hf_runtime.generate import resolve_adapter
    from hpc_ft.backends.hf_runtime.task_data import read_labels, read_rows

    if not (Path(args.model_dir) / "config.json").is_file():
        raise UserError(f"--model-dir {args.model_dir}: no config.json there; build or fetch the model first.")
    adapter = resolve_adapter(args.adapter, args.events)
    labels = read_labels(args.labels_file)
    rows = read_rows(args.test_file, "--test-file")
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = None
    if args.base_output:
        started = time.perf_counter()
        base = score(args, load_for_eval(args, labels, None), tokenizer, rows, labels, Path(args.base_output))
        say(f"[eval] untuned base: {_summary(base)} on {len(rows)} ({time.perf_counter() - started:.1f} s)")
    started = time.perf_counter()
    tuned = score(args, load_for_eval(args, labels, adapter), tokenizer, rows, labels, Path(args.output))
    say(f"[eval] fine-tuned ({adapter}): {_summary(tuned)} on {len(rows)} ({time.perf_counter() - started:.1f} s)")
    metrics_file = Path(args.output).with_name("metrics.json")
    metrics_file.write_text(json.dumps({"task": args.task, "n": len(rows), "metrics": tuned, "base_metrics": base},
                                       indent=2) + "\n", encoding="utf-8")
    return EventLog(args.events).write(
        "eval_result", task=args.task, accuracy=round(tuned["accuracy"], 6),
        base_accuracy=round(base["accuracy"], 6) if base else None, metrics=_rounded(tuned),
        base_metrics=_rounded(base) if base else None, n=len(rows), predictions=str(Path(args.output).resolve()),
        base_predictions=str(Path(args.base_output).resolve()) if args.base_output else None,
        adapter=str(adapter) if adapter else None)


def _rounded(metrics: dict) -> dict:
    return {k: round(float(v), 6) for k, v in metrics.items()}


def _summary(metrics: dict) -> str:
    return " ".join(f"{k} {metrics[k]:.4f}" for k in ("accuracy", "precision", "recall", "f1", "log_loss") if k in metrics)


def main(argv: list[str] | None = None) -> int:
    from hpc_ft.backends.hf_runtime.events import eval_main

    return eval_main("task_eval", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
