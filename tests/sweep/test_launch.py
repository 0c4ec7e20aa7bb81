"""`hpc-ft train -m`: points pruned by the planner with the reason, the rest rendered as one array (dry runs)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hpc_ft.compose.compose import compose_job
from hpc_ft.errors import UserError
from hpc_ft.submit import rundir as rd
from hpc_ft.submit.launch import render_scripts
from hpc_ft.sweep.launch import launch_sweep
from hpc_ft.track.job_log import GPU_OOM_MARKERS


def _dry_json(cli, *overrides):
    proc = cli("train", "-m", *overrides, "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def test_dry_run_json_lists_every_point_with_the_planners_verdict(cli, work_dir):
    points, err = _dry_json(cli, f"work_dir={work_dir}", "cluster=slurm_local", "model.tensor_model_parallel_size=1,2",
                            "model.micro_batch_size=1,16", "model.global_batch_size=8")
    assert [p["index"] for p in points] == [0, 1, 2, 3]
    assert all({"overrides", "fits", "reason", "tp", "pp", "mbs", "gbs", "lr", "kept", "task"} <= set(p) for p in points)
    by = {(p["tp"], p["mbs"]): p for p in points}
    assert by[(1, 1)]["kept"] and by[(1, 1)]["fits"] and by[(1, 1)]["reason"] == "" and by[(1, 1)]["task"] == 0
    assert by[(1, 1)]["overrides"][-2:] == ["model.micro_batch_size=1", "model.global_batch_size=8"]
    # hf is data parallel only: TP=2 breaks a rule; MBS 16 does not divide GBS 8
    assert not by[(2, 1)]["kept"] and "model.tensor_model_parallel_size=2" in by[(2, 1)]["reason"]
    assert not by[(1, 16)]["kept"] and "global_batch_size" in by[(1, 16)]["reason"]
    assert by[(1, 16)]["task"] is None
    assert "1 points, 3 pruned; nothing submitted" in err


def test_points_that_do_not_fit_in_gpu_memory_are_pruned_with_the_breakdown(cli, work_dir):
    points, _ = _dry_json(cli, f"work_dir={work_dir}", "experiment=nig_elyza_ptuning",
                          "model.tensor_model_parallel_size=1,4", "model.micro_batch_size=1,4")
    by = {(p["tp"], p["mbs"]): p for p in points}
    assert by[(4, 1)]["kept"] and by[(4, 1)]["fits"] and 0 < by[(4, 1)]["per_gpu_gib"] < by[(4, 1)]["capacity_gib"]
    assert not by[(1, 1)]["kept"] and by[(1, 1)]["fits"] is False and "V100-16GB" in by[(1, 1)]["reason"]
    assert [p["task"] for p in points if p["kept"]] == list(range(sum(p["kept"] for p in points)))


def test_plain_dry_run_prints_the_one_array_script(cli, work_dir):
    proc = cli("train", "-m", f"work_dir={work_dir}", "cluster=slurm_local", "model.micro_batch_size=1,2,4",
               "sweep.parallelism=2", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text.startswith("#!/bin/bash\n")
    assert "#SBATCH --array=0-2%2" in text
    sweep_dir = re.search(r"HPCFT_SWEEP_DIR=(\S+)", text).group(1)
    assert f"#SBATCH --output={sweep_dir}/%a/logs/job.out" in text
    assert 'bash "$dir/job.sbatch"' in text and 'hpcft_run_task "$SLURM_ARRAY_TASK_ID"' in text
    assert "POINT TASK" in proc.stderr  # the table of points goes to stderr


def _dry_launch(work_dir, *overrides, **kw):
    return launch_sweep([f"work_dir={work_dir}", *overrides], dry_run=True, out=str(Path(work_dir) / "results"), **kw)


def test_each_kept_point_is_an_ordinary_run_directory_rendered_by_the_single_run_path(work_dir):
    launch = _dry_launch(work_dir, "cluster=slurm_local", "model.micro_batch_size=1,2", "model.optim.lr=1e-3,1e-2",
                         "eval=true")
    sweep_dir = launch.sweep_dir
    assert sweep_dir == Path(work_dir) / "results" / "tiny_llama_lora" / f"sweep-{launch.sweep_id}"
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["0", "1", "2", "3", "array.sbatch", "logs", "points.json",
                                                           "sweep.json"]
    for pp in launch.kept:
        run_dir = Path(pp.run_dir)
        assert run_dir == sweep_dir / str(pp.task)
        spec = compose_job(pp.point.overrides)
        want = render_scripts(spec, run_dir, pp.run_id, with_eval=True, one_job=True)["train"].text
        assert (run_dir / "job.sbatch").read_text() == want
        assert "# step: eval" in want  # train then eval, in the task's one job
        assert (run_dir / "config.yaml").read_text() == rd.config_yaml(spec)
        rec = rd.read_run_json(run_dir)
        assert rec["config_hash"] == rd.config_hash(spec)
        assert rec["overrides"] == pp.point.overrides and rec["sweep_id"] == launch.sweep_id
        assert rec["point"] == pp.point.index and rec["task"] == pp.task and rec["dry_run"] is True


def test_pruned_points_get_no_run_directory_and_are_not_in_the_array(work_dir):
    launch = _dry_launch(work_dir, "cluster=slurm_local", "model.tensor_model_parallel_size=1,2",
                         "model.micro_batch_size=1,2")
    assert [p.point.index for p in launch.kept] == [0, 1]
    assert "#SBATCH --array=0-1%4" in launch.array_text
    assert not (launch.sweep_dir / "2").exists()
    recorded = json.loads((launch.sweep_dir / "points.json").read_text())
    assert [p["task"] for p in recorded] == [0, 1, None, None]


def test_a_throughput_sweep_trains_sweep_steps_and_runs_no_eval(work_dir):
    launch = _dry_launch(work_dir, "model.micro_batch_size=1,2", "sweep.steps=7", "eval=true")
    text = (Path(launch.kept[0].run_dir) / "job.sbatch").read_text()
    assert "--max-steps 7 " in text and "# step: eval" not in text
    assert any("no eval step in a throughput sweep" in n for n in launch.notes)


def test_the_oom_markers_of_the_dispatcher_come_from_the_log_parser(work_dir):
    launch = _dry_launch(work_dir, "cluster=slurm_local", "model.micro_batch_size=1,2")
    line = next(ln for ln in launch.array_text.splitlines() if ln.startswith("HPCFT_OOM_GREP=("))
    for marker in GPU_OOM_MARKERS:
        assert marker.split("'")[0] in line
    assert line.count("-e ") == len(GPU_OOM_MARKERS)


def test_the_dispatcher_knows_which_tasks_share_a_memory_layout(work_dir):
    launch = _dry_launch(work_dir, "cluster=slurm_local", "data.seq_len=128,256", "model.micro_batch_size=1,2",
                         "model.optim.lr=1e-3,1e-2")
    text = launch.array_text
    assert "HPCFT_MBS=(1 1 2 2 1 1 2 2)" in text
    # lr does not change the memory layout; the sequence length does
    assert "HPCFT_LAYOUT=(0 0 0 0 1 1 1 1)" in text
    assert "HPCFT_POINT=(0 1 2 3 4 5 6 7)" in text


def test_points_asking_slurm_for_other_resources_cannot_share_an_array(work_dir):
    with pytest.raises(UserError, match=r"point 1 \(trainer.devices=2\) asks Slurm for other resources .*--gres=gpu:2"):
        _dry_launch(work_dir, "cluster=slurm_local", "trainer.devices=1,2", "model.global_batch_size=16")


def test_points_on_two_executors_are_refused(work_dir):
    with pytest.raises(UserError, match="cluster.executor: .*local, slurm"):
        _dry_launch(work_dir, "cluster=local,slurm_local")


def test_nemo_points_each_get_their_own_nemo_experiment_folder(work_dir):
    launch = _dry_launch(work_dir, "experiment=nig_elyza_ptuning", "model.micro_batch_size=1,2")
    assert len(launch.kept) == 2
    for pp in launch.kept:
        text = (Path(pp.run_dir) / "job.sbatch").read_text()
        assert f"exp_manager.exp_dir={pp.run_dir}/nemo" in text
        assert f"exp_dir: {pp.run_dir}/nemo" in (Path(pp.run_dir) / "config.yaml").read_text()


def test_force_keeps_points_that_do_not_fit_in_memory_but_never_a_broken_rule(work_dir):
    """--force overrides the memory verdict only: TP=2 on the hf backend breaks a rule and stays pruned."""
    launch = _dry_launch(work_dir, "cluster=nig", "backend=hf", "model=elyza_llama2_7b", "trainer.devices=1",
                         "model.global_batch_size=8", "model.micro_batch_size=8", "trainer.precision=32",
                         "model.tensor_model_parallel_size=1,2", force=True)
    too_big, broken = launch.points
    assert too_big.kept and too_big.forced and not too_big.fits
    assert not broken.kept and not broken.forced and "tensor_model_parallel_size" in broken.reason


def test_nothing_to_run_fails_with_the_reasons(cli, work_dir):
    proc = cli("train", "-m", f"work_dir={work_dir}", "cluster=slurm_local", "model.tensor_model_parallel_size=2,4")
    assert proc.returncode == 2
    assert "no point of the sweep can run (2 pruned): point 0: model.tensor_model_parallel_size=2" in proc.stderr
    assert not (Path(work_dir) / "results").exists()


def test_a_percent_in_the_sweep_directory_is_not_a_slurm_pattern(work_dir):
    launch = _dry_launch(work_dir, "cluster=slurm_local", "exp_manager.name=run%j", "model.micro_batch_size=1,2")
    assert f"--output={launch.sweep_dir}".replace("%j", "%%j") + "/%a/logs/job.out" in launch.array_text


def test_config_yaml_of_the_fast_writer_equals_omegaconfs(work_dir):
    from hpc_ft.compose.points import compose_points

    from omegaconf import OmegaConf

    to_yaml = rd.ConfigYaml()
    overrides = [f"work_dir={work_dir}", "+cluster.env.LONG='" + "word " * 40 + "'", "model.seed=1,2",
                 "cluster=local,nig", "+cluster.env.QUOTED=yes", "+cluster.env.NUM='1e3'", "+cluster.env.JA='日本語'"]
    for p in compose_points(overrides):
        spec = compose_job(p.overrides)
        want = OmegaConf.to_yaml(spec, resolve=True)
        assert to_yaml(p.spec) == want and rd.config_yaml(spec) == want
        assert "'1e3'" in want and "日本語" in want


def test_a_refused_sweep_writes_nothing(work_dir):
    with pytest.raises(UserError, match="other resources"):
        _dry_launch(work_dir, "cluster=slurm_local", "trainer.devices=1,2", "model.global_batch_size=16")
    assert not (Path(work_dir) / "results").exists()
