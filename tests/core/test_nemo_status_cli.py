"""`hpc-ft status` on a NeMo run directory (rendered by the reference preset, log written in NeMo's format)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "track" / "fixtures"
CKPT = "megatron_gpt_peft_ptuning_tuning--validation_loss={v:.3f}-step={s}-consumed_samples={c}.0{last}.ckpt"


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "hpc_ft.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_status_of_a_nemo_run_dir_reports_state_step_best_checkpoint_and_early_stop(tmp_path):
    work = tmp_path / "ex01"
    proc = _cli("train", "experiment=nig_elyza_ptuning", f"work_dir={work}", "--dry-run", "--out", str(work / "results"),
                "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(json.loads(proc.stdout)["run_dir"])
    for name in ("job.out", "job.err"):
        shutil.copy(FIXTURES / "nemo_early_stopped_tp4" / name, run_dir / "logs" / name)
    # NeMo writes into the run's own exp_dir: <run dir>/nemo/<name>/checkpoints/mp_rank_XX/
    ckpts = run_dir / "nemo" / "elyza_7b_ptuning" / "checkpoints"
    best = CKPT.format(v=0.073, s=4016, c=4016 * 16, last="")
    last = CKPT.format(v=0.092, s=6024, c=6024 * 16, last="-last")
    for rank in range(4):
        (ckpts / f"mp_rank_{rank:02d}").mkdir(parents=True)
        for name in (best, last):
            (ckpts / f"mp_rank_{rank:02d}" / name).write_bytes(b"adapter state")
    (ckpts / "elyza_7b_ptuning.nemo").write_bytes(b"tar")

    proc = _cli("status", str(run_dir), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    st = json.loads(proc.stdout)
    assert st["state"] == "COMPLETED"
    assert st["end_cause"] == "EARLY_STOPPED" and st["early_stopped"] is True
    assert st["step"] == 6024 and st["max_steps"] == 10000
    assert abs(st["best_val_loss"] - 0.0735) < 0.001
    assert st["best_checkpoint"] == str(ckpts / best)
    assert os.path.isabs(st["best_checkpoint"])
    text = _cli("status", str(run_dir), cwd=tmp_path).stdout
    assert "early    yes" in text and best in text
