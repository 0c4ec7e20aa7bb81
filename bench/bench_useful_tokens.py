"""Useful (non-pad) tokens per second on a long-tailed instruction set: hpc-ft's train path (packed; length-grouped) against a plain transformers Trainer script that pads.

    HF_HUB_OFFLINE=1 python bench/bench_useful_tokens.py [--rows 800] [--epochs 2] [--threads 1]

One run builds a long-tailed set (log-normal prompt lengths, p95/median >= 5) and a tiny Llama warmed
up on its prompts, then trains the same LoRA on the same rows for the same number of epochs three
ways, each in its own process (so each start-up is a real one):

* plain  : what a user writes by hand: tokenize, mask the prompt, DataCollatorForSeq2Seq(padding=True),
           Trainer with a random sampler;
* grouped: `python -m hpc_ft.backends.hf_runtime.train` (length grouping is its default);
* packed : the same with --packed-sequence (rows packed into sequences of --max-seq-length).

All three see the same rows per optimizer step on average: the padded runs use a micro-batch of the
packed run's mean rows per sequence. Throughput is measured from the end of step 1 to the end of the
last step (start-up, the final evaluation and saving are outside), counting only tokens that belong to a
row. Then the final adapters of all three are scored by one function on the validation rows (answer-token
loss), so speed is not bought with quality. Also printed: time to first step (imports, model load,
tokenization), and a restart of the packed job in its own folder, which reads the tokenized-data cache.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TOPICS = ["river", "forest", "market", "engine", "garden", "harbor", "castle", "desert"]
LR = "5e-3"
# what the plain script trains on (BOS + input, then output + EOS, no space between): hpc-ft's runs render
# the rows with the same template so that all three see the same tokens
TEMPLATE = "{input}{output}"

from hpc_ft.data.spec import DataOptions  # noqa: E402 - torch-free


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=400, help="training rows")
    p.add_argument("--valid-rows", type=int, default=80)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seeds", type=int, default=1, help="training seeds; each runs all three, figures are means")
    p.add_argument("--max-seq-length", type=int, default=512, help="pack size (and the longest row)")
    p.add_argument("--median-words", type=float, default=22.0, help="median prompt length in words")
    p.add_argument("--sigma", type=float, default=1.1, help="log-normal sigma of prompt lengths")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per run; 1 keeps a shared machine's contention from becoming noise")
    p.add_argument("--work", default=None, help="folder for data, model and runs (default: a new temp folder)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: run the plain Trainer script
    p.add_argument("--child-args", default=None, help=argparse.SUPPRESS)
    return p.parse_args()


# ---- data ------------------------------------------------------------------------------------
def make_rows(n: int, rng: random.Random, median_words: float, sigma: float, max_words: int) -> list[dict]:
    """Instruction rows whose answer is the topic most of the prompt's words come from.

    A topic's words are the topic's name with a number (river7), so the tiny model's warm-up on the
    prompts has seen the answer's tokens and LoRA can learn the task within one epoch."""
    shared = [f"w{i}" for i in range(120)]
    by_topic = {t: [f"{t}{i}" for i in range(40)] for t in TOPICS}
    rows = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        words = max(3, min(max_words, round(rng.lognormvariate(math.log(median_words), sigma))))
        text = " ".join(rng.choice(by_topic[topic]) if rng.random() < 0.6 else rng.choice(shared)
                        for _ in range(words))
        rows.append({"input": f"{text}\nTopic?", "output": topic})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---- the plain Trainer script (run as a child process) --------------------------------------
