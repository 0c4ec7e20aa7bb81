"""The task runtime's pieces on a real tiny tokenizer and model: first-subword tags, word-aligned pieces mapped back, preference truncation, and the metrics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.hf

from hpc_ft.backends.hf_runtime.task_data import IGNORE_INDEX, encode_tokens, preference_ids  # noqa: E402
from hpc_ft.backends.hf_runtime.task_metrics import entity_metrics, sequence_metrics  # noqa: E402
from hpc_ft.backends.hf_runtime.tiny_task_model import train_bert_tokenizer  # noqa: E402

LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
ROWS = [{"tokens": ["山田太郎さん", "は", "京都府", "に", "住んでいる"], "tags": ["B-PER", "O", "B-LOC", "O", "O"]}]


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["山田", "太郎", "京都", "に", "は", "住む"] * 5
    return train_bert_tokenizer(texts, 300)


def test_first_subword_carries_the_tag_the_rest_are_ignored(tokenizer):
    enc = encode_tokens(tokenizer, ROWS, LABELS, 128, "split")
    [example] = enc.examples
    word_ids = tokenizer(ROWS[0]["tokens"], is_split_into_words=True).word_ids()
    firsts = [i for i, w in enumerate(word_ids) if w is not None and w != (word_ids[i - 1] if i else None)]
    assert len(word_ids) > len(ROWS[0]["tokens"]) + 2  # some words have several subwords
    assert [i for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX] == firsts
    assert [LABELS[example["labels"][i]] for i in firsts] == ROWS[0]["tags"]


def test_sentence_too_long_for_its_subwords_is_cut_at_word_boundaries(tokenizer):
    enc = encode_tokens(tokenizer, ROWS, LABELS, 12, "split")  # subwords per word: 6, 1, 4, 1, 9
    assert len(enc.pieces) > 1 and enc.truncated == len(enc.pieces) - 1
    covered = [w for _, start, end in enc.pieces for w in range(start, end)]
    assert covered == list(range(len(ROWS[0]["tokens"])))
    assert all(len(e["input_ids"]) <= 12 for e in enc.examples)
    from hpc_ft.errors import UserError

    with pytest.raises(UserError, match="task.overlong=refuse"):
        encode_tokens(tokenizer, ROWS, LABELS, 12, "refuse")


def test_predictions_map_back_to_whole_tokens(tokenizer, tmp_path):
    from hpc_ft.backends.hf_runtime.task_eval import score
    from hpc_ft.backends.hf_runtime.tiny_task_model import TinyEncoderSpec, build_bert

    model_dir = tmp_path / "bert"
    build_bert(TinyEncoderSpec(), tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    args = argparse.Namespace(task="token_classification", model_dir=str(model_dir), max_seq_length=12,
                              overlong="split", batch_size=4, seed=1)
    from hpc_ft.backends.hf_runtime.task_eval import load_for_eval

    metrics = score(args, load_for_eval(args, LABELS, None), tokenizer, ROWS, LABELS, tmp_path / "p.jsonl")
    [row] = [json.loads(x) for x in Path(tmp_path / "p.jsonl").read_text().splitlines()]
    assert row["tokens"] == ROWS[0]["tokens"] and len(row["pred"]) == 5 and row["tags"] == ROWS[0]["tags"]
    assert set(row["pred"]) <= set(LABELS) and {"precision", "recall", "f1"} <= set(metrics)


def test_preference_parts_each_keep_their_share(tokenizer):
    row = {"prompt": "京都 " * 40, "response_a": "山田 " * 40, "response_b": "太郎 " * 40, "label": "a"}
    ids, cut = preference_ids(tokenizer, row, 40)
    assert cut and len(ids) <= 40
    text = tokenizer.decode(ids)
    assert "[A]" in text and "[B]" in text


def test_metrics_match_their_definitions():
    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1]]))
    m = sequence_metrics(logits, np.array([0, 1, 2, 1]), 3)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.7, 0.8, 0.4, 0.3])))
    assert m["f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)  # per class: P .5 R 1; P 1 R .5; P 1 R 1
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "I-PER", "O", "I-LOC"]]  # I-LOC after O: seqeval reads it as a LOC entity
    e = entity_metrics(pred, gold)
    assert e["f1"] == 1.0 and e["PER_f1"] == 1.0 and e["LOC_f1"] == 1.0
    e = entity_metrics([["B-PER", "I-PER", "O", "O"]], gold)  # the exact PER span, LOC missed
    assert e["precision"] == 1.0 and e["recall"] == 0.5 and e["LOC_recall"] == 0.0
