"""Real tiny runs of the hf node programs: tiny model, train (events, early stop, resume, preemption, torchrun), generate."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
pytest.importorskip("transformers")
pytest.importorskip("peft")

from omegaconf import OmegaConf  # noqa: E402

from hpc_ft.backends.hf_runtime import generate, train  # noqa: E402
from hpc_ft.backends.hf_runtime.events import read_events, say  # noqa: E402
from hpc_ft.backends.hf_runtime.tiny_model import SNAPSHOT_FILES, TinyModelSpec, build_tiny_model  # noqa: E402
from hpc_ft.backends.launch import distributed  # noqa: E402
from hpc_ft.data.jcommonsenseqa import make_synthetic  # noqa: E402

pytestmark = pytest.mark.hf
REPO = Path(__file__).resolve().parents[2]
SMALL = TinyModelSpec(hidden=32, layers=1, heads=2, intermediate=64, vocab_size=400, warmup_steps=10,
                      echo_steps=10, warmup_batch_size=8)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("data"), n_train=96, n_valid=16, n_test=12, seed=0)


@pytest.fixture(scope="module")
def model_dir(data, tmp_path_factory):
    return build_tiny_model(data.train.parent, tmp_path_factory.mktemp("model") / "tiny", SMALL, log=lambda _: None)


def train_argv(model_dir, data, out: Path, **options) -> list[str]:
    settings = {"max-steps": 10, "eval-steps": 5, "micro-batch-size": 4, "global-batch-size": 4, "lr": "5e-3",
                "lora-targets": "all-linear", "max-seq-length": 128, "threads": 1, "events": out / "events.jsonl"}
    settings.update({key.replace("_", "-"): value for key, value in options.items()})
    argv = ["--model-dir", str(model_dir), "--train-file", str(data.train), "--valid-file", str(data.valid),
            "--output-dir", str(out)]
    for key, value in settings.items():
        argv += [f"--{key}", str(value)]
    return argv


def kinds(events: list[dict]) -> list[str]:
    return [e["kind"] for e in events]


def test_tiny_model_is_a_loadable_snapshot_and_if_missing_keeps_it(model_dir, data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert all((model_dir / name).is_file() for name in SNAPSHOT_FILES)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.model_type == "llama"
    assert 10_000 < sum(p.numel() for p in model.parameters()) < 1_000_000
    prompt = json.loads(data.test.read_text(encoding="utf-8").splitlines()[0])["input"]
    assert tokenizer.decode(tokenizer(prompt)["input_ids"], skip_special_tokens=True) == prompt
    assert {tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token} == {"<s>", "</s>", "<pad>"}

    before = (model_dir / "model.safetensors").stat().st_mtime_ns
    build_tiny_model(data.train.parent, model_dir, SMALL, if_missing=True, log=lambda _: None)
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == before


@pytest.fixture(scope="module")
def early_stopped_run(model_dir, data, tmp_path_factory):
    """Forced early stop: no evaluation can beat the best by 100, so patience 2 stops at the third eval."""
    out = tmp_path_factory.mktemp("early") / "run"
    assert train.main(train_argv(model_dir, data, out, max_steps=200, patience=2, min_delta=100)) == 0
    return out


def test_training_writes_events_checkpoints_best_adapter_and_stops_early(early_stopped_run):
    out = early_stopped_run
    events = read_events(out / "events.jsonl")
    assert kinds(events)[0] == "start" and kinds(events)[-2:] == ["early_stop", "end"]
    start, end = events[0], events[-1]
    assert start["max_steps"] == 200 and start["world_size"] == 1 and start["resumed_from"] is None

    train_events = [e for e in events if e["kind"] == "train"]
    assert [e["step"] for e in train_events] == [5, 10, 15]
    for event in train_events:
        assert event["loss"] > 0 and event["lr"] > 0 and event["step_time_s"] > 0 and event["tokens_per_s"] > 0
        assert event["max_steps"] == 200 and event["time"] > 0
    assert [e["step"] for e in events if e["kind"] == "eval"] == [5, 10, 15]
    assert [e["step"] for e in events if e["kind"] == "checkpoint"] == [5, 10, 15]
    assert all(Path(e["path"]).is_absolute() for e in events if e["kind"] == "checkpoint")

    val_losses = {e["step"]: e["val_loss"] for e in events if e["kind"] == "eval"}
    best_step = min(val_losses, key=val_losses.get)
    assert end["reason"] == "early_stop" and end["step"] == 15
    assert end["best_val_loss"] == pytest.approx(val_losses[best_step], abs=1e-5)
    assert end["best_checkpoint"] == str(out / f"checkpoint-{best_step}")
    assert end["peak_rss_mb"] > 50

    kept = sorted(p.name for p in out.glob("checkpoint-*"))
    assert len(kept) <= 2 and f"checkpoint-{best_step}" in kept and "checkpoint-15" in kept
    assert (out / "best" / "adapter_config.json").is_file()
    assert json.loads((out / "trainer_state.json").read_text())["best_model_checkpoint"] == end["best_checkpoint"]


def test_generate_resolves_the_best_checkpoint_and_scores_base_and_tuned(early_stopped_run, model_dir, data, tmp_path):
    events_file = tmp_path / "eval_events.jsonl"
    argv = ["--model-dir", str(model_dir), "--adapter", f"auto:{early_stopped_run}", "--test-file", str(data.test),
            "--output", str(tmp_path / "pred.jsonl"), "--base-output", str(tmp_path / "base.jsonl"),
            "--events", str(events_file), "--batch-size", "5", "--max-new-tokens", "6"]
    assert generate.main(argv) == 0

    (result,) = read_events(events_file)
    best = json.loads((early_stopped_run / "trainer_state.json").read_text())["best_model_checkpoint"]
    assert result["kind"] == "eval_result" and result["adapter"] == best
    labels = [json.loads(line)["output"] for line in data.test.read_text(encoding="utf-8").splitlines()]
    for key, path in (("accuracy", tmp_path / "pred.jsonl"), ("base_accuracy", tmp_path / "base.jsonl")):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert [row["label"] for row in rows] == labels
        assert all(set(row) == {"input", "pred", "label"} for row in rows)
        assert result[key] == pytest.approx(sum(r["pred"].strip() == r["label"] for r in rows) / len(rows))
    assert result["n"] == len(labels)


def test_resume_continues_from_the_newest_checkpoint_and_a_finished_run_is_left_alone(model_dir, data, tmp_path):
    out = tmp_path / "run"
    assert train.main(train_argv(model_dir, data, out, max_steps=10, patience=0)) == 0
    assert train.main(train_argv(model_dir, data, out, max_steps=20, patience=0)) == 0
    events = read_events(out / "events.jsonl")
    starts = [i for i, e in enumerate(events) if e["kind"] == "start"]
    assert len(starts) == 2 and events[starts[1]]["resumed_from"] == str(out / "checkpoint-10")
    second = events[starts[1]:]
    assert [e["step"] for e in second if e["kind"] == "train"] == [15, 20]
    assert second[-1]["kind"] == "end" and second[-1]["step"] == 20 and second[-1]["reason"] == "max_steps"
    assert json.loads((out / "checkpoint-20" / "trainer_state.json").read_text())["global_step"] == 20

    assert train.main(train_argv(model_dir, data, out, max_steps=20, patience=0)) == 0
    assert len(read_events(out / "events.jsonl")) == len(events)  # nothing left to do, nothing written


def test_one_seed_trains_the_same_adapter_twice_and_another_seed_does_not(model_dir, data, tmp_path):
    """model.seed covers the adapter's initial weights too (they are drawn before the Trainer seeds anything):
    the same job run twice in one process, with the global RNG moved on in between, gives the same losses."""
    import torch
    from safetensors.torch import load_file

    def run(name: str, seed: int):
        torch.rand(7)  # whatever ran before must not matter
        out = tmp_path / name
        assert train.main(train_argv(model_dir, data, out, max_steps=10, patience=0, seed=seed)) == 0
        losses = [e["loss"] for e in read_events(out / "events.jsonl") if e["kind"] == "train"]
        return losses, load_file(str(out / "checkpoint-10" / "adapter_model.safetensors"))

    (first, a), (second, b), (other, c) = run("a", 7), run("b", 7), run("c", 8)
    assert first and first == second
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert other != first and not all(torch.equal(a[k], c[k]) for k in a)


def test_sigusr1_saves_a_checkpoint_at_the_next_step_and_exits_zero(model_dir, data, tmp_path):
    out = tmp_path / "run"
    events_file = out / "events.jsonl"

    def signal_after_first_train_event():
        deadline = time.time() + 60
        while time.time() < deadline:
            if events_file.is_file() and '"train"' in events_file.read_text(encoding="utf-8"):
                os.kill(os.getpid(), signal.SIGUSR1)
                return
            time.sleep(0.01)

    sender = threading.Thread(target=signal_after_first_train_event, daemon=True)
    sender.start()
    assert train.main(train_argv(model_dir, data, out, max_steps=100_000, eval_steps=10_000, log_every=2)) == 0
    sender.join()
    events = read_events(events_file)
    assert kinds(events)[-2:] == ["preempt_saved", "end"]
    saved, end = events[-2], events[-1]
    step = saved["step"]
    assert 2 <= step < 100_000 and saved["signal"] == "SIGUSR1" and end["reason"] == "preempted"
    assert (out / f"checkpoint-{step}" / "trainer_state.json").is_file()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers are given back

    assert train.main(train_argv(model_dir, data, out, max_steps=step + 2, eval_steps=10_000, log_every=2)) == 0
    resumed = [e for e in read_events(events_file) if e["kind"] == "start"][-1]
    assert resumed["resumed_from"] == str(out / f"checkpoint-{step}")
    assert read_events(events_file)[-1]["step"] == step + 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"micro_batch_size": 3, "global_batch_size": 8}, "--global-batch-size=8 is not a multiple"),
        ({"precision": "16"}, "--precision=16"),
        ({"precision": "fp8"}, "--precision=fp8"),
        ({"lora_targets": "q_prj,v_proj"}, "Did you mean 'q_proj'"),
        ({"peft": "qlora"}, "--peft=qlora"),
    ],
)
def test_bad_arguments_are_one_line_user_errors(model_dir, data, tmp_path, capsys, options, message):
    assert train.main(train_argv(model_dir, data, tmp_path / "run", **options)) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("train: error:") and message in last_line
    error = read_events(tmp_path / "run" / "events.jsonl")[-1]
    assert error["kind"] == "error" and error["type"] == "UserError" and message in error["message"]


def test_a_progress_line_goes_out_in_one_write_so_ranks_sharing_a_log_cannot_split_it(monkeypatch):
    # print() writes the text and its newline separately; unbuffered (PYTHONUNBUFFERED=1, as every hf job runs)
    # two ranks then interleaved "...sha1 5ec1[rank 0/2] ...": one rank's end line was lost to the reader
    writes = []

    class Recorder:
        def write(self, text):
            writes.append(text)
            return len(text)

        def flush(self):
            writes.append("<flush>")

    monkeypatch.setattr(sys, "stdout", Recorder())
    say("[rank 1/2] host a end at step 10")
    assert writes == ["[rank 1/2] host a end at step 10\n", "<flush>"]


def test_training_under_torchrun_with_two_cpu_ranks(model_dir, data, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    # the launcher as a single-node job renders it (torch.distributed.run --standalone)
    spec = OmegaConf.create({"trainer": {"devices": 2, "num_nodes": 1},
                             "cluster": {"container_runtime": "none"}, "container": {"image": None}})
    command = distributed(spec, ["hpc_ft.backends.hf_runtime.train",
                                 *train_argv(model_dir, data, out, micro_batch_size=2, global_batch_size=4,
                                             patience=0)], module=True)
    assert "--standalone" in command
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    events = read_events(out / "events.jsonl")
    assert kinds(events).count("start") == 1  # rank 0 alone writes events
    assert events[0]["world_size"] == 2
    assert events[-1]["kind"] == "end" and events[-1]["step"] == 10
    assert (out / "best" / "adapter_model.safetensors").is_file()
    # each rank reports its end; DDP's averaged gradients leave both with the same weights
    ends = re.findall(r"^\[rank (\d)/2\] host \S+ end at step 10: .* trainable weights sha1 (\w+)$", done.stdout, re.M)
    assert sorted(r for r, _ in ends) == ["0", "1"] and ends[0][1] == ends[1][1], done.stdout[-2000:]
