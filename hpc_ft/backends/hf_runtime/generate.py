"""Greedy batched generation on a test split with the base model and/or the fine-tuned adapter; predictions jsonl and exact-match accuracy."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hpc_ft.data.spec import add_data_arguments
from hpc_ft.errors import UserError


@dataclass
class EvalResult:
    accuracy: float
    n: int
    predictions: Path
    seconds: float


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hpc_ft.backends.hf_runtime.generate",
        description="Greedy generation on the test rows rendered with the training template; writes {input, pred, label} "
                    "(input: the rendered prompt) and exact-match accuracy.",
    )
    p.add_argument("--model-dir", required=True, help="base model folder")
    p.add_argument("--adapter", default="none",
                   help="PATH (LoRA adapter or full fine-tuned model), auto:<training output dir> (its best "
                        "checkpoint, resolved now), or none (the base alone)")
    add_data_arguments(p, ("test",))  # --test-file F [F ...], --data-options (format, template)
    p.add_argument("--output", required=True, help="predictions jsonl {input, pred, label} to write")
    p.add_argument("--base-output", default=None, help="also evaluate the untuned base; its predictions go here")
    p.add_argument("--max-new-tokens", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--events", default=None, help="events file to append an eval_result event to")
    p.add_argument("--threads", type=int, default=None)
    return p


def exact_match(pred: str, label: str) -> bool:
    return pred.strip() == label.strip()


def resolve_adapter(spec: str, events_file: str | None) -> Path | None:
    """None for the base model; a folder for an adapter or a full model (auto:<dir> picks the best checkpoint)."""
    from hpc_ft.backends.hf_runtime.checkpoints import is_model_dir, resolve_best_checkpoint

    if spec in ("", "none"):
        return None
    if spec.startswith("auto:"):
        return resolve_best_checkpoint(spec[len("auto:"):], events_file)
    path = Path(spec).expanduser()
    if not (path.is_dir() and is_model_dir(path)):
        raise UserError(
            f"--adapter {spec}: no adapter_config.json or config.json there; pass a checkpoint folder, "
            "auto:<training output dir>, or none."
        )
    return path.resolve()


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_dir: str | Path, adapter: Path | None):
    """The base model, the base with a LoRA adapter, or a full fine-tuned model saved in `adapter`."""
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float32
    if device == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        return AutoModelForCausalLM.from_pretrained(adapter, dtype=dtype).to(device).eval()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model.eval()


def generate_answers(model, tokenizer, rendered: list, max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy decoding of each rendered example's prompt (encoded as in training), batched with left padding; the new text only."""
    import torch

    from hpc_ft.backends.hf_runtime.sft_data import encode_generation_prompt

    device = next(model.parameters()).device
    answers: list[str] = []
    for start in range(0, len(rendered), batch_size):
        encoded = [encode_generation_prompt(tokenizer, r) for r in rendered[start:start + batch_size]]
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids):] = 1
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
        for row in output[:, width:]:
            answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return answers


def evaluate(model, tokenizer, rows: list, output: Path, max_new_tokens: int, batch_size: int) -> EvalResult:
    """rows: rendered test examples (hpc_ft.data.templates.Rendered): the prompt as trained, the reference answer."""
    started = time.perf_counter()
    preds = generate_answers(model, tokenizer, rows, max_new_tokens, batch_size)
    output.parent.mkdir(parents=True, exist_ok=True)
    correct = 0
    with open(output, "w", encoding="utf-8") as handle:
        for row, pred in zip(rows, preds):
            correct += exact_match(pred, row.label)
            handle.write(json.dumps({"input": row.prompt, "pred": pred, "label": row.label}, ensure_ascii=False) + "\n")
    return EvalResult(correct / len(rows), len(rows), output.resolve(), time.perf_counter() - started)


def run(args: argparse.Namespace) -> dict:
    """Evaluate as the arguments say; returns the eval_result event (also appended to --events)."""
    from hpc_ft.backends.hf_runtime.events import EventLog, say
    from hpc_ft.backends.hf_runtime.sft_data import load_rendered
    from hpc_ft.data.spec import DataOptions

    if args.max_new_tokens < 1 or args.batch_size < 1:
        raise UserError(f"--max-new-tokens={args.max_new_tokens} --batch-size={args.batch_size}: both must be at least 1.")
    if not (Path(args.model_dir) / "config.json").is_file():
        raise UserError(f"--model-dir {args.model_dir}: no config.json there; fetch or build the model first.")
    adapter = resolve_adapter(args.adapter, args.events)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = load_tokenizer(args.model_dir)
    rows = [r for part in load_rendered(args.test_file, DataOptions.from_json(args.data_options), tokenizer,
                                        "--test-file") for r in part]
    base_result = None
    if args.base_output:
        base_model = load_model(args.model_dir, None)
        base_result = evaluate(base_model, tokenizer, rows, Path(args.base_output), args.max_new_tokens, args.batch_size)
        del base_model
        say(f"[eval] base model: exact match {base_result.accuracy:.1%} on {base_result.n} ({base_result.seconds:.1f} s)")
    result = evaluate(load_model(args.model_dir, adapter), tokenizer, rows, Path(args.output),
                      args.max_new_tokens, args.batch_size)
    label = "base model" if adapter is None else f"fine-tuned ({adapter})"
    say(f"[eval] {label}: exact match {result.accuracy:.1%} on {result.n} ({result.seconds:.1f} s)")
    return EventLog(args.events).write(
        "eval_result", accuracy=round(result.accuracy, 6),
        base_accuracy=round(base_result.accuracy, 6) if base_result else None, n=result.n,
        predictions=str(result.predictions), base_predictions=str(base_result.predictions) if base_result else None,
        adapter=str(adapter) if adapter else None,
    )


def main(argv: list[str] | None = None) -> int:
    from hpc_ft.backends.hf_runtime.events import eval_main

    return eval_main("generate", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
