"""The seeds' workflows as presets, end to end through `hpc-ft train ... eval=true` on tiny models built
here: rinna's template on a GPT-NeoX (seed 003), the Japanese Alpaca prompt on alpaca rows (seed 003's
other arm), and the tokenizer's chat template with answer-only loss on a Llama that has one (seed 004
without 4-bit). Each checks the model family that trained, and that the eval's inputs are the user's
rows rendered with the preset's template."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.hf
pytest.importorskip("transformers")

SMALL = ["data.synthetic.n_train=48", "data.synthetic.n_valid=8", "data.synthetic.n_test=6", "data.n_valid=8",
         "trainer.max_steps=6", "trainer.val_check_interval=3", "model.micro_batch_size=8",
         "model.global_batch_size=8", "model.data.test_ds.tokens_to_generate=4", "backend.threads=1"]
TINY = ["--hidden", "32", "--layers", "1", "--heads", "2", "--intermediate", "64", "--vocab-size", "400",
        "--warmup-steps", "5", "--echo-steps", "0", "--threads", "1"]


def hpc_ft(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HPC_FT_REGISTRY=str(cwd / "registry.sqlite"), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "hpc_ft.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=900)


def run_preset(experiment: str, tmp_path: Path, model: str, *build: str) -> tuple[dict, Path]:
    """Prepare the preset's rows, build its tiny model small (the job's own build step then finds it and
    skips, as --if-missing says), then `hpc-ft train ... eval=true` and wait for the end."""
    prep = hpc_ft("data", "prepare", f"experiment={experiment}", *SMALL[:4], cwd=tmp_path)
    assert prep.returncode == 0, prep.stderr
    built = subprocess.run(
        [sys.executable, "-m", "hpc_ft.backends.hf_runtime.tiny_model", "--train-file",
         str(tmp_path / "data" / "alpaca" / "train.jsonl"), "--output", str(tmp_path / "models" / model),
         *build, *TINY], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    proc = hpc_ft("train", f"experiment={experiment}", "eval=true", *SMALL, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    status = hpc_ft("status", "--wait", "--json", cwd=tmp_path)
    st = json.loads(status.stdout)
    assert st["state"] == "COMPLETED", status.stdout[-3000:]
    (run_dir,) = [p for p in (tmp_path / "results").glob("*/*") if (p / "run.json").is_file()]
    script = (run_dir / "job.sbatch").read_text(encoding="utf-8")
    build_line = next(line for line in script.splitlines() if "hf_runtime.tiny_model" in line)
    assert all(arg in build_line for arg in build), build_line  # the preset's job builds the same family
    return st, run_dir


def predictions(run_dir: Path) -> list[dict]:
    text = (run_dir / "predictions" / "test_predictions.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def test_rows(tmp_path: Path) -> list[dict]:
    return [json.loads(x) for x in (tmp_path / "data" / "alpaca" / "test.jsonl").read_text(encoding="utf-8").splitlines()]


test_rows.__test__ = False  # a helper, not a test


def adapter_targets(run_dir: Path) -> set[str]:
    config = json.loads((run_dir / "checkpoints" / "best" / "adapter_config.json").read_text())
    return set(config["target_modules"])


def test_seed_003_rinna_template_on_a_tiny_gpt_neox(tmp_path):
    st, run_dir = run_preset("rinna_neox_lora", tmp_path, "tiny_neox", "--family", "gpt_neox")
    assert json.loads((tmp_path / "models" / "tiny_neox" / "config.json").read_text())["model_type"] == "gpt_neox"
    assert adapter_targets(run_dir) == {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}  # LoRA [all]
    rows, preds = test_rows(tmp_path), predictions(run_dir)
    assert len(preds) == len(rows)
    for row, pred in zip(rows, preds):
        # NeMo splits a template at the answer field with the space before it on the answer's side
        assert pred["input"].endswith(f"ユーザー: {row['instruction']}<NL><NL>システム:")
        assert pred["label"] == row["output"]


def test_seed_003_alpaca_ja_template_on_alpaca_rows(tmp_path):
    st, run_dir = run_preset("alpaca_ja_lora", tmp_path, "tiny_llama_alpaca", "--family", "llama")
    assert json.loads((tmp_path / "models" / "tiny_llama_alpaca" / "config.json").read_text())["model_type"] == "llama"
    for row, pred in zip(test_rows(tmp_path), predictions(run_dir)):
        assert f"### 指示:\n{row['instruction']}\n\n" in pred["input"] and pred["input"].endswith("### 応答:\n")
        assert pred["label"] == row["output"]


def test_seed_004_chat_template_with_answer_only_loss_on_a_tiny_llama_that_has_one(tmp_path):
    st, run_dir = run_preset("chat_lora", tmp_path, "tiny_llama_chat", "--family", "llama", "--chat-template", "llama2")
    tokenizer_config = json.loads((tmp_path / "models" / "tiny_llama_chat" / "tokenizer_config.json").read_text())
    assert "[INST]" in (tokenizer_config.get("chat_template") or
                        (tmp_path / "models" / "tiny_llama_chat" / "chat_template.jinja").read_text())
    for row, pred in zip(test_rows(tmp_path), predictions(run_dir)):
        user = "\n\n".join(p for p in (row["instruction"], row["input"]) if p)
        assert pred["input"] == f"<s>[INST] {user} [/INST]"
        assert pred["label"] == row["output"]
