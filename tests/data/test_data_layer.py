"""The data layer without torch: every format read with datasets and rendered, the loss part marked, and each bad file refused with file:line and a fix."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hpc_ft.data.dataset import load_file
from hpc_ft.data.files import read_data_file
from hpc_ft.data.spec import DataOptions
from hpc_ft.data.templates import LOSS_CLOSE, LOSS_OPEN, ChatTemplate, FieldTemplate
from hpc_ft.data.formats import Example
from hpc_ft.errors import UserError

ALPACA = [{"instruction": "次の説明に当てはまる言葉を答えて", "input": "空を飛ぶ乗り物", "output": "飛行機"},
          {"instruction": "日本の首都は？", "input": "", "output": "東京"}]
ALPACA_JA = ("### 指示:\n{instruction}\n\n### 入力:\n{input}\n\n### 応答:\n{output}")
ALPACA_JA_NO_INPUT = "### 指示:\n{instruction}\n\n### 応答:\n{output}"


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def refused(path, options=DataOptions()) -> str:
    with pytest.raises(UserError) as caught:
        load_file(path, options)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# ---- formats ---------------------------------------------------------------------------------------------
def test_nemo_rows_use_nemos_default_template_and_mark_the_answer(tmp_path):
    loaded = load_file(jsonl(tmp_path / "t.jsonl", [{"input": "Q: 2+2?", "output": "4"}]), DataOptions())
    assert loaded.format.name == "nemo"
    # as NeMo splits the template, the space before {output} belongs to the answer
    assert loaded.example(0).marked() == f"Q: 2+2?{LOSS_OPEN} 4{LOSS_CLOSE}"
    assert (loaded.prompts, loaded.answers, loaded.labels) == (["Q: 2+2?"], [" 4"], ["4"])


def test_alpaca_rows_keep_the_instruction_and_use_the_no_input_form_for_empty_inputs(tmp_path):
    options = DataOptions(prompt_template=ALPACA_JA, prompt_template_no_input=ALPACA_JA_NO_INPUT)
    loaded = load_file(jsonl(tmp_path / "a.jsonl", ALPACA), options)
    assert loaded.format.name == "alpaca"
    assert loaded.prompts[0] == "### 指示:\n次の説明に当てはまる言葉を答えて\n\n### 入力:\n空を飛ぶ乗り物\n\n### 応答:\n"
    assert loaded.prompts[1] == "### 指示:\n日本の首都は？\n\n### 応答:\n"
    assert loaded.answers == ["飛行機", "東京"]


def test_alpaca_rows_with_no_template_get_alpacas_own_not_a_template_that_drops_the_instruction(tmp_path):
    loaded = load_file(jsonl(tmp_path / "a.jsonl", ALPACA), DataOptions())
    assert "次の説明に当てはまる言葉を答えて" in loaded.prompts[0] and "空を飛ぶ乗り物" in loaded.prompts[0]


def test_a_template_that_would_drop_the_alpaca_instruction_is_refused(tmp_path):
    message = refused(jsonl(tmp_path / "a.jsonl", ALPACA), DataOptions(prompt_template="{input} {output}"))
    assert "model.data.train_ds.prompt_template" in message and "'instruction'" in message


@pytest.mark.parametrize("kind", ["json-array", "csv", "parquet", "save_to_disk"])
def test_every_file_kind_is_read_with_datasets(tmp_path, kind):
    import datasets

    table = datasets.Dataset.from_list(ALPACA)
    path = {"json-array": tmp_path / "a.json", "csv": tmp_path / "a.csv", "parquet": tmp_path / "a.parquet",
            "save_to_disk": tmp_path / "saved"}[kind]
    if kind == "json-array":
        path.write_text(json.dumps(ALPACA, ensure_ascii=False), encoding="utf-8")
    elif kind == "csv":
        table.to_csv(str(path), index=False)
    elif kind == "parquet":
        table.to_parquet(str(path))
    else:
        table.save_to_disk(str(path))
    loaded = load_file(path, DataOptions(prompt_template=ALPACA_JA, prompt_template_no_input=ALPACA_JA_NO_INPUT))
    assert loaded.labels == ["飛行機", "東京"]
    assert loaded.format.name == "alpaca"


def test_chat_and_sharegpt_rows_with_a_field_template_take_one_user_and_one_assistant_turn(tmp_path):
    chat = jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "こんにちは"},
                                                      {"role": "assistant", "content": "どうも"}]}])
    share = jsonl(tmp_path / "s.jsonl", [{"conversations": [{"from": "human", "value": "こんにちは"},
                                                           {"from": "gpt", "value": "どうも"}]}])
    options = DataOptions(prompt_template="ユーザー: {input}<NL>システム: {output}")
    for path, name in ((chat, "chat"), (share, "sharegpt")):
        loaded = load_file(path, options)
        assert loaded.format.name == name
        assert loaded.example(0).marked() == f"ユーザー: こんにちは<NL>システム:{LOSS_OPEN} どうも{LOSS_CLOSE}"


def test_a_column_mapping_names_the_template_fields(tmp_path):
    path = jsonl(tmp_path / "m.jsonl", [{"question": "富士山の高さは？", "answer": "3776m", "id": 1}])
    loaded = load_file(path, DataOptions(columns={"input": "question", "output": "answer"}))
    assert loaded.format.name == "columns"
    assert (loaded.prompts, loaded.answers) == (["富士山の高さは？"], [" 3776m"])


def test_nemo_label_key_names_the_answer_field(tmp_path):
    path = jsonl(tmp_path / "n.jsonl", [{"context": "c1", "question": "q1", "answer": "a1"}])
    loaded = load_file(path, DataOptions(prompt_template="{context}\n{question}\n{answer}", label_key="answer"))
    assert loaded.prompts == ["c1\nq1\n"] and loaded.labels == ["a1"]


def test_rows_with_an_empty_answer_are_skipped_and_counted(tmp_path):
    loaded = load_file(jsonl(tmp_path / "e.jsonl", [{"input": "a", "output": ""}, {"input": "b", "output": "B"}]),
                       DataOptions())
    assert loaded.skipped == 1 and loaded.labels == ["B"]


# ---- the chat template ---------------------------------------------------------------------------------
class ToyChatTokenizer:
    """apply_chat_template of a Llama-2-like chat template (its text holds <s> and </s>), rendered with Jinja."""

    chat_template = ("{% for m in messages %}{% if m.role == 'user' %}<s>[INST] {{ m.content }} [/INST]"
                     "{% elif m.role == 'assistant' %} {{ m.content }} </s>{% else %}<<SYS>>{{ m.content }}<</SYS>>"
                     "{% endif %}{% endfor %}")

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        import jinja2

        return jinja2.Template(self.chat_template).render(messages=messages)


def test_multi_turn_chat_masks_every_non_assistant_turn():
    template = ChatTemplate.of(ToyChatTokenizer())
    rendered = template.render(Example(messages=(("system", "丁寧に"), ("user", "u1"), ("assistant", "a1"),
                                                 ("user", "u2"), ("assistant", "a2"))))
    assert [s.text for s in rendered.segments if s.loss] == [" a1 </s>", " a2 </s>"]
    assert rendered.marked() == ("<<SYS>>丁寧に<</SYS>><s>[INST] u1 [/INST]" + f"{LOSS_OPEN} a1 </s>{LOSS_CLOSE}"
                                 + "<s>[INST] u2 [/INST]" + f"{LOSS_OPEN} a2 </s>{LOSS_CLOSE}")
    assert rendered.prompt.endswith("<s>[INST] u2 [/INST]") and rendered.label == "a2"


def test_template_chat_is_refused_in_one_line_when_the_tokenizer_has_none():
    class NoChat(ToyChatTokenizer):
        chat_template = None

    with pytest.raises(UserError, match="template=chat: .*no chat template"):
        ChatTemplate.of(NoChat())


def test_a_template_must_end_with_the_answer_field():
    with pytest.raises(UserError, match=r"model.data.train_ds.prompt_template=.*\{output\}"):
        FieldTemplate("{output} {input}")
    with pytest.raises(UserError, match="prompt_template"):
        FieldTemplate("{input} {output:>3}")


# ---- bad files: one line with file:line and a fix ----------------------------------------------------------
def test_a_missing_file_a_directory_and_an_empty_file_are_refused(tmp_path):
    assert "no such file" in refused(tmp_path / "nope.jsonl")
    (tmp_path / "folder").mkdir()
    assert "is a directory" in refused(tmp_path / "folder")
    (tmp_path / "empty.jsonl").write_text("\n")
    assert "empty" in refused(tmp_path / "empty.jsonl")


def test_a_file_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "sjis.jsonl"
    path.write_bytes(b'{"input": "a", "output": "b"}\n' + '{"input": "日本", "output": "b"}\n'.encode("shift_jis"))
    message = refused(path)
    assert f"{path}:2: not UTF-8" in message and "iconv" in message


def test_malformed_json_names_its_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"input": "a", "output": "b"}\n\n{"input": "a", "output": \n', encoding="utf-8")
    assert f"{path}:3: not valid JSON" in refused(path)


def test_a_row_without_the_answer_field_names_its_line(tmp_path):
    path = jsonl(tmp_path / "m.jsonl", [{"input": "a", "output": "b"}, {"input": "c"}])
    message = refused(path)
    assert f"{path}:2" in message and "'output'" in message


def test_a_template_naming_a_field_the_rows_lack_is_refused(tmp_path):
    path = jsonl(tmp_path / "m.jsonl", [{"input": "a", "output": "b"}])
    message = refused(path, DataOptions(prompt_template="{instruction} {output}"))
    assert "{instruction}" in message and f"{path}:1" in message and "+data.columns.instruction" in message


@pytest.mark.parametrize(("messages", "expected"), [
    ([{"role": "usr", "content": "a"}, {"role": "assistant", "content": "b"}], "unknown role 'usr'"),
    ([{"role": "user", "content": "a"}], "no assistant turn"),
])
def test_chat_rows_with_an_unknown_role_or_no_assistant_turn_are_refused(tmp_path, messages, expected):
    path = jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "x"},
                                                      {"role": "assistant", "content": "y"}]},
                                        {"messages": messages}])
    message = refused(path, DataOptions(prompt_template="{input} {output}"))
    assert f"{path}:2" in message and expected in message


def test_a_column_mapping_to_a_missing_column_is_refused(tmp_path):
    path = jsonl(tmp_path / "m.jsonl", [{"question": "q", "answer": "a"}])
    message = refused(path, DataOptions(columns={"input": "question", "output": "answr"}))
    assert "data.columns.output=answr" in message and "answer" in message


def test_unknown_format_and_undetectable_rows_are_refused(tmp_path):
    path = jsonl(tmp_path / "m.jsonl", [{"q": "q", "a": "a"}])
    assert "cannot tell the data format" in refused(path)
    assert "data.format=alpacca" in refused(path, DataOptions(format="alpacca"))


def test_a_split_empty_after_filtering_is_refused(tmp_path):
    path = jsonl(tmp_path / "m.jsonl", [{"input": "a", "output": " "}, {"input": "b", "output": ""}])
    assert "empty after filtering" in refused(path)


def test_mixed_value_types_name_the_line(tmp_path):
    path = jsonl(tmp_path / "m.jsonl", [{"input": "a", "output": "b"}, {"input": "a", "output": {"x": 1}}])
    message = refused(path)
    assert f"{path}:2" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_file_is_refused(tmp_path):
    path = jsonl(tmp_path / "m.jsonl", [{"input": "a", "output": "b"}])
    path.chmod(0)
    assert "permission" in refused(path)


def test_rows_are_read_in_file_order_with_line_numbers_past_blank_lines(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text('{"input": "a", "output": "1"}\n\n\n{"input": "b", "output": "2"}\n', encoding="utf-8")
    data = read_data_file(path)
    assert data.where(1) == f"{path}:4"


# ---- length summary at submit: a sample for the percentiles, every row that could be cut counted ----------
def _byte_bpe(model_dir: Path, texts) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(model_dir / "tokenizer.json"))
    return model_dir


def test_a_sampled_length_summary_still_counts_every_row_over_the_limit_exactly(tmp_path, monkeypatch):
    from hpc_ft.data import checks
    from hpc_ft.data.lengths import token_counter

    rows = [{"instruction": "説明に合う言葉", "input": f"空を飛ぶ乗り物 {i}" + (" ".join(str(j * 7919 % 10007) for j in range(120)) if i % 97 == 0 else ""),
             "output": "飛行機"} for i in range(3000)]
    path = jsonl(tmp_path / "train.jsonl", rows)
    counter = token_counter(str(_byte_bpe(tmp_path / "model", [json.dumps(r, ensure_ascii=False) for r in rows[:300]])))
    loaded = load_file(path, DataOptions(prompt_template=ALPACA_JA, prompt_template_no_input=ALPACA_JA_NO_INPUT))
    exact = checks._lengths([loaded], counter, 200)
    monkeypatch.setattr(checks, "SAMPLE_ROWS", 500)
    sampled = checks._lengths([loaded], counter, 200)
    assert exact.sample == 0 and sampled.sample == 500 and sampled.rows == 3000
    assert exact.over == 31 and sampled.over == exact.over and not sampled.over_estimated
    assert sampled.max <= exact.max
    assert abs(sampled.p50 - exact.p50) <= 2 and abs(sampled.p95 - exact.p95) <= 0.1 * exact.p95
    # the bound the sampled path relies on: no row has more tokens than its bound
    bounds = checks._row_bounds(loaded)
    assert all(n <= b for n, b in zip(checks._row_lengths(loaded, counter, None), bounds))


def test_when_most_rows_could_be_over_the_limit_the_count_is_estimated_and_said_so(tmp_path, monkeypatch):
    from hpc_ft.data import checks
    from hpc_ft.data.lengths import token_counter

    rows = [{"instruction": "説明に合う言葉", "input": f"空を飛ぶ乗り物 {i}" + ("、説明" * (i % 7)), "output": "飛行機"}
            for i in range(3000)]
    path = jsonl(tmp_path / "train.jsonl", rows)
    counter = token_counter(str(_byte_bpe(tmp_path / "model", [json.dumps(r, ensure_ascii=False) for r in rows[:300]])))
    loaded = load_file(path, DataOptions(prompt_template=ALPACA_JA, prompt_template_no_input=ALPACA_JA_NO_INPUT))
    limit = sorted(checks._row_lengths(loaded, counter, None))[2000]  # about a third of the rows are over it
    exact = checks._lengths([loaded], counter, limit)
    monkeypatch.setattr(checks, "SAMPLE_ROWS", 500)
    sampled = checks._lengths([loaded], counter, limit)
    assert sampled.over_estimated and abs(sampled.over - exact.over) <= 0.15 * exact.over
