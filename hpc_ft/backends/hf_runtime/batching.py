"""Fewer pad tokens in hf training: rows packed into sequences of max_seq_length (position ids restart per row, attention never crosses rows), or length-grouped micro-batches.

Packing (`--packed-sequence`, NeMo's `model.data.train_ds.packed_sequence`): rows are placed by best fit,
taken in a seeded random order, into sequences of at most `--max-seq-length` tokens; a micro-batch is
`--micro-batch-size` such sequences. Each row keeps its own position ids (0, 1, ...) and the model gets
no attention mask: transformers then builds a block-diagonal causal mask from the position ids (sdpa and
eager) or runs the varlen kernel (flash_attention_2, one flattened row per micro-batch); on CPU the job
uses hf_runtime.packed_attention (one causal sdpa call per packed row). No token attends to another row. The first token of every row carries no label: in the unpacked batch nothing
predicts it either, so each row's loss is the unpacked row's loss.

Length grouping (`--group-by-length`, on by default for the unpacked path): transformers'
LengthGroupedSampler (train_sampling_strategy="group_by_length") draws random mega-batches of 50 micro-batches and sorts each by length, so rows
of similar length share a micro-batch while the order stays random between groups.
"""

from __future__ import annotations

import argparse
import bisect
import random
from dataclasses import dataclass
from typing import Callable, Optional

