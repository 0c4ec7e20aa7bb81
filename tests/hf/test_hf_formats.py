"""Real tiny hf runs, one per data format: the job trains on the user's rows and its predictions' inputs are those rows' prompts rendered with the chosen template."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
pytest.importorskip("transformers")
pytest.importorskip("peft")

from hpc_ft.backends.hf_runtime import generate, train  # noqa: E402
from hpc_ft.backends.hf_runtime.events import read_events  # noqa: E402
from hpc_ft.backends.hf_runtime.sft_data import IGNORE_INDEX, encode_rendered  # noqa: E402
from hpc_ft.backends.hf_runtime.tiny_model import TinyModelSpec, build_tiny_model  # noqa: E402
from hpc_ft.data.formats import Example  # noqa: E402
from hpc_ft.data.spec import DataOptions  # noqa: E402
from hpc_ft.data.templates import ChatTemplate  # noqa: E402

pytestmark = pytest.mark.hf
SMALL = TinyModelSpec(hidden=32, layers=1, heads=2, intermediate=64, vocab_size=400, warmup_steps=4,
                      echo_steps=0, warmup_batch_size=8)
PAIRS = [("空を飛ぶ乗り物", "飛行機"), ("線路の上を走る乗り物", "電車"), ("字を書く道具", "鉛筆"), ("雨の日に差すもの", "傘")]
RINNA = "ユーザー: {instruction}<NL>コンテキスト: {input}<NL>システム: {output}"
# A chat template in the Llama-2 style: its text holds <s> and </s> itself.
CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token }}[INST] {{ m['content'] }} [/INST]"
                 "{% elif m['role'] == 'assistant' %} {{ m['content'] }} {{ eos_token }}{% endif %}{% endfor %}")


def rows_of(fmt: str) -> list[dict]:
    out = []
    for question, answer in PAIRS * 3:
        out.append({
            "nemo": {"input": f"質問: {question}", "output": answer},
            "alpaca": {"instruction": "答えて", "input": question, "output": answer},
            "chat": {"messages": [{"role": "user", "content": "こんにちは"}, {"role": "assistant", "content": "はい"},
                                  {"role": "user", "content": question}, {"role": "assistant", "content": answer}]},
            "sharegpt": {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]},
            "columns": {"q": question, "a": answer, "id": 7},
        }[fmt])
    return out


# format -> (data options, the prompt each row must be rendered to)
CASES = {
    "nemo": ({}, lambda q: f"質問: {q}"),   # NeMo's "{input} {output}": the space goes with the answer
    "alpaca": ({"prompt_template": RINNA}, lambda q: f"ユーザー: 答えて<NL>コンテキスト: {q}<NL>システム:"),
    "sharegpt": ({"prompt_template": "Q: {input}\nA: {output}"}, lambda q: f"Q: {q}\nA:"),
    "columns": ({"columns": {"input": "q", "output": "a"}, "prompt_template": "{input}→{output}"}, lambda q: f"{q}→"),
    "chat": ({"chat_template": True},
             lambda q: f"<s>[INST] こんにちは [/INST] はい </s><s>[INST] {q} [/INST]"),
}


def write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """One tiny model (its tokenizer learns every format's text), with a chat template added to its tokenizer."""
    base = tmp_path_factory.mktemp("fmt-model")
    files = [write(base / f"{fmt}.jsonl", rows_of(fmt)) for fmt in ("nemo", "alpaca")]
    model = build_tiny_model(files[:1], base / "tiny", SMALL, log=lambda _: None)
    config = json.loads((model / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = CHAT_TEMPLATE
    (model / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return model


@pytest.mark.parametrize("fmt", list(CASES))
def test_a_real_run_trains_on_the_users_rows_and_predicts_from_their_rendered_prompts(fmt, model_dir, tmp_path):
    options, prompt_of = CASES[fmt]
    data_options = json.dumps({**options}, ensure_ascii=False)
    rows = rows_of(fmt)
    train_file, test_file = write(tmp_path / "train.jsonl", rows), write(tmp_path / "test.jsonl", rows[:4])
    out = tmp_path / "run"
    argv = ["--model-dir", str(model_dir), "--train-file", str(train_file), "--valid-file", str(test_file),
            "--data-options", data_options, "--output-dir", str(out), "--events", str(out / "events.jsonl"),
            "--max-steps", "2", "--eval-steps", "2", "--micro-batch-size", "4", "--global-batch-size", "4",
            "--lora-targets", "all-linear", "--max-seq-length", "96", "--threads", "1"]
    assert train.main(argv) == 0
    start = read_events(out / "events.jsonl")[0]
    assert (start["n_train"], start["n_valid"]) == (len(rows), 4)

    predictions = tmp_path / "pred.jsonl"
    assert generate.main(["--model-dir", str(model_dir), "--adapter", f"auto:{out}", "--test-file", str(test_file),
                          "--data-options", data_options, "--output", str(predictions),
                          "--max-new-tokens", "2", "--threads", "1"]) == 0
    got = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
    assert [g["input"] for g in got] == [prompt_of(q) for q, _ in PAIRS]
    assert [g["label"] for g in got] == [a for _, a in PAIRS]


def test_chat_loss_sits_on_every_assistant_turn_only_and_answer_only_loss_can_be_switched_off(model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rendered = ChatTemplate.of(tokenizer).render(Example(messages=(("user", "u1"), ("assistant", "はい"),
                                                                   ("user", "u2"), ("assistant", "電車"))))
    example, cut = encode_rendered(tokenizer, rendered, 96, answer_only_loss=True)
    assert not cut
    learned = tokenizer.decode([t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX])
    assert learned == " はい </s> 電車 </s>"
    assert example["input_ids"].count(tokenizer.bos_token_id) == 2   # the template's own <s>, none added
    everything, _ = encode_rendered(tokenizer, rendered, 96, answer_only_loss=False)
    assert everything["labels"] == everything["input_ids"]


def test_the_tokenizer_without_a_chat_template_is_refused_in_the_job(model_dir, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(model_dir, plain)
    config = json.loads((plain / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("chat_template")
    (plain / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    f = write(tmp_path / "c.jsonl", rows_of("chat"))
    rc = train.main(["--model-dir", str(plain), "--train-file", str(f), "--valid-file", str(f),
                     "--data-options", json.dumps({"chat_template": True}), "--output-dir", str(tmp_path / "o"),
                     "--max-steps", "1", "--threads", "1"])
    assert rc == 2


def test_options_round_trip_as_the_job_argument():
    options = DataOptions(format="alpaca", columns={"input": "q"}, prompt_template="{input}\n{output}",
                          answer_only_loss=False)
    assert DataOptions.from_json(options.to_json()) == options
