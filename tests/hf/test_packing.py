"""Packed sequences and length grouping on the hf path: per-row loss equal to the unpacked loss, packing bounds, the tokenized-data cache, and real tiny training runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from hpc_ft.backends.hf_runtime import batching, train  # noqa: E402
from hpc_ft.backends.hf_runtime.events import read_events  # noqa: E402
from hpc_ft.backends.hf_runtime.sft_data import IGNORE_INDEX, AnswerOnlyCollator, TrainSplits, load_splits  # noqa: E402
from hpc_ft.backends.hf_runtime.tiny_model import TinyModelSpec, build_tiny_model  # noqa: E402
from hpc_ft.backends.hf_runtime.token_cache import cached_splits  # noqa: E402
from hpc_ft.data.jcommonsenseqa import make_synthetic  # noqa: E402

pytestmark = pytest.mark.hf
SMALL = TinyModelSpec(hidden=32, layers=1, heads=2, intermediate=64, vocab_size=400, warmup_steps=10,
                      echo_steps=0, warmup_batch_size=8)


def random_rows(n: int, seed: int, vocab: int = 300) -> list[dict]:
    """Rows of 5-60 tokens, a prompt (label -100) then an answer, like encode_example makes."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(5, 61, (1,), generator=g))
        prompt = int(torch.randint(2, length - 1, (1,), generator=g))
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return rows


def tiny_llama(attn: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=300, max_position_embeddings=512,
                         attn_implementation=attn)
    return LlamaForCausalLM(config).eval()


def row_losses(logits, labels) -> list[tuple[float, int]]:
    """(summed next-token cross-entropy, label count) of one sequence's logits against its labels."""
    shift_logits, shift_labels = logits[:-1], labels[1:]
    keep = shift_labels != IGNORE_INDEX
    total = torch.nn.functional.cross_entropy(shift_logits[keep].double(), shift_labels[keep], reduction="sum")
    return float(total), int(keep.sum())


def unpacked_row_losses(model, rows) -> list[float]:
    batch = AnswerOnlyCollator(0)(rows)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    out = []
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        total, count = row_losses(logits[i, :n], batch["labels"][i, :n])
        out.append(total / count)
    return out


def packed_row_losses(model, rows, capacity: int, position_ids: str = "per_row") -> tuple[dict[int, float], float]:
    """{row index: loss} from packed sequences, and the model's own (token-mean) loss of the packed batch."""
    packs = batching.pack_rows([len(r["input_ids"]) for r in rows], capacity, seed=3)
    packed = batching.pack_examples(rows, capacity, seed=3)
    batch = batching.PackedCollator(0)(packed)
    if position_ids == "continuous":  # a packing that lets rows see each other: the negative control
        batch["position_ids"] = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])
    with torch.no_grad():
        output = model(**batch)
    out = {}
    for p, members in enumerate(packs):
        start = 0
        for index in members:
            n = len(rows[index]["input_ids"])
            total, count = row_losses(output.logits[p, start:start + n], batch["labels"][p, start:start + n])
            out[index] = total / count
            start += n
    return out, float(output.loss)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_gives_each_row_its_unpacked_loss(attn):
    model = tiny_llama(attn)
    rows = random_rows(12, seed=1)
    unpacked = unpacked_row_losses(model, rows)
    packed, packed_mean = packed_row_losses(model, rows, capacity=128)
    assert sorted(packed) == list(range(len(rows)))
    for index, loss in packed.items():
        assert abs(loss - unpacked[index]) < 1e-4, (index, loss, unpacked[index])
    # the batch loss the Trainer minimises is the token-weighted mean of the same row losses
    counts = [sum(1 for t in r["labels"][1:] if t != IGNORE_INDEX) for r in rows]
    weighted = sum(unpacked[i] * counts[i] for i in range(len(rows))) / sum(counts)
    assert abs(packed_mean - weighted) < 1e-4


def test_rows_sharing_positions_across_a_pack_change_the_loss():
    """The control for the test above: without per-row position ids attention crosses rows and losses move."""
    model = tiny_llama("sdpa")
    rows = random_rows(12, seed=1)
    unpacked = unpacked_row_losses(model, rows)
    packed, _ = packed_row_losses(model, rows, capacity=128, position_ids="continuous")
    assert max(abs(packed[i] - unpacked[i]) for i in packed) > 1e-3