def plain_trainer(spec: dict) -> dict:
    """What a user would write by hand, with two timing callbacks added."""
    started = spec["started"]
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainerCallback, TrainingArguments, set_seed)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(spec["threads"])
    imported = time.time()
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    rows = [json.loads(line) for line in Path(spec["train_file"]).read_text(encoding="utf-8").splitlines()]
    dataset = []
    for row in rows:
        prompt = [tokenizer.bos_token_id] + tokenizer(row["input"], add_special_tokens=False)["input_ids"]
        answer = tokenizer(row["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        dataset.append({"input_ids": prompt + answer, "attention_mask": [1] * (len(prompt) + len(answer)),
                        "labels": [-100] * len(prompt) + answer})
    tokenized = time.time()
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    set_seed(spec["seed"])  # as hpc-ft's job does: the adapter starts from the same weights for the same seed
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "v_proj"]))
    loaded = time.time()
    pad_collator = DataCollatorForSeq2Seq(tokenizer, padding=True)
    counted = [0]

    def collate(features):
        counted[0] += sum(len(f["input_ids"]) for f in features)
        return pad_collator(features)

    marks: list[tuple[float, int]] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append((time.time(), time.process_time(), counted[0]))

    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=spec["out"], max_steps=spec["steps"],
                               per_device_train_batch_size=spec["mbs"], learning_rate=float(LR),
                               lr_scheduler_type="linear", max_grad_norm=1.0, logging_strategy="no",
                               save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
                               seed=spec["seed"], use_cpu=True, dataloader_num_workers=0,
                               remove_unused_columns=False),
        train_dataset=dataset,
        data_collator=collate,
        callbacks=[StepClock()],
    )
    trainer.train()
    model.save_pretrained(Path(spec["out"]) / "final")
    (t1, p1, c1), (tn, pn, cn) = marks[0], marks[-1]
    return {"first_step_s": t1 - started, "imports_s": imported - started, "tokenize_s": tokenized - imported,
            "model_load_s": loaded - tokenized, "window_s": tn - t1, "window_cpu_s": pn - p1, "window_tokens": cn - c1,
            "steps": len(marks), "adapter": str(Path(spec["out"]) / "final")}


# ---- hpc-ft's train path (run as a child process) --------------------------------------------
def run_ours(model_dir: Path, data: dict, out: Path, steps: int, mbs: int, args, extra: list[str],
             events_name: str = "events.jsonl", seed: int = 0) -> dict:
    events = out / events_name
    argv = [sys.executable, "-m", "hpc_ft.backends.hf_runtime.train", "--model-dir", str(model_dir),
            "--train-file", str(data["train"]), "--valid-file", str(data["valid"]), "--output-dir", str(out),
            "--events", str(events), "--max-steps", str(steps), "--eval-steps", str(steps), "--patience", "0",
            "--micro-batch-size", str(mbs), "--global-batch-size", str(mbs), "--lr", LR, "--lora-r", "8",
            "--lora-alpha", "16", "--lora-dropout", "0.0", "--lora-targets", "q_proj,v_proj",
            "--max-seq-length", str(args.max_seq_length), "--seed", str(seed), "--resume", "never", "--log-every", "1",
            "--threads", str(args.threads), "--data-options", DataOptions(prompt_template=TEMPLATE).to_json(), *extra]
    started = time.time()
    with open(out.with_name(out.name + "-" + Path(events_name).stem).with_suffix(".log"), "w") as log:
        subprocess.run(argv, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    logged = [json.loads(line) for line in events.read_text(encoding="utf-8").splitlines()]
    first = next(e for e in logged if e["kind"] == "first_step")
    window = next(e for e in logged if e["kind"] == "train_window")
    end = next(e for e in logged if e["kind"] == "end")
    return {"first_step_s": first["time"] - started, "tokenize_s": first["data_seconds"],
            "model_load_s": first["model_seconds"], "from_cache": first["tokenized_from_cache"],
            "window_s": window["wall_s"], "window_cpu_s": window["cpu_s"], "window_tokens": window["tokens"],
            "steps": end["step"], "adapter": end["best_dir"]}


def run_plain(model_dir: Path, data: dict, out: Path, steps: int, mbs: int, args, seed: int = 0) -> dict:
    spec = {"model_dir": str(model_dir), "train_file": str(data["train"]), "out": str(out), "steps": steps,
            "mbs": mbs, "seed": seed, "threads": args.threads}
    result = out.with_suffix(".json")
    started = time.time()
    spec["started"] = started
    with open(out.with_suffix(".log"), "w") as log:
        subprocess.run([sys.executable, __file__, "--child", "plain", "--child-args", json.dumps(spec)],
                       check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=str(REPO), BENCH_RESULT=str(result)))
    return json.loads(result.read_text(encoding="utf-8"))


