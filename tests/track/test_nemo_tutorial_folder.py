"""NeMo runs tracked the way users have them: a folder as the tutorial leaves it (slurm-<jobid>.out at the
top, results/<name>/checkpoints/), the best val loss from NeMo's own lines, plot and status agreeing on the
best checkpoint, and a finished run with its final .nemo called COMPLETED."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hpc_ft.track.plot import best_marker, run_curves
from hpc_ft.track.run_state import checkpoint_step, state_from_run_dir

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NAME = "elyza_7b_ptuning"
CKPT = "megatron_gpt_peft_ptuning_tuning--validation_loss={v:.3f}-step={s}-consumed_samples={c}.0{last}.ckpt"
BEST = CKPT.format(v=0.073, s=4016, c=4016 * 16, last="")
LAST = CKPT.format(v=0.092, s=6024, c=6024 * 16, last="-last")


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "hpc_ft.cli", *args], capture_output=True, text=True, cwd=cwd)


def _tutorial_log(folder: Path, job_id: int = 123456) -> Path:
    """The tutorial's job writes stdout and stderr together into slurm-<jobid>.out in its folder."""
    log = folder / f"slurm-{job_id}.out"
    src = FIXTURES / "nemo_early_stopped_tp4"
    log.write_bytes((src / "job.out").read_bytes() + (src / "job.err").read_bytes())
    return log


def _tutorial_checkpoints(folder: Path, final: bool = True) -> Path:
    ckpts = folder / "results" / NAME / "checkpoints"
    for rank in range(4):
        (ckpts / f"mp_rank_{rank:02d}").mkdir(parents=True)
        for name in (BEST, LAST):
            (ckpts / f"mp_rank_{rank:02d}" / name).write_bytes(b"adapter state")
    if final:
        (ckpts / f"{NAME}.nemo").write_bytes(b"tar")
    return ckpts


@pytest.fixture()
def ex01(tmp_path):
    folder = tmp_path / "ex01"
    folder.mkdir()
    _tutorial_log(folder)
    return folder


def test_status_of_a_tutorial_folder_finds_its_log_and_checkpoints_and_calls_it_completed(ex01, tmp_path):
    ckpts = _tutorial_checkpoints(ex01)
    proc = _cli("status", str(ex01), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    st = json.loads(proc.stdout)
    assert st["state"] == "COMPLETED" and st["end_cause"] == "EARLY_STOPPED"
    assert st["step"] == 6024 and st["max_steps"] == 10000
    assert st["best_checkpoint"] == str(ckpts / BEST)
    assert st["final_artifact"] == str(ckpts / f"{NAME}.nemo")
    assert st["best_val_loss"] == pytest.approx(0.0735, abs=2e-4)  # ModelCheckpoint's value at the best step, not 0.0917


def test_training_ended_without_the_final_nemo_is_not_completed(ex01):
    _tutorial_checkpoints(ex01, final=False)
    st = state_from_run_dir(ex01, "nemo")
    assert st.end_cause.value != "EARLY_STOPPED" and st.final_artifact is None


def test_best_val_loss_of_a_bare_log_comes_from_nemo_lines_never_the_last_logged_value(ex01):
    """No checkpoint folder at all: the log's ModelCheckpoint lines decide (0.0735), not the last val_loss 0.0917."""
    st = state_from_run_dir(ex01, "nemo")
    assert st.val_loss == pytest.approx(0.0917)  # what the progress bar showed last
    assert st.best_val_loss == pytest.approx(0.0735, abs=2e-4)


def test_best_score_of_the_early_stopping_line_when_no_checkpoint_line_was_logged(tmp_path):
    bar = "Epoch 0: :  {p}%| | {s}/100 [00:10<00:10, reduced_train_loss=0.5, val_loss={v}]"
    lines = [bar.format(p=10, s=10, v=0.074), bar.format(p=20, s=20, v=0.081), bar.format(p=30, s=30, v=0.0917),
             "[rank: 0] Monitored metric val_loss did not improve in the last 2 records. Best score: 0.074. "
             "Signaling Trainer to stop."]
    (tmp_path / "slurm-7.out").write_text("\n".join(lines) + "\n", encoding="utf-8")
    st = state_from_run_dir(tmp_path, "nemo")
    assert st.early_stopped and st.val_loss == pytest.approx(0.0917)
    assert st.best_val_loss == pytest.approx(0.074)


def test_a_folder_without_any_run_file_says_what_was_looked_for(tmp_path):
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    proc = _cli("status", str(empty), cwd=tmp_path)
    assert "looked for" in proc.stdout and "slurm-<jobid>.out" in proc.stdout and "results/<name>/" in proc.stdout


def test_plot_marks_the_checkpoint_status_calls_best(ex01, tmp_path):
    """The folder's top-1 checkpoint is step 3514 (the log's lowest val_loss is at 4016): status and plot both
    name 3514, because plot draws what status decided instead of picking its own minimum."""
    ckpts = ex01 / "results" / NAME / "checkpoints"
    kept = CKPT.format(v=0.074, s=3514, c=3514 * 16, last="")
    for rank in range(4):
        (ckpts / f"mp_rank_{rank:02d}").mkdir(parents=True)
        (ckpts / f"mp_rank_{rank:02d}" / kept).write_bytes(b"adapter state")
    row = {"run_id": ex01.name, "run_dir": str(ex01), "backend": "nemo", "executor": "slurm", "job_ids": [],
           "unregistered": True}
    _train, val, st = run_curves(row)
    assert st["best_checkpoint"] == str(ckpts / kept)
    marker = best_marker(st, val)
    assert marker is not None and marker[0] == checkpoint_step(st["best_checkpoint"]) == 3514
    assert marker[1] == pytest.approx(st["best_val_loss"])
    assert min(val, key=lambda p: p[1])[0] == 4016  # what the plot marked before
    proc = _cli("plot", str(ex01), "-o", str(tmp_path / "loss.png"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "loss.png").stat().st_size > 0
