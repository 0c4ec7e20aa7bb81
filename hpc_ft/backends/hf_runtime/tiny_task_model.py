"""Build the tiny base model of a classification, NER or preference run from its prepared train split: a BERT-style encoder or a Llama, with a tokenizer trained on the data.

The head is not built here: the training step adds it (`AutoModelFor...Classification` with the
run's labels). Nothing is downloaded; the folder is written like a hub snapshot, config.json last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hpc_ft.backends.hf_runtime.tiny_model import portable_tokenizer_config
from hpc_ft.errors import UserError

BERT_SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                 "mask_token": "[MASK]"}


@dataclass(frozen=True)
class TinyEncoderSpec:
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    intermediate: int = 128
    vocab_size: int = 800
    max_positions: int = 512
    seed: int = 0


def texts_of(rows: list[dict]) -> list[str]:
    """Every piece of text of a prepared split (classification, NER or preference rows)."""
    out: list[str] = []
    for row in rows:
        if "tokens" in row:
            out.extend(row["tokens"])
        for key in ("text", "text_pair", "prompt", "response_a", "response_b"):
            if isinstance(row.get(key), str):
                out.append(row[key])
    return out


def train_bert_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (lossless for any UTF-8, Japanese included) with BERT's specials and [CLS] A [SEP] (B [SEP])."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=BERT_SPECIALS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s+"), behavior="removed"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = list(BERT_SPECIALS.values())
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, **BERT_SPECIALS)


def build_bert(spec: TinyEncoderSpec, tokenizer):
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=len(tokenizer), hidden_size=spec.hidden, num_hidden_layers=spec.layers,
                        num_attention_heads=spec.heads, intermediate_size=spec.intermediate,
                        max_position_embeddings=spec.max_positions, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(spec.seed)
    return BertModel(config)


def build_llama(tokenizer, seed: int):
    """The tiny Llama of tiny_model (same size), random weights; pad id set so a sequence head finds the last token."""
    from hpc_ft.backends.hf_runtime.tiny_model import TinyModelSpec, build_model

    model = build_model(TinyModelSpec(seed=seed), tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def build(train_file: Path, arch: str, output: Path, seed: int = 0, if_missing: bool = False, log=print) -> Path:
    if if_missing and (output / "config.json").is_file():
        log(f"tiny model: {output} already has config.json; skipping (--if-missing)")
        return output
    if not train_file.is_file():
        raise UserError(f"--train-file {train_file}: no such file; the submit step prepares it in the run's data/.")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    with open(train_file, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    texts = texts_of(rows)
    if arch == "bert":
        spec = TinyEncoderSpec(seed=seed)
        tokenizer = train_bert_tokenizer(texts, spec.vocab_size)
        model = build_bert(spec, tokenizer)
        info = {"arch": "bert", "spec": asdict(spec)}
    else:
        from hpc_ft.backends.hf_runtime.tiny_model import TinyModelSpec, train_tokenizer

        tokenizer = train_tokenizer(texts, TinyModelSpec().vocab_size)
        model = build_llama(tokenizer, seed)
        info = {"arch": "llama", "spec": asdict(TinyModelSpec(seed=seed))}
    n_params = sum(p.numel() for p in model.parameters())
    output.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=output))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    portable_tokenizer_config(staging / "tokenizer_config.json")
    (staging / "tiny_model.json").write_text(json.dumps({**info, "parameters": n_params, "train_file": str(train_file)},
                                                        indent=2) + "\n", encoding="utf-8")
    umask = os.umask(0)
    os.umask(umask)
    for item in sorted(staging.iterdir(), key=lambda path: path.name == "config.json"):
        os.chmod(item, 0o666 & ~umask)
        os.replace(item, output / item.name)
    staging.rmdir()
    log(f"tiny model: {arch}, vocab {len(tokenizer)}, {n_params:,} parameters, saved to {output} "
        f"in {time.perf_counter() - started:.1f} s")
    return output


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpc_ft.backends.hf_runtime.tiny_task_model",
                                description="Build a tiny encoder (bert) or decoder (llama) from a prepared train split.")
    p.add_argument("--train-file", required=True, help="the run's data/train.jsonl")
    p.add_argument("--arch", choices=["bert", "llama"], required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--if-missing", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        build(Path(args.train_file), args.arch, Path(args.output).expanduser(), args.seed, args.if_missing)
    except UserError as exc:
        print(f"tiny_task_model: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
