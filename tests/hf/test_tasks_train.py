"""Classification, NER and preference trained for real through the CLI: each stops early on its metric and beats the untuned model on held-out data; a hand-written CoNLL file trains and evaluates; the merged export loads with its AutoModelFor... class."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.hf

SMALL = ["data.synthetic.n_train=400", "data.synthetic.n_valid=80", "data.synthetic.n_test=100",
         "trainer.val_check_interval=15", "backend.threads=1"]

HAND_CONLL = """-DOCSTART- -X- -X- O

山田 名詞 B-PER
太郎 名詞 I-PER
は 助詞 O
京都 名詞 B-LOC
に 助詞 O
住む 動詞 O

佐藤\t名詞\tB-PER
さん\t接尾\tO
が\t助詞\tO
ソニー\t名詞\tB-ORG
で\t助詞\tO
働く\t動詞\tO

東京 名詞 B-LOC
の 助詞 O
天気 名詞 O
は 助詞 O
晴れ 名詞 O
"""


def cli(*args, env, cwd, timeout=900, check=True):
    proc = subprocess.run([sys.executable, "-m", "hpc_ft.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _env(tmp_path: Path) -> dict:
    return dict(os.environ, HPC_FT_REGISTRY=str(tmp_path / "registry.sqlite"), HF_HUB_OFFLINE="1")


def _predictions(st: dict, name: str = "test_predictions.jsonl") -> list[dict]:
    path = Path(st["run_dir"]) / "predictions" / name
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("task,metric,better", [
    ("classification", "f1", 0.4),
    ("token_classification", "f1", 0.5),
    ("preference", "log_loss", -0.25),
])
def test_demo_task_stops_early_on_its_metric_and_beats_the_untuned_model(tmp_path, task, metric, better):
    env = _env(tmp_path)
    proc = cli("demo", f"task={task}", *SMALL, env=env, cwd=tmp_path)
    assert "== hpc-ft demo report ==" in proc.stdout
    st = json.loads(cli("status", "--json", env=env, cwd=tmp_path).stdout)
    assert st["state"] == "COMPLETED" and st["end_cause"] == "EARLY_STOPPED" and st["step"] < st["max_steps"]
    monitor = "val_log_loss" if task == "preference" else "val_f1"
    assert st["monitor"] == monitor and st["best_metric"] is not None
    gain = st["metrics"][metric] - st["base_metrics"][metric]
    assert (gain >= better) if better > 0 else (gain <= better), (st["metrics"], st["base_metrics"])
    rows = _predictions(st)
    assert len(rows) == 100
    if task == "token_classification":
        assert set(rows[0]) == {"tokens", "pred", "tags"} and len(rows[0]["pred"]) == len(rows[0]["tokens"])
        assert "PER_f1" in st["metrics"] and "LOC_f1" in st["metrics"]
    else:
        assert {"pred", "label", "probs"} <= set(rows[0])
        assert abs(sum(rows[0]["probs"].values()) - 1) < 1e-4
    if task == "preference":
        assert set(rows[0]["probs"]) == {"a", "b", "tie"}
        out = tmp_path / "exported"
        cli("model", "export", st["run_id"], "-o", out, env=env, cwd=tmp_path)
        check = ("from transformers import AutoModelForSequenceClassification as A; "
                 f"m = A.from_pretrained({str(out)!r}); print(type(m).__name__, sorted(m.config.label2id))")
        loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, timeout=300)
        assert loaded.stdout.split("\n")[0] == "LlamaForSequenceClassification ['a', 'b', 'tie']", loaded.stderr[-2000:]


def test_hand_written_conll_file_trains_and_evaluates(tmp_path):
    env = _env(tmp_path)
    conll = tmp_path / "hand.conll"
    conll.write_text(HAND_CONLL, encoding="utf-8")
    # NeMo's file_names keys (what the tutorial pastes) name a task's files too; the optimizer, schedule and
    # epoch keys reach the task's trainer as they reach SFT's
    launch = json.loads(cli(
        "train", "task=token_classification", "data.source=null", f"model.data.train_ds.file_names=[{conll}]",
        f"model.data.validation_ds.file_names=[{conll}]", f"model.data.test_ds.file_names=[{conll}]",
        "data.name=hand", "eval=true", "trainer.max_steps=30", "trainer.max_epochs=12", "trainer.val_check_interval=6",
        "model.micro_batch_size=3", "model.global_batch_size=3", "model.optim.name=sgd", "model.optim.lr=0.05",
        "model.optim.sched.name=constant", "backend.threads=1", "--json", env=env, cwd=tmp_path).stdout)
    st = json.loads(cli("status", launch["run_id"], "--json", "--wait", env=env, cwd=tmp_path).stdout)
    assert st["state"] == "COMPLETED", st.get("log_tail")
    events = [json.loads(line) for line in (Path(st["run_dir"]) / "events.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["kind"] == "start")
    assert (start["optim"], start["lr_scheduler"], start["max_steps"]) == ("sgd", "constant", 12)
    end = next(e for e in events if e["kind"] == "end")
    assert end["reason"] in ("max_epochs", "early_stop") and end["step"] <= 12
    assert list((Path(st["run_dir"]) / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    rows = _predictions(st)
    assert [r["tokens"][0] for r in rows] == ["山田", "佐藤", "東京"]
    assert all(len(r["pred"]) == len(r["tokens"]) == len(r["tags"]) for r in rows)
    assert {"precision", "recall", "f1"} <= set(st["metrics"]) and st["base_metrics"] is not None
    record = json.loads((Path(st["run_dir"]) / "run.json").read_text())
    assert record["data"]["task"]["labels"] == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
