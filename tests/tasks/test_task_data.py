"""The task group at submit: compose, reading (CoNLL, jsonl, csv, column mapping), checks, the seeded validation split, and the run's data/ folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpc_ft.compose import compose_job
from hpc_ft.errors import UserError
from hpc_ft.tasks.prepare import prepare_task_data

pytest.importorskip("datasets")

CONLL = """-DOCSTART- -X- O O

田中 名詞 B-PER
さん 接尾辞 O
は 助詞 O
東京 名詞 I-LOC
に 助詞 O

山田\tNNP\tB-PER
太郎\tNNP\tI-PER
が\tP\tO
京都\tNNP\tB-LOC
大学\tNNP\tI-LOC
"""


def _write(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _spec(tmp_path: Path, *overrides: str):
    return compose_job([f"work_dir={tmp_path}", *overrides])


def test_task_group_sets_model_data_and_monitor():
    spec = compose_job(["task=classification"])
    assert spec.task.name == "classification" and spec.model.name == "tiny_bert"
    assert spec.model.peft.peft_scheme == "none" and spec.data.name == "synthetic-classification"
    es = spec.exp_manager.early_stopping_callback_params
    assert (es.monitor, es.mode) == ("val_f1", "max")
    assert compose_job([]).task.name == "sft"
    pref = compose_job(["task=preference"])
    assert pref.model.family == "llama" and pref.model.peft.peft_scheme == "lora"
    assert list(pref.task.labels) == ["a", "b", "tie"]


def test_user_overrides_win_over_the_task_defaults():
    spec = compose_job(["task=classification", "peft=lora", "model=tiny_llama_head"])
    assert spec.model.peft.peft_scheme == "lora" and spec.model.family == "llama"


def test_nemo_backend_refuses_a_task_naming_backend_hf():
    with pytest.raises(UserError, match=r"task=classification: backend=nemo .* use backend=hf"):
        compose_job(["task=classification", "backend=nemo"])


def test_conll_columns_docstart_and_iob2_repair_counted(tmp_path):
    train = tmp_path / "train.conll"
    train.write_text(CONLL, encoding="utf-8")
    notes: list = []
    spec = _spec(tmp_path, "task=token_classification", "data.source=null", "data.format=conll",
                 f"data.train_file={train}", f"data.validation_file={train}", f"data.test_file={train}")
    prepared = prepare_task_data(spec, notes=notes)
    train_rows = prepared.splits["train"]
    assert [r["tokens"] for r in train_rows] == [["田中", "さん", "は", "東京", "に"], ["山田", "太郎", "が", "京都", "大学"]]
    assert train_rows[0]["tags"] == ["B-PER", "O", "O", "B-LOC", "O"]  # I-LOC after O read as B-LOC
    assert prepared.labels == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert any("1 I- tag(s)" in n and "seqeval" in n for n in notes)


def test_conll_tag_outside_iob2_names_file_and_line(tmp_path):
    train = tmp_path / "train.conll"
    train.write_text("田中 PER\nさん O\n", encoding="utf-8")
    spec = _spec(tmp_path, "task=token_classification", "data.source=null", f"data.train_file={train}",
                 f"data.validation_file={train}", "data.test_file=null")
    with pytest.raises(UserError, match=r"train.conll:1: tag 'PER' is not IOB2"):
        prepare_task_data(spec)


def test_conll_missing_tag_column(tmp_path):
    train = tmp_path / "train.conll"
    train.write_text("田中 B-PER\nさん\n", encoding="utf-8")
    spec = _spec(tmp_path, "task=token_classification", "data.source=null", f"data.train_file={train}",
                 f"data.validation_file={train}", "data.test_file=null")
    with pytest.raises(UserError, match=r"train.conll:2: the tag column is missing"):
        prepare_task_data(spec)


def test_long_sentence_split_at_entity_boundary_or_refused(tmp_path):
    tokens = ["w"] * 5 + ["山田", "太郎"] + ["w"] * 3
    tags = ["O"] * 5 + ["B-PER", "I-PER"] + ["O"] * 3
    train = _write(tmp_path / "train.jsonl", [{"tokens": tokens, "tags": tags}, {"tokens": ["a"], "tags": ["O"]}])
    base = ["task=token_classification", "data.source=null", f"data.train_file={train}",
            f"data.validation_file={train}", "data.test_file=null", "model.data.train_ds.max_seq_length=8"]
    notes: list = []
    prepared = prepare_task_data(_spec(tmp_path, *base), notes=notes)
    pieces = [r["tokens"] for r in prepared.splits["train"]][:2]
    assert pieces == [["w"] * 5, ["山田", "太郎", "w", "w", "w"]]  # 6 tokens fit; the cut does not split the name
    assert any("split into pieces" in n for n in notes)
    with pytest.raises(UserError, match=r"train.jsonl:1: a sentence of 10 tokens .* refused \(task.overlong=refuse\)"):
        prepare_task_data(_spec(tmp_path, *base, "task.overlong=refuse"))


def test_classification_csv_column_mapping_split_and_run_data(tmp_path):
    csv = tmp_path / "reviews.csv"
    lines = ["review,stars"] + [f"text {i},{i % 2}" for i in range(20)]
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = _spec(tmp_path, "task=classification", "data.source=null", f"data.train_file={csv}",
                 "data.validation_file=null", "data.test_file=null", "data.split.validation=0.2",
                 "data.split.seed=7", "+data.columns.text=review", "+data.columns.label=stars")
    prepared = prepare_task_data(spec)
    assert prepared.labels == ["0", "1"]
    assert len(prepared.splits["train"]) == 16 and len(prepared.splits["validation"]) == 4
    record = prepared.write(tmp_path / "run" / "data")
    assert record["split"] == {"validation": 0.2, "seed": 7, "from": str(csv), "train_rows": 16, "validation_rows": 4}
    again = prepare_task_data(spec)
    assert again.splits["validation"] == prepared.splits["validation"]  # the seed fixes the split
    saved = json.loads((tmp_path / "run" / "data" / "labels.json").read_text())
    assert saved["labels"] == ["0", "1"]
    assert (tmp_path / "run" / "data" / "validation.jsonl").read_text().count("\n") == 4


def test_label_missing_from_train_refused_with_file_and_line(tmp_path):
    train = _write(tmp_path / "train.jsonl", [{"text": "良い", "label": "pos"}, {"text": "悪い", "label": "neg"}])
    valid = _write(tmp_path / "valid.jsonl", [{"text": "良い", "label": "pos"}, {"text": "普通", "label": "neutral"}])
    spec = _spec(tmp_path, "task=classification", "data.source=null", f"data.train_file={train}",
                 f"data.validation_file={valid}", "data.test_file=null")
    with pytest.raises(UserError, match=r"valid.jsonl:2: label 'neutral' is not among the train split's labels"):
        prepare_task_data(spec)


def test_preference_one_hot_winner_columns_and_json_turns(tmp_path):
    rows = [{"prompt": '["こんにちは"]', "response_a": '["やあ"]', "response_b": '["どうも", "元気?"]',
             "winner_model_a": 0, "winner_model_b": 1, "winner_tie": 0},
            {"prompt": "p", "response_a": "x", "response_b": "y", "winner_model_a": 0, "winner_model_b": 0,
             "winner_tie": 1}]
    train = _write(tmp_path / "train.jsonl", rows)
    spec = _spec(tmp_path, "task=preference", "data.source=null", f"data.train_file={train}",
                 f"data.validation_file={train}", "data.test_file=null")
    prepared = prepare_task_data(spec)
    assert prepared.splits["train"][0] == {"prompt": "こんにちは", "response_a": "やあ", "response_b": "どうも\n元気?",
                                           "label": "b"}
    assert prepared.splits["train"][1]["label"] == "tie"


def test_preference_empty_response_refused(tmp_path):
    train = _write(tmp_path / "train.jsonl", [{"prompt": "p", "response_a": "x", "response_b": "y", "label": "a"},
                                             {"prompt": "p", "response_a": "x", "response_b": "  ", "label": "b"}])
    spec = _spec(tmp_path, "task=preference", "data.source=null", f"data.train_file={train}",
                 f"data.validation_file={train}", "data.test_file=null")
    with pytest.raises(UserError, match=r"train.jsonl:2: response_b is empty"):
        prepare_task_data(spec)


def test_synthetic_sets_are_written_for_each_task(tmp_path):
    for task, fields in (("classification", {"text", "label"}), ("token_classification", {"tokens", "tags"}),
                         ("preference", {"prompt", "response_a", "response_b", "label"})):
        spec = _spec(tmp_path, f"task={task}")
        prepared = prepare_task_data(spec)
        assert set(prepared.splits["train"][0]) == fields
        assert len(prepared.splits["train"]) == spec.data.synthetic.n_train
        assert set(prepared.splits) == {"train", "validation", "test"}