IGNORE_INDEX = -100
GROUP_CHOICES = ("on", "off")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The train.py options of this module."""
    parser.add_argument("--packed-sequence", action="store_true",
                        help="pack several rows into each sequence of --max-seq-length tokens "
                             "(NeMo's model.data.train_ds.packed_sequence); --micro-batch-size counts sequences")
    parser.add_argument("--group-by-length", default="on", choices=GROUP_CHOICES,
                        help="unpacked path: rows of similar length in one micro-batch (random order between groups)")


def pack_rows(lengths: list[int], capacity: int, seed: int) -> list[list[int]]:
    """Row indices grouped into packs of at most `capacity` tokens: best fit, rows taken in a seeded random order.

    Best fit puts each row in the fullest pack it still fits in (a new pack when none); the random order
    keeps long and short rows mixed across packs. The packs come back in random order too.
    """
    order = list(range(len(lengths)))
    rng = random.Random(seed)
    rng.shuffle(order)
    rooms: list[int] = []      # free tokens of the open packs, ascending
    owners: list[int] = []     # pack index of each entry of `rooms`
    packs: list[list[int]] = []
    for index in order:
        n = lengths[index]
        if n > capacity:
            raise ValueError(f"row {index} has {n} tokens, more than the pack capacity {capacity}")
        at = bisect.bisect_left(rooms, n)
        if at == len(rooms):
            packs.append([index])
            room, owner = capacity - n, len(packs) - 1
        else:
            room, owner = rooms.pop(at) - n, owners.pop(at)
            packs[owner].append(index)
        if room > 0:
            at = bisect.bisect_left(rooms, room)
            rooms.insert(at, room)
            owners.insert(at, owner)
    rng.shuffle(packs)
    return packs


def pack_examples(examples: list[dict], capacity: int, seed: int) -> list[dict]:
    """Encoded rows ({input_ids, labels}) -> packed sequences {input_ids, labels, position_ids, n_rows}."""
    packs = pack_rows([len(e["input_ids"]) for e in examples], capacity, seed)
    packed = []
    for members in packs:
        input_ids: list[int] = []
        labels: list[int] = []
        position_ids: list[int] = []
        for index in members:
            row = examples[index]
            n = len(row["input_ids"])
            input_ids += row["input_ids"]
            labels += [IGNORE_INDEX] + list(row["labels"][1:])
            position_ids += range(n)
        packed.append({"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "n_rows": len(members)})
    return packed


class PackedCollator:
    """Packed sequences -> a micro-batch with position ids and no attention mask.

    Stacked ([sequences, longest]; the tail of a shorter one is padding in a segment of its own, label -100)
    for sdpa/eager; flattened to one row ([1, all tokens]) for flash_attention_2, whose varlen path
    reads the row boundaries from the position ids of a single row. The Trainer uses one collator for
    training and evaluation: unpacked rows (the validation split) go to `unpacked`.
    """

    def __init__(self, pad_token_id: int, flatten: bool = False, unpacked: Optional[Callable] = None):
        self.pad_token_id = pad_token_id
        self.flatten = flatten
        self.unpacked = unpacked

    def __call__(self, features: list[dict]) -> dict:
        import torch

        if self.unpacked is not None and "position_ids" not in features[0]:
            return self.unpacked(features)

        if self.flatten:
            features = [{key: [v for f in features for v in f[key]] for key in ("input_ids", "labels", "position_ids")}]
        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[row, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.tensor(f["labels"], dtype=torch.long)
            position_ids[row, :n] = torch.tensor(f["position_ids"], dtype=torch.long)
            position_ids[row, n:] = torch.arange(width - n)
        # no KV cache: transformers reads packed rows from the position ids only when there is none
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "use_cache": False}


@dataclass
class TrainBatching:
    """What the Trainer gets: the train set (rows or packs), the collator, and TrainingArguments options."""

    train_dataset: list[dict]
    collate: Callable[[list[dict]], dict]
    trainer_options: dict
    description: str


def train_batching(examples: list[dict], args: argparse.Namespace, pad_token_id: int, row_collator,
                   attn_implementation: Optional[str] = None) -> TrainBatching:
    """Packing or length grouping for the train split, as the arguments say (the eval split stays unpacked)."""
    if args.packed_sequence:
        packs = pack_examples(examples, args.max_seq_length, args.seed)
        tokens = sum(len(p["input_ids"]) for p in packs)
        flatten = attn_implementation == "flash_attention_2"
        return TrainBatching(
            packs, PackedCollator(pad_token_id, flatten=flatten, unpacked=row_collator), {"train_sampling_strategy": "random"},
            f"packed {len(examples)} rows into {len(packs)} sequences of <= {args.max_seq_length} tokens "
            f"({len(examples) / len(packs):.2f} rows, {tokens / (len(packs) * args.max_seq_length):.1%} filled "
            f"per sequence{'; flattened per micro-batch for flash attention' if flatten else ''})",
        )
    grouped = args.group_by_length == "on"
    return TrainBatching(
        examples, row_collator, {"train_sampling_strategy": "group_by_length" if grouped else "random"},
        "length-grouped micro-batches" if grouped else "micro-batches in random order (length grouping off)",
    )


# Arguments that do not change how rows are tokenized (everything else joins the cache key, so a new
# data option can only cause a cache miss, never a stale hit).
TRAINING_ONLY_ARGS = frozenset({
    "output_dir", "events", "max_steps", "eval_steps", "patience", "min_delta", "micro_batch_size",
    "global_batch_size", "grad_accum", "lr", "lr_scheduler", "warmup_steps", "weight_decay", "grad_clip", "peft",
    "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "precision", "save_total_limit", "resume",
    "threads", "log_every", "packed_sequence", "group_by_length", "train_file", "valid_file",
})


def encode_splits(args: argparse.Namespace, tokenizer, load_splits, log):
    """(train, valid, whether they came from the cache): the splits tokenized once per data checksum.

    `load_splits(args, tokenizer, log)` is sft_data's reader; it runs only on a cache miss. The cache sits in
    --output-dir (the run's own folder), so a requeued or resumed job reuses it."""
    from hpc_ft.backends.hf_runtime.sft_data import TrainSplits
    from hpc_ft.backends.hf_runtime.token_cache import cached_splits

    settings = {k: v for k, v in sorted(vars(args).items()) if k not in TRAINING_ONLY_ARGS}
    files = [f for key in ("train_file", "valid_file") for f in _as_list(getattr(args, key))]
    return cached_splits(args.output_dir, files, args.model_dir, settings,
                         lambda: load_splits(args, tokenizer, log), encoder=load_splits, split_type=TrainSplits)


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def first_step_event(events, tokens_counted: Callable[[], int], **startup):
    """A Trainer callback writing a `first_step` event (with the start-up figures given) when step 1 ends, and a
    `train_window` event when training ends: wall and CPU seconds of this process and tokens from the end of step 1
    to the end of the last step (CPU seconds make throughput comparable on a machine shared with other work)."""
    import time

    from transformers import TrainerCallback

    class FirstStepEvent(TrainerCallback):
        first = last = None

        def on_step_end(self, args, state, control, **kwargs):
            mark = (state.global_step, time.time(), time.process_time(), tokens_counted())
            if self.first is None:
                self.first = mark
                events.write("first_step", step=state.global_step,
                             **{k: round(v, 3) if isinstance(v, float) else v for k, v in startup.items()})
            self.last = mark

        def on_train_end(self, args, state, control, **kwargs):
            if self.first is not None and self.last[0] > self.first[0]:
                (s0, w0, c0, t0), (s1, w1, c1, t1) = self.first, self.last
                events.write("train_window", steps=s1 - s0, wall_s=round(w1 - w0, 4), cpu_s=round(c1 - c0, 4),
                             tokens=t1 - t0)

    return FirstStepEvent()
