"""Build a tiny Llama base model from the job's train files: BPE tokenizer, short warm-up on the prompts only, saved like a hub snapshot."""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hpc_ft.errors import UserError

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SNAPSHOT_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class TinyModelSpec:
    """Size of the model and of its warm-up. The warm-up sees prompts only, never the answers."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    intermediate: int = 176
    vocab_size: int = 1000
    max_positions: int = 256
    warmup_steps: int = 100
    warmup_lr: float = 3e-3
    warmup_batch_size: int = 16
    echo_steps: int = 300
    seed: int = 0


def train_files_in(data_dir: Path) -> list[Path]:
    """--data-dir (kept for scripts): <data_dir>/train-v1.1.jsonl, else its first train*.jsonl."""
    candidates = [data_dir / "train-v1.1.jsonl"] + sorted(data_dir.glob("train*.jsonl"))
    train_file = next((path for path in candidates if path.is_file()), None)
    if train_file is None:
        raise UserError(
            f"--data-dir {data_dir}: no train*.jsonl there; prepare the data first "
            "or name the train files with --train-file."
        )
    return [train_file]


def read_prompts(train_files, options=None) -> tuple[list[str], list[str]]:
    """The prompts and answers of the train files, rendered with the job's template (hpc_ft.data).

    With the tokenizer's chat template (which this model does not have yet) the turns' own text is used."""
    from hpc_ft.data.dataset import load_split
    from hpc_ft.data.spec import DataOptions
    from hpc_ft.data.templates import example_messages

    options = options or DataOptions()
    prompts, answers = [], []
    for loaded in load_split([str(f) for f in train_files], options):
        if loaded.template is not None:
            prompts += [r.prompt for r in loaded.rendered]
            answers += [r.label for r in loaded.rendered]
            continue
        for example in loaded.examples:
            turns = example_messages(example, options.label_key)
            prompts.append("\n".join(t["content"] for t in turns if t["role"] != "assistant"))
            answers.append("\n".join(t["content"] for t in turns if t["role"] == "assistant"))
    return prompts, answers


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer (lossless for any UTF-8 text) with <pad>, <s>, </s>, wrapped for transformers."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    # whitespace is its own token, so an answer word is the same token alone as in the choice list "- word"
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def portable_tokenizer_config(path: Path) -> None:
    """Name the class every transformers version knows (5.x writes its own 'TokenizersBackend')."""
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config.pop("backend", None)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_model(spec: TinyModelSpec, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(spec.seed)
    return LlamaForCausalLM(config)


def echo_of(prompt: str) -> str:
    """The prompt's last non-empty line before its final one: the question, in the instruction format."""
    lines = [line for line in prompt.splitlines()[:-1] if line.strip()]
    return lines[-1] if lines else ""


def warmup_examples(tokenizer, prompts: list[str], spec: TinyModelSpec) -> tuple[list[dict], list[dict]]:
    """(language-model examples "<s> prompt </s>", echo examples "<s> prompt" -> "question </s>").

    EOS is a target in both: its tied embedding would otherwise stay random, and LoRA, which cannot
    change embeddings, could never make the model stop after an answer. The echo examples teach
    the base to restate the question after the prompt (a parrot), so its last position carries
    the question; LoRA then only has to turn that into the answer. No answer is ever shown.
    """
    from hpc_ft.backends.hf_runtime.sft_data import encode_example, encode_prompt

    lm = []
    for prompt in prompts:
        ids = encode_prompt(tokenizer, prompt)[: spec.max_positions - 1] + [tokenizer.eos_token_id]
        lm.append({"input_ids": ids, "labels": list(ids)})
    echo = [encode_example(tokenizer, p, echo_of(p), spec.max_positions)[0] for p in prompts if echo_of(p)]
    return lm, [e for e in echo if e is not None]


