"""Jobs carry their own environment: every step starts from the submitting interpreter (or the container's),
never from whatever `torchrun` or `python` the node's PATH happens to hold; cluster.export renders --export."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hpc_ft.compose import compose_job
from hpc_ft.errors import UserError
from hpc_ft.submit.launch import render_scripts
from tests.core.sbatch_parse import rendered_step, sbatch_options

HF_TWO_RANKS = ["cluster=slurm_local", "trainer.devices=2", "model.micro_batch_size=2"]


def _script(work_dir, tmp_path, *overrides, with_eval=True):
    spec = compose_job([f"work_dir={work_dir}", *overrides])
    return render_scripts(spec, tmp_path, "r1", with_eval=with_eval)["train"].text


def test_two_rank_hf_step_runs_torch_distributed_from_the_submitting_interpreter(work_dir, tmp_path):
    text = _script(work_dir, tmp_path, *HF_TWO_RANKS)
    argv = rendered_step(text, "train")
    assert argv[:4] == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    assert "torchrun" not in argv


def test_a_single_node_job_rendezvouses_on_a_free_port_and_a_multi_node_job_on_its_first_node(work_dir, tmp_path):
    # torch before pytorch#175699 (2026; NeMo 24.03's container has 2.3) binds 29500 for a single-node torchrun unless
    # told --standalone: a second job on a shared node then fails with "address already in use"
    single = rendered_step(_script(work_dir, tmp_path, *HF_TWO_RANKS), "train")
    assert single[4] == "--standalone" and not any(a.startswith(("--rdzv", "--master_port")) for a in single)
    multi = rendered_step(_script(work_dir, tmp_path, *HF_TWO_RANKS, "trainer.num_nodes=2"), "train")
    assert "--standalone" not in multi and "--rdzv_backend=c10d" in multi


def test_every_step_of_an_uncontained_job_starts_with_an_absolute_interpreter(work_dir, tmp_path):
    spec = compose_job([f"work_dir={work_dir}", *HF_TWO_RANKS, "eval=true"])
    seen = set()
    for script in render_scripts(spec, tmp_path, "r1", with_eval=True).values():
        for name in [ln.split()[1] for ln in script.text.splitlines() if ln.startswith("hpcft_step ")]:
            assert rendered_step(script.text, name)[0] == sys.executable, name
            seen.add(name)
    assert {"build-model", "train", "eval"} <= seen


def test_container_jobs_keep_the_containers_torchrun(work_dir, tmp_path):
    """The reference tutorial runs `torchrun` inside the image; the image's PATH is the image's own."""
    text = _script(work_dir, tmp_path, "experiment=nig_elyza_ptuning", with_eval=False)
    argv = rendered_step(text, "train")
    assert argv[0] == "singularity" and "torchrun" in argv and sys.executable not in argv


def test_script_puts_the_interpreters_folder_first_on_path(work_dir, tmp_path):
    text = _script(work_dir, tmp_path, *HF_TWO_RANKS)
    line = next(ln for ln in text.splitlines() if ln.startswith("export PATH="))
    assert line.startswith(f"export PATH={os.path.dirname(sys.executable)}:")


def test_uncontained_job_script_runs_under_an_empty_environment(work_dir, tmp_path):
    """The prologue of the rendered script (PATH, HOME, cd) works with nothing inherited: bash with env -i."""
    text = _script(work_dir, tmp_path, *HF_TWO_RANKS)
    head = text.split('cd "$HPC_FT_RUN_DIR"')[0] + 'command -v python; echo "HOME=$HOME"\n'
    done = subprocess.run(["env", "-i", "/bin/bash", "-c", head], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == os.path.join(os.path.dirname(sys.executable), "python")
    assert lines[1].startswith("HOME=/")


def test_cluster_export_renders_sbatch_export(work_dir, tmp_path):
    assert "--export" not in sbatch_options(_script(work_dir, tmp_path, "cluster=slurm_local"))
    opts = sbatch_options(_script(work_dir, tmp_path, "cluster=slurm_local", "cluster.export=NONE", "secrets=[]"))
    assert opts["--export"] == "NONE"


def test_export_none_still_passes_secrets_by_name(work_dir, tmp_path):
    """sbatch takes no names beside NONE; a bare name list means "SLURM_* and these names only"."""
    opts = sbatch_options(_script(work_dir, tmp_path, "cluster=slurm_local", "cluster.export=NONE",
                                  "secrets=[HF_TOKEN,WANDB_API_KEY]"))
    assert opts["--export"] == "HF_TOKEN,WANDB_API_KEY"


def test_steps_inside_the_job_do_not_inherit_export_none(work_dir, tmp_path):
    """srun inside a --export=NONE job would otherwise start its tasks without the script's PATH."""
    text = _script(work_dir, tmp_path, "cluster=slurm_local", "cluster.export=NONE", "trainer.num_nodes=2",
                   "cluster.nodes=2")
    assert "export SLURM_EXPORT_ENV=ALL" in text.splitlines()


@pytest.mark.parametrize("value", ["NONE;rm", "ALL,1BAD", "a b"])
def test_bad_cluster_export_is_refused_naming_the_key(work_dir, value):
    with pytest.raises(UserError) as err:
        compose_job([f"work_dir={work_dir}", "cluster=slurm_local", f"cluster.export='{value}'"])
    assert "cluster.export" in str(err.value) and "NONE" in str(err.value)
