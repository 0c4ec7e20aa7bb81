"""Training throughput of our train.py code path against a plain transformers Trainer script doing the same training.

    HF_HUB_OFFLINE=1 python bench/bench_hf_throughput.py [--repeats 5] [--steps 300] [--threads 2]

Same tiny model, data, LoRA, batch, schedule and steps, no evaluation inside the measured window; the
two alternate in one process. Each run is timed from its train log at --skip-steps to its last train log
(both log every 5 steps: ours through its events file, the plain one through a two-line callback), so
start-up, the final evaluation and saving are outside the window. Prints steps/s and tokens/s per
repeat, the medians, and the ratio ours/plain (target >= 0.95).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LOG_EVERY = 5


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--skip-steps", type=int, default=20, help="steps before the window opens")
    p.add_argument("--micro-batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; 1 keeps a shared 2-core machine from turning thread contention into noise")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lora-targets", default="q_proj,v_proj")
    return p.parse_args()


def window(times: dict[int, float], skip: int, last: int) -> float:
    return times[last] - times[skip]


def run_ours(model_dir: Path, data, out: Path, args) -> tuple[float, int]:
    from hpc_ft.backends.hf_runtime import train

    events = out / "events.jsonl"
    argv = ["--model-dir", str(model_dir), "--train-file", str(data.train), "--valid-file", str(data.valid),
            "--output-dir", str(out), "--events", str(events), "--max-steps", str(args.steps),
            "--eval-steps", str(args.steps), "--patience", "0", "--micro-batch-size", str(args.micro_batch_size),
            "--global-batch-size", str(args.micro_batch_size), "--lr", "5e-3", "--lora-r", "8",
            "--lora-alpha", "16", "--lora-dropout", "0.0", "--lora-targets", args.lora_targets,
            "--max-seq-length", "128", "--seed", "0", "--resume", "never", "--log-every", str(LOG_EVERY)]
    if train.main(argv) != 0:
        raise SystemExit("our train.py failed")
    logged = [json.loads(line) for line in events.read_text(encoding="utf-8").splitlines()]
    times = {e["step"]: e["time"] for e in logged if e["kind"] == "train"}
    return window(times, args.skip_steps, args.steps), args.steps - args.skip_steps


def run_plain(model_dir: Path, data, out: Path, args) -> tuple[float, int]:
    """What a user would write by hand: tokenize, mask the prompt, DataCollatorForSeq2Seq, Trainer, LoRA."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainerCallback, TrainingArguments)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = [json.loads(line) for line in data.train.read_text(encoding="utf-8").splitlines()]
    dataset = []
    for row in rows:
        prompt = [tokenizer.bos_token_id] + tokenizer(row["input"], add_special_tokens=False)["input_ids"]
        answer = tokenizer(row["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        dataset.append({"input_ids": prompt + answer, "attention_mask": [1] * (len(prompt) + len(answer)),
                        "labels": [-100] * len(prompt) + answer})
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                             target_modules=args.lora_targets.split(",")
                                             if args.lora_targets != "all-linear" else "all-linear"))
    times: dict[int, float] = {}

    class LogTimes(TrainerCallback):
        def on_log(self, targs, state, control, logs=None, **kwargs):
            times[state.global_step] = time.time()

    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=args.micro_batch_size,
                               learning_rate=5e-3, logging_steps=LOG_EVERY, save_strategy="no", eval_strategy="no",
                               report_to="none", disable_tqdm=True, seed=0, use_cpu=True, dataloader_num_workers=0),
        train_dataset=dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
        callbacks=[LogTimes()],
    )
    trainer.train()
    return window(times, args.skip_steps, args.steps), args.steps - args.skip_steps


def main() -> int:
    args = parse_args()
    import torch
    from transformers.utils import logging as hf_logging

    from hpc_ft.backends.hf_runtime.tiny_model import TinyModelSpec, build_tiny_model
    from hpc_ft.data.jcommonsenseqa import make_synthetic

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="hf-throughput-"))  # runs' stdout goes to <work>/<name>-<repeat>.log
    data = make_synthetic(work / "data", n_train=600, n_valid=50, n_test=10, seed=0)
    spec = TinyModelSpec(hidden=args.hidden, layers=args.layers, intermediate=args.hidden * 11 // 4,
                         warmup_steps=20, echo_steps=0)
    model_dir = build_tiny_model(work / "data", work / "model", spec, log=lambda _: None)
    from transformers import AutoTokenizer

    from hpc_ft.backends.hf_runtime.sft_data import encode_split, load_rendered
    from hpc_ft.data.spec import DataOptions

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rendered = [r for part in load_rendered([str(data.train)], DataOptions(), tokenizer, "train") for r in part]
    encoded = encode_split(tokenizer, rendered, 128)
    per_step_tokens = statistics.mean(len(e["input_ids"]) for e in encoded.examples) * args.micro_batch_size
    results: dict[str, list[float]] = {"ours": [], "plain": []}
    runners = {"ours": run_ours, "plain": run_plain}
    for repeat in range(args.repeats):
        order = ("ours", "plain") if repeat % 2 == 0 else ("plain", "ours")
        for name in order:
            with open(work / f"{name}-{repeat}.log", "w") as log, contextlib.redirect_stdout(log):
                seconds, steps = runners[name](model_dir, data, work / f"{name}-{repeat}", args)
            results[name].append(steps / seconds)
            print(f"repeat {repeat} {name:5s}: {steps / seconds:7.2f} steps/s ({seconds:.2f} s for {steps} steps)",
                  flush=True)
    ours, plain = statistics.median(results["ours"]), statistics.median(results["plain"])
    print(f"\n== hf training throughput: h{args.hidden}/L{args.layers}, LoRA {args.lora_targets}, mbs "
          f"{args.micro_batch_size}, {args.steps} steps (window {args.skip_steps}-{args.steps}), {args.threads} "
          f"threads, {args.repeats} alternating repeats ==")
    print(f"ours : median {ours:.2f} steps/s (~{ours * per_step_tokens:,.0f} tokens/s)")
    print(f"plain: median {plain:.2f} steps/s (~{plain * per_step_tokens:,.0f} tokens/s)")
    paired = statistics.median(o / p for o, p in zip(results["ours"], results["plain"]))
    print(f"ratio ours/plain: {ours / plain:.3f} of the medians, {paired:.3f} median of the paired repeats "
          "(target >= 0.95)")
    print("FIGURES " + json.dumps({"ours_steps_per_s": results["ours"], "plain_steps_per_s": results["plain"],
                                   "ratio": ours / plain, "paired_ratio": paired}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
