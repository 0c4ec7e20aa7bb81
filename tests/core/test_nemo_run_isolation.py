"""NeMo runs never share state: each run has its own NeMo exp_dir (inside its run directory), so
resume_if_exists, a requeue, `hpc-ft resume` and the eval job's adapter all stay with that run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from hpc_ft.backends import nemo
from hpc_ft.compose import compose_job
from hpc_ft.submit.rundir import config_yaml

FIXTURES = Path(__file__).resolve().parents[1] / "track" / "fixtures"
NAME = "elyza_7b_ptuning"
CKPT = NAME.replace("elyza_7b", "megatron_gpt_peft") + "_tuning--validation_loss={v:.3f}-step={s}-consumed_samples={c}.0{last}.ckpt"


def _values(argv) -> dict:
    return dict(str(a).split("=", 1) for a in argv if "=" in str(a) and not str(a).startswith("-"))


def _spec(work: Path):
    return compose_job(["experiment=nig_elyza_ptuning", f"work_dir={work}"])


def test_two_runs_of_one_name_get_their_own_nemo_exp_dir_and_eval_loads_their_own_adapter(tmp_path):
    spec = _spec(tmp_path / "ex01")
    base = Path(spec.exp_manager.exp_dir) / NAME
    run_a, run_b = base / "20260101-000000-aaaaaaaaaa", base / "20260101-000001-bbbbbbbbbb"
    train_a = _values(nemo.train_steps(spec, str(run_a))[0].argv)
    train_b = _values(nemo.train_steps(spec, str(run_b))[0].argv)
    # NeMo's log dir (where resume_if_exists looks for checkpoints) is <exp_dir>/<name>: one per run
    assert train_a["exp_manager.exp_dir"] == str(run_a / "nemo")
    assert train_b["exp_manager.exp_dir"] == str(run_b / "nemo")
    assert train_a["exp_manager.name"] == train_b["exp_manager.name"] == NAME  # the tutorial's line, kept
    eval_a = _values(nemo.eval_steps(spec, str(run_a))[0].argv)
    assert eval_a["model.peft.restore_from_path"] == str(run_a / "nemo" / NAME / "checkpoints" / f"{NAME}.nemo")
    assert nemo.exp_paths(spec, str(run_a))["peft_nemo"] == eval_a["model.peft.restore_from_path"]


def test_eval_without_a_run_and_without_an_adapter_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hpc_ft.cli", "eval", "experiment=nig_elyza_ptuning",
                           f"work_dir={tmp_path / 'ex01'}", "--dry-run"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "model.peft.restore_from_path" in proc.stderr and "--run" in proc.stderr
    assert "Traceback" not in proc.stderr


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "hpc_ft.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_status_of_a_run_reads_its_own_checkpoints_never_a_sibling_runs(tmp_path):
    """Run A trained and saved checkpoints; run B of the same name has none: B's status shows none of A's."""
    spec = _spec(tmp_path / "ex01")
    base = Path(spec.exp_manager.exp_dir) / NAME
    runs = []
    for run_id in ("20260101-000000-aaaaaaaaaa", "20260101-000001-bbbbbbbbbb"):
        run_dir = base / run_id
        (run_dir / "logs").mkdir(parents=True)
        (run_dir / "config.yaml").write_text(config_yaml(spec), encoding="utf-8")
        (run_dir / "run.json").write_text(json.dumps({"run_id": run_id, "backend": "nemo", "name": NAME}))
        runs.append(run_dir)
    run_a, run_b = runs
    for name in ("job.out", "job.err"):
        shutil.copy(FIXTURES / "nemo_early_stopped_tp4" / name, run_a / "logs" / name)
    ckpts = Path(nemo.exp_paths(spec, str(run_a))["checkpoints"])
    best = CKPT.format(v=0.073, s=4016, c=4016 * 16, last="")
    for rank in range(4):
        (ckpts / f"mp_rank_{rank:02d}").mkdir(parents=True)
        (ckpts / f"mp_rank_{rank:02d}" / best).write_bytes(b"adapter state")
    (ckpts / f"{NAME}.nemo").write_bytes(b"tar")

    st_a = json.loads(_cli("status", str(run_a), "--json", cwd=tmp_path).stdout)
    assert st_a["best_checkpoint"] == str(ckpts / best)
    assert st_a["final_artifact"] == str(ckpts / f"{NAME}.nemo")
    st_b = json.loads(_cli("status", str(run_b), "--json", cwd=tmp_path).stdout)
    assert st_b["best_checkpoint"] is None and st_b["final_artifact"] is None
    assert st_b["state"] != "COMPLETED"