# ---- one scorer for all adapters ------------------------------------------------------------
def validation_loss(model_dir: Path, adapter: str, valid_rows: list[dict], max_len: int) -> float:
    """Token-weighted mean cross-entropy of the answer tokens (+EOS) over the validation rows."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hpc_ft.backends.hf_runtime.sft_data import encode_example

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                                      adapter).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for row in valid_rows:
            example, _ = encode_example(tokenizer, row["input"], row["output"], max_len)
            ids = torch.tensor([example["input_ids"]])
            labels = torch.tensor(example["labels"][1:])
            logits = model(input_ids=ids).logits[0, :-1]
            keep = labels != -100
            total += float(torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum"))
            count += int(keep.sum())
    return total / count


def main() -> int:
    args = parse_args()
    if args.child == "plain":
        result = plain_trainer(json.loads(args.child_args))
        Path(os.environ["BENCH_RESULT"]).write_text(json.dumps(result), encoding="utf-8")
        return 0
    bench_started = time.time()
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from hpc_ft.backends.hf_runtime.batching import pack_rows
    from hpc_ft.backends.hf_runtime.sft_data import encode_split, load_rendered
    from hpc_ft.backends.hf_runtime.tiny_model import TinyModelSpec, build_tiny_model

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="useful-tokens-"))
    rng = random.Random(0)
    max_words = int(args.max_seq_length / 3.3)  # a word is about three tokens: rows fit whole (the bench says if not)
    data = {"train": work / "data" / "train.jsonl", "valid": work / "data" / "valid.jsonl"}
    write_jsonl(data["train"], make_rows(args.rows, rng, args.median_words, args.sigma, max_words))
    valid_rows = make_rows(args.valid_rows, rng, args.median_words, args.sigma, max_words)
    write_jsonl(data["valid"], valid_rows)
    spec = TinyModelSpec(hidden=args.hidden, layers=args.layers, heads=4, intermediate=args.hidden * 11 // 4,
                         vocab_size=600, max_positions=args.max_seq_length, warmup_steps=40, warmup_batch_size=8,
                         echo_steps=0)
    model_dir = build_tiny_model(work / "data", work / "model", spec, log=lambda _: None)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rendered = [r for part in load_rendered([str(data["train"])], DataOptions(prompt_template=TEMPLATE), tokenizer,
                                            "train") for r in part]
    encoded = encode_split(tokenizer, rendered, args.max_seq_length)
    lengths = [len(e["input_ids"]) for e in encoded.examples]
    packs = pack_rows(lengths, args.max_seq_length, seed=0)
    rows_per_pack = len(lengths) / len(packs)
    mbs = max(1, round(rows_per_pack))
    padded_steps = math.ceil(len(lengths) / mbs) * args.epochs
    packed_steps = len(packs) * args.epochs
    median, p95 = statistics.median(lengths), percentile(lengths, 0.95)
    print(f"== useful tokens/s: {len(lengths)} train rows, tokens per row median {median:.0f}, p95 {p95:.0f} "
          f"(p95/median {p95 / median:.1f}), max {max(lengths)}, {encoded.truncated} cut, {encoded.dropped} dropped; "
          f"tiny Llama h{args.hidden}/L{args.layers}, LoRA q,v r8, {args.epochs} epochs, {args.threads} thread(s), "
          f"load average {os.getloadavg()[0]:.1f} ==")
    print(f"packing: {len(packs)} sequences of <= {args.max_seq_length} tokens, {rows_per_pack:.2f} rows each, "
          f"{sum(lengths) / (len(packs) * args.max_seq_length):.1%} filled -> padded runs use micro-batch {mbs} "
          f"({padded_steps} steps), packed {packed_steps} steps of 1 sequence")

    # each training seed runs all three (same data, model, steps); figures are means over the seeds, so that a
    # val-loss difference is read against the seeds' own spread, not one batch order's luck
    runs: dict = {"plain": [], "grouped": [], "packed": []}
    for seed in range(args.seeds):
        tag = f"-s{seed}" if seed else ""
        runs["plain"].append(run_plain(model_dir, data, work / f"plain{tag}", padded_steps, mbs, args, seed))
        runs["grouped"].append(run_ours(model_dir, data, work / f"grouped{tag}", padded_steps, mbs, args, [], seed=seed))
        runs["packed"].append(run_ours(model_dir, data, work / f"packed{tag}", packed_steps, 1, args,
                                       ["--packed-sequence"], seed=seed))
    for name, per_seed in runs.items():
        for r in per_seed:
            r["tokens_per_s"] = r["window_tokens"] / r["window_s"]
            r["tokens_per_cpu_s"] = r["window_tokens"] / r["window_cpu_s"]
            r["val_loss"] = validation_loss(model_dir, r["adapter"], valid_rows, args.max_seq_length)
    results = {}
    for name, per_seed in runs.items():
        r = dict(per_seed[0])
        for key in ("tokens_per_s", "tokens_per_cpu_s", "val_loss", "first_step_s", "tokenize_s", "model_load_s"):
            r[key] = statistics.mean(x[key] for x in per_seed)
        r["val_losses"] = [x["val_loss"] for x in per_seed]
        results[name] = r
    if args.seeds > 1:
        for name, r in results.items():
            print(f"{name:8s} val loss per seed: " + ", ".join(f"{v:.4f}" for v in r["val_losses"]))
    # a requeued job starts again in its own folder: the tokenized data comes from the cache
    restart = run_ours(model_dir, data, work / "packed", 2, 1, args, ["--packed-sequence"], "restart.jsonl")

    base = results["plain"]
    print(f"\n{'run':8s} {'steps':>5s} {'useful tok/s':>12s} {'ratio':>6s} {'tok/CPU-s':>10s} {'ratio':>6s} "
          f"{'val loss':>9s} {'vs plain':>9s} {'1st step s':>10s} {'tokenize s':>10s} {'model s':>8s}")
    for name, r in results.items():
        print(f"{name:8s} {r['steps']:5d} {r['tokens_per_s']:12,.0f} {r['tokens_per_s'] / base['tokens_per_s']:6.2f} "
              f"{r['tokens_per_cpu_s']:10,.0f} {r['tokens_per_cpu_s'] / base['tokens_per_cpu_s']:6.2f} "
              f"{r['val_loss']:9.4f} {(r['val_loss'] / base['val_loss'] - 1):+9.2%} {r['first_step_s']:10.2f} "
              f"{r['tokenize_s']:10.3f} {r['model_load_s']:8.3f}")
    print("(tok/s: wall time from the end of step 1 to the end of the last step; tok/CPU-s: the same window in the "
          "process's CPU time, which a machine shared with other work disturbs less; the runs are sequential)")
    print(f"restart of the packed job (same folder): first step after {restart['first_step_s']:.2f} s, tokenized data "
          f"{'read from the cache' if restart['from_cache'] else 'TOKENIZED AGAIN'} ({restart['tokenize_s']:.3f} s vs "
          f"{results['packed']['tokenize_s']:.3f} s the first time)")
    verdicts = []
    for name, target in (("packed", 2.0), ("grouped", 1.4)):
        wall = results[name]["tokens_per_s"] / base["tokens_per_s"]
        cpu = results[name]["tokens_per_cpu_s"] / base["tokens_per_cpu_s"]
        verdicts.append(f"{name} >= {target}x: wall {wall:.2f}x {'met' if wall >= target else 'NOT met'}, "
                        f"CPU {cpu:.2f}x {'met' if cpu >= target else 'NOT met'}")
    worst = max(results[n]["val_loss"] / base["val_loss"] - 1 for n in ("packed", "grouped"))
    verdicts.append(f"val loss no more than 2% above plain: {'met' if worst <= 0.02 else 'NOT met'} ({worst:+.2%})")
    print("targets: " + "; ".join(verdicts))
    print(f"bench wall {time.time() - bench_started:.0f} s, load average now {os.getloadavg()[0]:.1f}")
    print("FIGURES " + json.dumps({n: {k: r[k] for k in ("tokens_per_s", "tokens_per_cpu_s", "val_loss",
                                                          "first_step_s", "steps")} for n, r in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