def test_pack_rows_places_every_row_once_within_capacity_and_is_seeded():
    lengths = [int(x) for x in torch.randint(1, 200, (500,), generator=torch.Generator().manual_seed(0))]
    packs = batching.pack_rows(lengths, 256, seed=7)
    assert sorted(i for p in packs for i in p) == list(range(500))
    assert max(sum(lengths[i] for i in p) for p in packs) <= 256
    assert sum(lengths) / (len(packs) * 256) > 0.9  # best fit leaves little room unused
    assert batching.pack_rows(lengths, 256, seed=7) == packs
    assert batching.pack_rows(lengths, 256, seed=8) != packs
    with pytest.raises(ValueError, match="more than the pack capacity"):
        batching.pack_rows([300], 256, seed=0)


def test_packed_collator_restarts_positions_and_masks_each_rows_first_label():
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]
    packed = batching.pack_examples(rows, 8, seed=0)
    assert len(packed) == 1 and packed[0]["n_rows"] == 2
    batch = batching.PackedCollator(0)(packed + [{"input_ids": [4], "labels": [4], "position_ids": [0]}])
    assert batch["input_ids"].shape == (2, 5) and "attention_mask" not in batch
    first = batch["position_ids"][0].tolist()
    assert sorted([first[:3], first[3:]], key=len) in ([[0, 1], [0, 1, 2]],)
    labels = batch["labels"][0].tolist()
    assert labels.count(IGNORE_INDEX) == 2 and labels[0] == IGNORE_INDEX  # each row's first token
    assert batch["position_ids"][1].tolist() == [0, 0, 1, 2, 3]  # padding tail: its own segment, no labels
    assert batch["labels"][1].tolist()[1:] == [IGNORE_INDEX] * 4
    flat = batching.PackedCollator(0, flatten=True)(packed + packed)
    assert flat["input_ids"].shape == (1, 10)


def test_tokenized_splits_are_cached_per_data_checksum(tmp_path):
    data = make_synthetic(tmp_path / "data", n_train=20, n_valid=4, n_test=2, seed=0)
    model_dir = build_tiny_model(data.train.parent, tmp_path / "model", SMALL, log=lambda _: None)
    calls = []

    def load():
        calls.append(1)
        rows = data.train.read_text(encoding="utf-8").splitlines()
        return (TrainSplits(examples=[{"input_ids": [1, len(r)], "labels": [-100, len(r)]} for r in rows]),
                TrainSplits(examples=[{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}]))

    def get(settings):
        return cached_splits(tmp_path / "out", [data.train, data.valid], model_dir, settings, load, load_splits,
                             TrainSplits)

    first, _, hit1 = get({"max_seq_length": 64})
    second, valid, hit2 = get({"max_seq_length": 64})
    assert (hit1, hit2, len(calls)) == (False, True, 1)
    assert second.examples == first.examples and valid.examples == [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}]
    get({"max_seq_length": 65})  # another setting: tokenized again
    data.train.write_text(data.train.read_text(encoding="utf-8") * 2, encoding="utf-8")
    third, _, hit3 = get({"max_seq_length": 64})  # other data bytes: tokenized again
    assert (hit3, len(calls), len(third.examples)) == (False, 3, 2 * len(first.examples))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    data = make_synthetic(tmp_path_factory.mktemp("data"), n_train=48, n_valid=8, n_test=4, seed=0)
    model_dir = build_tiny_model(data.train.parent, tmp_path_factory.mktemp("model") / "tiny", SMALL,
                                 log=lambda _: None)
    return data, model_dir


def run_train(tiny, out: Path, *extra: str) -> list[dict]:
    data, model_dir = tiny
    argv = ["--model-dir", str(model_dir), "--train-file", str(data.train), "--valid-file", str(data.valid),
            "--output-dir", str(out), "--events", str(out / "events.jsonl"), "--max-steps", "4", "--eval-steps", "4",
            "--micro-batch-size", "2", "--global-batch-size", "2", "--lr", "5e-3", "--max-seq-length", "160",
            "--threads", "1", "--log-every", "2", "--resume", "never", *extra]
    assert train.main(argv) == 0
    return read_events(out / "events.jsonl")