def train_steps(model, examples: list[dict], steps: int, lr: float, spec: TinyModelSpec, pad_id: int,
                cosine: bool) -> list[float]:
    """Full-parameter AdamW steps on padded batches drawn without replacement (reshuffled each pass)."""
    import torch

    from hpc_ft.backends.hf_runtime.sft_data import AnswerOnlyCollator

    if steps <= 0 or not examples:
        return []
    collate = AnswerOnlyCollator(pad_id)
    rng = random.Random(spec.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    factor = (lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))) if cosine else (lambda step: 1.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    model.train()
    losses, order = [], []
    for _ in range(steps):
        if len(order) < spec.warmup_batch_size:
            order += rng.sample(range(len(examples)), len(examples))
        batch = collate([examples[i] for i in order[: spec.warmup_batch_size]])
        del order[: spec.warmup_batch_size]
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


def warm_up(model, tokenizer, prompts: list[str], spec: TinyModelSpec) -> dict[str, list[float]]:
    """The two warm-up phases on the prompts alone: language modelling, then restating the question."""
    lm, echo = warmup_examples(tokenizer, prompts, spec)
    pad = tokenizer.pad_token_id
    return {
        "lm": train_steps(model, lm, spec.warmup_steps, spec.warmup_lr, spec, pad, cosine=True),
        "echo": train_steps(model, echo, spec.echo_steps, spec.warmup_lr, spec, pad, cosine=False),
    }


def build_tiny_model(train_files, output: str | Path, spec: TinyModelSpec = TinyModelSpec(),
                     if_missing: bool = False, log=print, options=None) -> Path:
    """Train the tokenizer on the train files' rendered rows, build and warm up the model, save a snapshot to `output`.

    `train_files`: the job's train files (a list), or a prepared data folder (its train-v1.1.jsonl)."""
    if isinstance(train_files, (str, Path)):
        train_files = train_files_in(Path(train_files).expanduser())
    train_files, output = [Path(f).expanduser() for f in train_files], Path(output).expanduser()
    if if_missing and (output / "config.json").is_file():
        log(f"tiny model: {output} already has config.json; skipping (--if-missing)")
        return output
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    prompts, answers = read_prompts(train_files, options)
    tokenizer = train_tokenizer(prompts + answers, spec.vocab_size)
    model = build_model(spec, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"tiny model: vocab {len(tokenizer)}, hidden {spec.hidden}, layers {spec.layers}, {n_params:,} parameters")
    torch.manual_seed(spec.seed)
    losses = warm_up(model, tokenizer, prompts, spec)
    for phase, values in losses.items():
        if values:
            log(f"tiny model: warm-up '{phase}' {len(values)} steps (prompts only), loss {values[0]:.3f} -> {values[-1]:.3f}")
    output.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=output))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    portable_tokenizer_config(staging / "tokenizer_config.json")
    (staging / "tiny_model.json").write_text(
        json.dumps({"spec": asdict(spec), "parameters": n_params, "train_files": [str(f.resolve()) for f in train_files],
                    "warmup_final_loss": {k: v[-1] if v else None for k, v in losses.items()}}, indent=2) + "\n",
        encoding="utf-8",
    )
    missing = [name for name in SNAPSHOT_FILES if not (staging / name).is_file()]
    if missing:
        raise RuntimeError(f"tiny model: save_pretrained did not write {missing} in {staging}")
    # config.json moves last: --if-missing takes its presence to mean a complete model
    umask = os.umask(0)
    os.umask(umask)
    for item in sorted(staging.iterdir(), key=lambda path: path.name == "config.json"):
        os.chmod(item, 0o666 & ~umask)  # some writers create 0600 files; a shared model folder wants the umask
        os.replace(item, output / item.name)
    staging.rmdir()
    log(f"tiny model: saved to {output} in {time.perf_counter() - started:.1f} s")
    return output


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = TinyModelSpec()
    parser = argparse.ArgumentParser(
        prog="python -m hpc_ft.backends.hf_runtime.tiny_model",
        description="Build a tiny Llama model (tokenizer + warm-up on prompts) from the job's train files.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--train-file", nargs="+", metavar="FILE",
                        help="the job's train files (any format hpc_ft.data reads); the tokenizer learns their text")
    source.add_argument("--data-dir", help="a prepared folder holding train-v1.1.jsonl ({input, output} rows)")
    parser.add_argument("--data-options", default="{}", help="format and template as JSON (hpc_ft.data.spec.DataOptions)")
    parser.add_argument("--output", required=True, help="model folder to write (config.json, model.safetensors, ...)")
    parser.add_argument("--if-missing", action="store_true", help="do nothing when OUTPUT/config.json exists")
    parser.add_argument("--hidden", type=int, default=defaults.hidden)
    parser.add_argument("--layers", type=int, default=defaults.layers)
    parser.add_argument("--heads", type=int, default=defaults.heads)
    parser.add_argument("--intermediate", type=int, default=defaults.intermediate)
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size)
    parser.add_argument("--max-positions", type=int, default=defaults.max_positions)
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--echo-steps", type=int, default=defaults.echo_steps,
                        help="warm-up steps teaching the base to restate the question (0 = off)")
    parser.add_argument("--warmup-lr", type=float, default=defaults.warmup_lr)
    parser.add_argument("--warmup-batch-size", type=int, default=defaults.warmup_batch_size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    return parser.parse_args(argv)


def spec_from_args(args: argparse.Namespace) -> TinyModelSpec:
    spec = TinyModelSpec(
        hidden=args.hidden, layers=args.layers, heads=args.heads, intermediate=args.intermediate,
        vocab_size=args.vocab_size, max_positions=args.max_positions, warmup_steps=args.warmup_steps,
        echo_steps=args.echo_steps, warmup_lr=args.warmup_lr, warmup_batch_size=args.warmup_batch_size, seed=args.seed,
    )
    for name in ("hidden", "layers", "heads", "intermediate", "max_positions", "warmup_batch_size"):
        if getattr(spec, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}={getattr(spec, name)}: must be at least 1.")
    if spec.hidden % spec.heads:
        raise UserError(f"--hidden={spec.hidden} is not divisible by --heads={spec.heads}; pick a multiple.")
    if spec.vocab_size < 300:
        raise UserError(f"--vocab-size={spec.vocab_size}: byte-level BPE needs at least 300 (256 bytes + specials).")
    return spec


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        spec = spec_from_args(args)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        from hpc_ft.data.spec import DataOptions

        build_tiny_model(args.train_file or args.data_dir, args.output, spec, if_missing=args.if_missing,
                         options=DataOptions.from_json(args.data_options))
    except UserError as exc:
        print(f"tiny_model: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
