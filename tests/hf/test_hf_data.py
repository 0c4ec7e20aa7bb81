"""JCommonsenseQA conversion and the synthetic set: exact reference output, clear errors, determinism (no torch needed)."""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict

import pytest

from hpc_ft.data.jcommonsenseqa import (
    SYNTHETIC_CONCEPTS,
    convert_jglue,
    format_prompt,
    make_synthetic,
)
from hpc_ft.errors import UserError

ROW = {"q_id": 7, "question": "水を出すときに捻るものは？", "choice0": "蛇口", "choice1": "ハンドル",
       "choice2": "流し", "choice3": "釘", "choice4": "食器棚", "label": 0}


def jglue_rows(n: int, offset: int = 0) -> list[dict]:
    words = ["りんご", "電車", "図書館", "時計", "傘", "猫", "星", "雪"]
    return [
        {"q_id": offset + i, "question": f"質問{offset + i}は何？",
         **{f"choice{c}": f"{words[(i + c) % len(words)]}{i}" for c in range(5)}, "label": (i * 3) % 5}
        for i in range(n)
    ]


def write_json_lines(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def reference_conversion(train_rows, valid_rows, n_valid):
    """The tutorial's script, transcribed: global random.seed(42), shuffle, last n_valid -> valid."""
    def form_question(obj):
        st = ""
        st += "### 指示:\n"
        st += " 与えられた選択肢の中から、最適な答えを選んでください。"
        st += " 出力は以下から選択してください：\n"
        for c in range(5):
            st += f"- {obj['choice' + str(c)]}\n"
        st += "### 入力:\n"
        st += f"{obj['question']}\n"
        st += "### 応答:"
        return st

    def process(dataset):
        return [{"input": form_question(d), "output": f"{d['choice' + str(d['label'])]}"} for d in dataset]

    random.seed(42)
    train = process(train_rows)
    random.shuffle(train)
    return train[:-n_valid], train[-n_valid:], process(valid_rows)


def as_text(rows) -> str:
    return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in rows)


def test_prompt_is_the_reference_prompt_character_for_character():
    assert format_prompt(ROW) == (
        "### 指示:\n 与えられた選択肢の中から、最適な答えを選んでください。 出力は以下から選択してください：\n"
        "- 蛇口\n- ハンドル\n- 流し\n- 釘\n- 食器棚\n### 入力:\n水を出すときに捻るものは？\n### 応答:"
    )


@pytest.mark.parametrize("layout", ["dataset_dir", "jglue_root"])
def test_conversion_matches_the_reference_script_byte_for_byte(tmp_path, layout):
    train_rows, valid_rows = jglue_rows(23), jglue_rows(4, offset=100)
    source = tmp_path / "JGLUE"
    dataset_dir = source / "datasets" / "jcommonsenseqa-v1.1" if layout == "jglue_root" else source
    write_json_lines(dataset_dir / "train-v1.1.json", train_rows)
    write_json_lines(dataset_dir / "valid-v1.1.json", valid_rows)

    prepared = convert_jglue(source, tmp_path / "out", seed=42, n_valid=5)

    want_train, want_valid, want_test = reference_conversion(train_rows, valid_rows, 5)
    assert prepared.train.read_text(encoding="utf-8") == as_text(want_train)
    assert prepared.valid.read_text(encoding="utf-8") == as_text(want_valid)
    assert prepared.test.read_text(encoding="utf-8") == as_text(want_test)
    assert "質問" in prepared.train.read_text(encoding="utf-8")  # ensure_ascii=False: Japanese stays readable
    assert prepared.rows == {"train": 18, "valid": 5, "test": 4}
    for split, path in prepared.paths().items():
        assert prepared.sha256[split] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_different_seed_gives_a_different_split(tmp_path):
    write_json_lines(tmp_path / "src" / "train-v1.1.json", jglue_rows(30))
    write_json_lines(tmp_path / "src" / "valid-v1.1.json", jglue_rows(3))
    a = convert_jglue(tmp_path / "src", tmp_path / "a", seed=42, n_valid=5)
    b = convert_jglue(tmp_path / "src", tmp_path / "b", seed=43, n_valid=5)
    assert a.sha256["valid"] != b.sha256["valid"]
    assert a.sha256["test"] == b.sha256["test"]


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ('{"q_id": 1, "question": "q", "choice0": "a", "choice1": "b", "choice2": "c", "choice3": "d", "label": 0}',
         "choice4"),
        ('{"q_id": 1, "question": "q", "choice0": "a", "choice1": "b", "choice2": "c", "choice3": "d", "choice4": "e"}',
         "label"),
        ('{"q_id": 1, "question": "q", "choice0": "a", "choice1": "b", "choice2": "c", "choice3": "d", '
         '"choice4": "e", "label": 7}', "label"),
        ('{"q_id": 1, "question": ', "not valid JSON"),
    ],
)
def test_a_malformed_row_names_file_line_and_field(tmp_path, bad_line, expected):
    good = [json.dumps(r, ensure_ascii=False) for r in jglue_rows(3)]
    (tmp_path / "train-v1.1.json").write_text("\n".join(good + [bad_line]) + "\n", encoding="utf-8")
    write_json_lines(tmp_path / "valid-v1.1.json", jglue_rows(2))
    with pytest.raises(UserError) as caught:
        convert_jglue(tmp_path, tmp_path / "out", n_valid=1)
    message = str(caught.value)
    assert "train-v1.1.json:4" in message
    assert expected in message
    assert "\n" not in message


def test_missing_source_and_oversized_validation_split_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="JGLUE"):
        convert_jglue(tmp_path / "nowhere", tmp_path / "out")
    write_json_lines(tmp_path / "train-v1.1.json", jglue_rows(10))
    write_json_lines(tmp_path / "valid-v1.1.json", jglue_rows(2))
    with pytest.raises(UserError, match="n_valid=1000"):
        convert_jglue(tmp_path, tmp_path / "out")


def test_synthetic_set_is_deterministic_and_goes_through_the_jglue_conversion(tmp_path):
    a = make_synthetic(tmp_path / "a", n_train=60, n_valid=10, n_test=15, seed=3)
    b = make_synthetic(tmp_path / "b", n_train=60, n_valid=10, n_test=15, seed=3)
    c = make_synthetic(tmp_path / "c", n_train=60, n_valid=10, n_test=15, seed=4)
    assert a.sha256 == b.sha256
    assert a.sha256["train"] != c.sha256["train"]
    assert a.rows == {"train": 60, "valid": 10, "test": 15}
    assert (tmp_path / "a" / "raw" / "train-v1.1.json").is_file()
    assert (tmp_path / "a" / "raw" / "valid-v1.1.json").is_file()


def test_synthetic_answer_is_fixed_by_the_concept_and_sits_at_a_random_position(tmp_path):
    make_synthetic(tmp_path, n_train=300, n_valid=20, n_test=20, seed=0)
    raw = [json.loads(line) for line in (tmp_path / "raw" / "train-v1.1.json").read_text(encoding="utf-8").splitlines()]
    answers_of = defaultdict(set)
    for row in raw:
        choices = [row[f"choice{i}"] for i in range(5)]
        assert len(set(choices)) == 5
        concept = next(c for c, _ in SYNTHETIC_CONCEPTS if row["question"].startswith(c))
        answers_of[concept].add(choices[row["label"]])
    assert all(len(answers) == 1 for answers in answers_of.values())
    assert {row["label"] for row in raw} == {0, 1, 2, 3, 4}
    converted = [json.loads(line) for line in (tmp_path / "train-v1.1.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(row["output"] in row["input"] for row in converted)
