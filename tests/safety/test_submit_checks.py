"""Submit-time checks that are not refusals: a warning that is shown, group overrides on an eval of a run,
and a tiny model built only where it was asked for."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hpc_ft.compose import compose_job
from hpc_ft.submit.rundir import config_yaml
from tests.core.sbatch_parse import sbatch_options
from tests.safety.helpers import hydra_quote, run_cli

SMALL_DATA = ["data.synthetic.n_train=40", "data.synthetic.n_valid=8", "data.synthetic.n_test=8", "data.n_valid=8"]


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "HPC_FT_REGISTRY": str(tmp_path / "registry.sqlite")}


def test_max_steps_below_val_check_interval_is_a_warning_and_the_job_still_renders(tmp_path):
    proc = run_cli(["train", f"work_dir={hydra_quote(str(tmp_path / 'w'))}", "trainer.max_steps=10",
                    "trainer.val_check_interval=25", *SMALL_DATA, "--dry-run"], env=_env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warning = next(line for line in proc.stderr.splitlines() if "trainer.max_steps=10" in line)
    assert warning.startswith("hpc-ft: warning:") and "trainer.val_check_interval=25" in warning
    assert "never validates" in warning


def test_eval_of_a_run_on_another_cluster_composes_that_cluster(tmp_path):
    """`eval --run RUN cluster=slurm_local` used to fail with `str is not a subclass of ClusterConf`."""
    spec = compose_job([f"work_dir={tmp_path / 'w'}"])
    run_dir = tmp_path / "w" / "results" / spec.exp_manager.name / "20260101-000000-aaaaaaaaaa"
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "predictions").mkdir()
    (run_dir / "config.yaml").write_text(config_yaml(spec), encoding="utf-8")
    (run_dir / "run.json").write_text(json.dumps({"run_id": run_dir.name, "backend": "hf", "name": spec.exp_manager.name,
                                                  "run_dir": str(run_dir), "executor": "local", "jobs": {}}))
    proc = run_cli(["eval", "--run", str(run_dir), "cluster=slurm_local", "--dry-run"], env=_env(tmp_path),
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    opts = sbatch_options(proc.stdout)
    assert opts.get("--partition") == "debug"  # slurm_local's partition: the cluster group was applied


def test_eval_of_a_run_refuses_switching_what_was_trained(tmp_path):
    spec = compose_job([f"work_dir={tmp_path / 'w'}"])
    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(config_yaml(spec), encoding="utf-8")
    proc = run_cli(["eval", "--run", str(run_dir), "model=elyza_llama2_7b", "--dry-run"], env=_env(tmp_path),
                   cwd=tmp_path)
    assert proc.returncode == 2 and "model=elyza_llama2_7b" in proc.stderr and "cluster=" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_explicit_model_build_tiny_builds_at_the_path_given(tmp_path):
    path = tmp_path / "my-tiny"
    proc = run_cli(["train", f"work_dir={hydra_quote(str(tmp_path / 'w'))}", f"model.hf_path={hydra_quote(str(path))}",
                    "model.build=tiny", *SMALL_DATA, "--dry-run"], env=_env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert str(path) in proc.stdout  # the build step writes there
