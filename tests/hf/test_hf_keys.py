"""Real tiny runs: the keys the hf runtime used to ignore now change what trains (optimizer, schedule,
clipping, epochs, top-k checkpoints, monitor mode, logging cadence, 16-bit base, gradient checkpointing,
TensorBoard event files that hpc-ft's own reader reads)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
pytest.importorskip("transformers")
pytest.importorskip("peft")

from hpc_ft.backends.hf_runtime import train  # noqa: E402
from hpc_ft.backends.hf_runtime.callbacks import KeepTopK  # noqa: E402
from hpc_ft.backends.hf_runtime.events import read_events  # noqa: E402
from hpc_ft.backends.hf_runtime.optim import lr_factor  # noqa: E402
from hpc_ft.backends.hf_runtime.tiny_model import TinyModelSpec, build_tiny_model  # noqa: E402
from hpc_ft.data.jcommonsenseqa import make_synthetic  # noqa: E402
from hpc_ft.track.tensorboard import find_event_files, read_tb_events  # noqa: E402
from hpc_ft.track.events import Progress, ValLoss  # noqa: E402

pytestmark = pytest.mark.hf
SMALL = TinyModelSpec(hidden=32, layers=1, heads=2, intermediate=64, vocab_size=400, warmup_steps=5,
                      echo_steps=0, warmup_batch_size=8)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("data"), n_train=32, n_valid=8, n_test=4, seed=0)


@pytest.fixture(scope="module")
def model_dir(data, tmp_path_factory):
    return build_tiny_model(data.train.parent, tmp_path_factory.mktemp("model") / "tiny", SMALL, log=lambda _: None)


def run(model_dir, data, out: Path, **options) -> list[dict]:
    settings = {"max-steps": 4, "eval-steps": 2, "micro-batch-size": 4, "global-batch-size": 4, "lr": "1e-2",
                "lora-targets": "all-linear", "max-seq-length": 96, "threads": 1, "events": out / "events.jsonl",
                "patience": 0, "seed": 0}
    flags = [k for k, v in options.items() if v is True]
    settings.update({k.replace("_", "-"): v for k, v in options.items() if v is not True})
    argv = ["--model-dir", str(model_dir), "--train-file", str(data.train), "--valid-file", str(data.valid),
            "--output-dir", str(out)]
    for key, value in settings.items():
        argv += [f"--{key}", str(value)]
    argv += [f"--{k.replace('_', '-')}" for k in flags]
    assert train.main(argv) == 0
    return read_events(out / "events.jsonl")


def weight_change(model_dir, out: Path) -> float:
    """Norm of (trained best weights - base weights) for a full fine-tune."""
    import torch
    from transformers import AutoModelForCausalLM

    # named_parameters counts the tied embedding / output matrix once
    base = dict(AutoModelForCausalLM.from_pretrained(model_dir).named_parameters())
    tuned = dict(AutoModelForCausalLM.from_pretrained(out / "best").named_parameters())
    with torch.no_grad():
        return math.sqrt(sum(float(((tuned[k] - base[k]).float() ** 2).sum()) for k in base))


def test_gradient_clipping_bounds_the_update_and_sgd_differs_from_adamw(model_dir, data, tmp_path):
    # one SGD step of a full fine-tune moves the weights by lr x (clipped) gradient norm
    one = dict(max_steps=1, eval_steps=1, peft="none", lr="1.0", weight_decay=0.0)
    moved = {}
    for name, options in {"clipped": dict(optim="sgd", grad_clip=1e-3), "free": dict(optim="sgd", grad_clip=0),
                          "adamw": dict(optim="adamw", grad_clip=0)}.items():
        run(model_dir, data, tmp_path / name, **options, **one)
        moved[name] = weight_change(model_dir, tmp_path / name)
    clipped, free, adamw = moved["clipped"], moved["free"], moved["adamw"]
    assert clipped <= 1e-3 * 1.01
    assert free > 10 * clipped
    assert abs(adamw - free) > 0.05 * free  # Adam's first step is ~lr per weight, SGD's is lr x gradient


def test_cosine_schedule_with_warmup_and_min_lr_is_the_lr_in_the_events(model_dir, data, tmp_path):
    events = run(model_dir, data, tmp_path / "run", max_steps=6, eval_steps=3, log_every=1,
                 lr_scheduler="CosineAnnealing", warmup_steps=2, min_lr="1e-3")
    lrs = [e["lr"] for e in events if e["kind"] == "train"]
    expected = [1e-2 * lr_factor("cosine", 6, 2, 0.1)(step) for step in range(6)]
    assert lrs == pytest.approx(expected, rel=1e-4)
    assert lrs[0] < lrs[1] == pytest.approx(1e-2) and lrs[-1] < lrs[2] and min(lrs[2:]) >= 1e-3
    start = next(e for e in events if e["kind"] == "start")
    assert start["lr_scheduler"] == "CosineAnnealing" and start["min_lr"] == 1e-3


def test_max_epochs_stops_after_that_many_passes(model_dir, data, tmp_path):
    # 32 rows / micro batch 4 = 8 steps per epoch; 1 epoch stops before max_steps 100
    events = run(model_dir, data, tmp_path / "run", max_steps=100, eval_steps=4, max_epochs=1)
    end = events[-1]
    assert end["kind"] == "end" and end["reason"] == "max_epochs" and end["step"] == 8


def test_save_top_k_keeps_the_best_k_and_the_latest_and_log_every_sets_the_cadence(model_dir, data, tmp_path):
    out = tmp_path / "run"
    events = run(model_dir, data, out, max_steps=8, eval_steps=2, save_top_k=2, log_every=4)
    val = {e["step"]: e["val_loss"] for e in events if e["kind"] == "eval"}
    best2 = sorted(val, key=lambda s: (val[s], -s))[:2]
    kept = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert kept == sorted(set(best2) | {8})
    assert [e["step"] for e in events if e["kind"] == "train"] == [4, 8]


def test_keep_top_k_follows_the_monitor_mode():
    steps, metric = [2, 4, 6, 8], {2: 1.0, 4: 3.0, 6: 2.0, 8: 0.5}
    assert KeepTopK(1, "eval_loss", False, True).keep(steps, metric) == {8}
    assert KeepTopK(1, "eval_loss", True, True).keep(steps, metric) == {4, 8}
    assert KeepTopK(2, "eval_loss", True, True).keep([2, 4, 6], metric) == {4, 6}


def test_bf16_base_gradient_checkpointing_and_tensorboard_files_the_reader_reads(model_dir, data, tmp_path):
    tb = tmp_path / "run" / "logs" / "tensorboard"
    events = run(model_dir, data, tmp_path / "run", max_steps=4, eval_steps=2, log_every=2, precision="bf16",
                 gradient_checkpointing=True, tensorboard_dir=tb)
    start = next(e for e in events if e["kind"] == "start")
    assert start["base_dtype"] == "bfloat16" and start["gradient_checkpointing"] is True
    assert events[-1]["kind"] == "end"
    files = find_event_files(tmp_path / "run")
    assert files and all(tb in f.parents for f in files)
    tb_events = read_tb_events(files)
    val = {e.step: e.val_loss for e in tb_events if isinstance(e, ValLoss)}
    ours = {e["step"]: e["val_loss"] for e in events if e["kind"] == "eval"}
    assert val.keys() == ours.keys() and all(val[s] == pytest.approx(ours[s], rel=1e-5) for s in ours)
    progress = [e for e in tb_events if isinstance(e, Progress)]
    assert progress and progress[-1].step == 4 and progress[-1].train_loss is not None


def test_exact_string_match_validation_generates_and_can_be_monitored(model_dir, data, tmp_path):
    # NeMo's metric.name=exact_string_match: answers of up to tokens_to_generate tokens, scored at each evaluation
    events = run(model_dir, data, tmp_path / "run", max_steps=4, eval_steps=2, val_metric="exact_string_match",
                 val_tokens_to_generate=3, monitor="validation_exact_string_match", mode="max", patience=1)
    evals = [e for e in events if e["kind"] == "eval"]
    assert evals and all(0.0 <= e["val_exact_string_match"] <= 1.0 for e in evals)
    end = events[-1]
    assert end["kind"] == "end"
    # the end record names what early stopping followed; best_val_loss stays a loss (the loss at the best step)
    assert end["monitor"] == "validation_exact_string_match"
    assert end["best_metric"] == pytest.approx(max(e["val_exact_string_match"] for e in evals))
    best_step = int(end["best_checkpoint"].rsplit("-", 1)[1])
    assert end["best_val_loss"] == pytest.approx(next(e["val_loss"] for e in evals if e["step"] == best_step), rel=1e-4)
    with pytest.raises(SystemExit):
        train.build_parser().parse_args(["--model-dir", "m", "--train-file", "t", "--valid-file", "v",
                                         "--output-dir", "o", "--monitor-metric", "val_acc"])
