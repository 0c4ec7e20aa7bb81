"""Exact-match accuracy of predictions files, and the errors a broken file gives."""

from __future__ import annotations

import json

import pytest

from hpc_ft.errors import UserError
from hpc_ft.track.accuracy import abbreviate, normalize_answer, score_predictions


def write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records), encoding="utf-8")
    return path


def test_exact_match_after_whitespace_and_eos_stripping(tmp_path):
    path = write(
        tmp_path / "p_test_jcqa_inputs_preds_labels.jsonl",
        [
            {"input": "### 指示:\n問題 1\n### 応答:", "pred": " マグロ</s>", "label": "マグロ"},
            {"input": "q2", "pred": "田園\n", "label": "田園"},
            {"input": "q3", "pred": "腹を下す", "label": "腹を下す<|endoftext|>"},
            {"input": "q4", "pred": "ハンドル", "label": "蛇口"},
            "",
            {"input": "q5", "pred": "b", "label": ["a", "b"]},
            {"input": "q6", "pred": 3, "label": "3"},
        ],
    )
    report = score_predictions(path)
    assert (report.n, report.correct) == (6, 5)
    assert report.accuracy == pytest.approx(5 / 6)
    assert [(m.line, m.input, m.pred, m.label) for m in report.misses] == [(4, "q4", "ハンドル", "蛇口")]


def test_misses_are_capped_and_inputs_abbreviated(tmp_path):
    long_input = "前置き " * 50 + "最後の質問はこれですか？"
    path = write(tmp_path / "p.jsonl", [{"input": long_input, "pred": "x", "label": str(i)} for i in range(5)])
    report = score_predictions(path, max_misses=2)
    assert report.n == 5 and report.correct == 0 and len(report.misses) == 2
    assert len(report.misses[0].input) == 80 and report.misses[0].input.endswith("最後の質問はこれですか？")


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{not json", "not valid JSON"),
        ('{"input": "q", "pred": "a"}', "'pred' and 'label'"),
        ('["a", "b"]', "'pred' and 'label'"),
        ('{"pred": null, "label": "a"}', "'pred' must be a string"),
    ],
)
def test_a_malformed_line_names_file_and_line(tmp_path, bad, message):
    path = write(tmp_path / "p.jsonl", [{"input": "q", "pred": "a", "label": "a"}, bad])
    with pytest.raises(UserError) as info:
        score_predictions(path)
    assert f"{path}:2:" in str(info.value) and message in str(info.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        score_predictions(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    report = score_predictions(tmp_path / "empty.jsonl")
    assert report.n == 0 and report.accuracy is None


def test_normalize_and_abbreviate():
    assert normalize_answer("  answer </s> </s>\n") == "answer"
    assert normalize_answer("a</s>b") == "a</s>b"
    assert abbreviate("a\n b\tc") == "a b c"
    assert len(abbreviate("x" * 500, 40)) == 40
