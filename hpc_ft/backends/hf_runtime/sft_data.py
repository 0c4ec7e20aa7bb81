"""Rendered examples (hpc_ft.data) -> token ids with the loss on the answer parts only (or everywhere), the train mix, and the padding collator."""

from __future__ import annotations

from dataclasses import dataclass

from hpc_ft.errors import UserError

IGNORE_INDEX = -100


def tokenizer_source(tokenizer):
    """The data layer's tokenizer hook: the job always has the model's tokenizer at hand."""
    return lambda: tokenizer


def load_rendered(files, options, tokenizer, argument: str) -> list[list]:
    """Rendered examples of each file (hpc_ft.data.dataset.load_file), errors prefixed with the job argument."""
    from hpc_ft.data.dataset import load_file

    out = []
    for path in files:
        try:
            out.append(load_file(path, options, tokenizer_source(tokenizer)).rendered)
        except UserError as exc:
            raise UserError(f"{argument}: {exc}") from None
    return out


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Prompt ids as both training and generation see them: the tokenizer's own specials, with BOS first if it has one."""
    ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids.insert(0, bos)
    return ids


def encode_generation_prompt(tokenizer, rendered) -> list[int]:
    """The ids a model continues from: a chat template's text holds its own specials; a field prompt gets BOS."""
    if rendered.specials_in_text:
        return list(tokenizer(rendered.prompt, add_special_tokens=False)["input_ids"])
    return encode_prompt(tokenizer, rendered.prompt)


def encode_example(tokenizer, prompt: str, answer: str, max_length: int,
                   answer_only_loss: bool = True) -> tuple[dict | None, bool]:
    """(input_ids = prompt + answer + EOS with labels masking the prompt, whether the prompt was cut).

    A prompt too long loses its start (its first token, BOS, is kept: the question sits at the end);
    the example is None when the answer alone does not fit.
    """
    prompt_ids = encode_prompt(tokenizer, prompt)
    answer_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    room = max_length - len(answer_ids)
    if room < 2:
        return None, False
    cut = len(prompt_ids) > room
    if cut:
        prompt_ids = prompt_ids[:1] + prompt_ids[len(prompt_ids) - room + 1:]
    masked = [IGNORE_INDEX] * len(prompt_ids) if answer_only_loss else list(prompt_ids)
    example = {"input_ids": prompt_ids + answer_ids, "labels": masked + answer_ids}
    return example, cut


def encode_segments(tokenizer, segments, max_length: int, answer_only_loss: bool = True) -> tuple[dict | None, bool]:
    """A chat-template example: each segment tokenized as written (its specials included), loss on the assistant parts.

    Too long: cut from the end; None when no loss-carrying token is left."""
    ids, labels = [], []
    for segment in segments:
        piece = list(tokenizer(segment.text, add_special_tokens=False)["input_ids"])
        ids += piece
        labels += piece if (segment.loss or not answer_only_loss) else [IGNORE_INDEX] * len(piece)
    cut = len(ids) > max_length
    ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        return None, cut
    return {"input_ids": ids, "labels": labels}, cut


def encode_rendered(tokenizer, rendered, max_length: int, answer_only_loss: bool = True) -> tuple[dict | None, bool]:
    if rendered.specials_in_text:
        return encode_segments(tokenizer, rendered.segments, max_length, answer_only_loss)
    prompt, answer = rendered.segments[0].text, rendered.segments[1].text
    return encode_example(tokenizer, prompt, answer, max_length, answer_only_loss)


@dataclass
class EncodedSplit:
    examples: list[dict]
    truncated: int
    dropped: int


def encode_split(tokenizer, rendered: list, max_length: int, answer_only_loss: bool = True) -> EncodedSplit:
    examples, truncated, dropped = [], 0, 0
    for item in rendered:
        example, cut = encode_rendered(tokenizer, item, max_length, answer_only_loss)
        if example is None:
            dropped += 1
            continue
        truncated += cut
        examples.append(example)
    return EncodedSplit(examples, truncated, dropped)


def mix_train_files(encoded: list[list[dict]], weights, seed: int) -> list[dict]:
    """Several train files: sampled with NeMo's concat_sampling_probabilities (datasets.interleave_datasets)."""
    if len(encoded) == 1:
        return encoded[0]
    from datasets import Dataset, interleave_datasets

    if not weights or len(weights) != len(encoded):
        raise UserError(f"--train-weights: give one probability per train file ({len(encoded)} files).")
    total = float(sum(weights))
    mixed = interleave_datasets([Dataset.from_list(e) for e in encoded], probabilities=[w / total for w in weights],
                                seed=seed, stopping_strategy="all_exhausted")
    return mixed.to_list()


def load_encoded(files, weights, options, tokenizer, max_length: int, argument: str, seed: int, log) -> list[dict]:
    """Files of a split -> encoded examples (train files mixed by their weights); logs what was cut or dropped."""
    parts = []
    for path, rendered in zip(files, load_rendered(files, options, tokenizer, argument)):
        split = encode_split(tokenizer, rendered, max_length, options.answer_only_loss)
        if split.truncated or split.dropped:
            log(f"[data] {path}: {split.truncated} rows cut to --max-seq-length={max_length}, "
                f"{split.dropped} rows dropped (no answer token fits)")
        parts.append(split.examples)
    examples = mix_train_files(parts, weights, seed) if weights is not None else [e for p in parts for e in p]
    if not examples:
        raise UserError(f"--max-seq-length={max_length}: no row of {argument} fits; raise model.data.train_ds.max_seq_length.")
    return examples


class AnswerOnlyCollator:
    """Right-pads a batch: pad id, attention mask 0, label -100 on the padding."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[row, :n] = torch.tensor(feature["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.tensor(feature["labels"], dtype=torch.long)
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@dataclass
class TrainSplits:
    examples: list[dict]


def load_splits(args, tokenizer, log) -> tuple[TrainSplits, TrainSplits]:
    """The train mix and the validation set for train.py's parsed arguments (add_data_arguments)."""
    from hpc_ft.data.spec import DataOptions

    options = DataOptions.from_json(args.data_options)
    weights = args.train_weights if args.train_weights is not None else [1.0] * len(args.train_file)
    train = load_encoded(args.train_file, weights, options, tokenizer, args.max_seq_length, "--train-file",
                         args.seed, log)
    valid = load_encoded(args.valid_file, None, options, tokenizer, args.max_seq_length, "--valid-file",
                         args.seed, log)
    return TrainSplits(train), TrainSplits(valid)