def test_packed_training_runs_and_a_second_start_reads_the_tokenized_cache(tiny, tmp_path, capsys):
    events = run_train(tiny, tmp_path / "run", "--packed-sequence")
    assert "packed 48 rows into" in capsys.readouterr().out
    first = [e for e in events if e["kind"] == "first_step"]
    assert len(first) == 1 and first[0]["tokenized_from_cache"] is False
    end = [e for e in events if e["kind"] == "end"][-1]
    assert end["step"] == 4 and end["best_val_loss"] is not None
    # a requeued job starts again in the same output folder: no tokenization this time
    events = run_train(tiny, tmp_path / "run", "--packed-sequence")
    assert [e["tokenized_from_cache"] for e in events if e["kind"] == "first_step"] == [False, True]


def test_unpacked_training_groups_by_length_unless_turned_off(tiny, tmp_path, capsys):
    run_train(tiny, tmp_path / "grouped")
    assert "[batching] length-grouped micro-batches" in capsys.readouterr().out
    run_train(tiny, tmp_path / "plain", "--group-by-length", "off")
    assert "length grouping off" in capsys.readouterr().out


def padded_tokens(options: dict, rows: list[dict], tmp_path) -> int:
    """Tokens (with padding) of one epoch of micro-batches of 8 as the Trainer's own dataloader draws them."""
    from transformers import Trainer, TrainingArguments

    targs = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, use_cpu=True,
                              report_to="none", remove_unused_columns=False, seed=0, **options)
    trainer = Trainer(model=tiny_llama("sdpa"), args=targs, train_dataset=rows, data_collator=AnswerOnlyCollator(0))
    batches = list(trainer.get_train_dataloader())
    assert sum(int(b["attention_mask"].sum()) for b in batches) == sum(len(r["input_ids"]) for r in rows)
    return sum(b["input_ids"].numel() for b in batches)


def test_length_grouping_cuts_the_padding_of_the_trainers_micro_batches(tmp_path):
    import argparse

    rows = random_rows(400, seed=2)
    options = {}
    for group in ("on", "off"):
        args = argparse.Namespace(packed_sequence=False, group_by_length=group, max_seq_length=64, seed=0)
        options[group] = batching.train_batching(rows, args, 0, AnswerOnlyCollator(0)).trainer_options
    useful = sum(len(r["input_ids"]) for r in rows)
    grouped, plain = padded_tokens(options["on"], rows, tmp_path), padded_tokens(options["off"], rows, tmp_path)
    assert grouped < 0.8 * plain and grouped < 1.15 * useful


def test_per_row_attention_of_packs_gives_each_row_its_unpacked_loss_and_gradients(monkeypatch):
    """The CPU path for packs (one causal sdpa per packed row): the same losses as the unpacked rows, and the
    same loss and gradients as sdpa under transformers' block-diagonal mask."""
    from hpc_ft.backends.hf_runtime import packed_attention

    name = packed_attention.register()
    seen = []
    spans = packed_attention.row_spans
    monkeypatch.setattr(packed_attention, "row_spans", lambda ids: seen.append(spans(ids)) or seen[-1])
    reference, ours = tiny_llama("sdpa"), tiny_llama(name)
    rows = random_rows(12, seed=1)
    unpacked = unpacked_row_losses(reference, rows)
    packed, _ = packed_row_losses(ours, rows, capacity=128)
    for index, loss in packed.items():
        assert abs(loss - unpacked[index]) < 1e-4, (index, loss, unpacked[index])
    assert seen and max(len(s) for s in seen[0]) > 1, "the packs went through the per-row path"
    batch = batching.PackedCollator(0)(batching.pack_examples(rows, 128, seed=3))
    grads = []
    for model in (reference, ours):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        grads.append((float(loss.detach()), model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    assert abs(grads[0][0] - grads[1][0]) < 1e-5
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-5)
    # unpacked batches (validation) go through sdpa with their padding mask unchanged
    assert abs(unpacked_row_losses(ours, rows)[0] - unpacked[0]) < 1e-6
