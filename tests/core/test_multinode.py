"""trainer.num_nodes > 1: one task per node, srun + torchrun with a c10d rendezvous on the first node."""

from __future__ import annotations

import shlex

from hpc_ft.compose import compose_job
from hpc_ft.submit.launch import render_scripts
from tests.core.sbatch_parse import rendered_step, sbatch_options


def test_two_nodes_render_srun_torchrun_rendezvous(work_dir, tmp_path):
    spec = compose_job([f"work_dir={work_dir}", "experiment=nig_elyza_ptuning", "trainer.num_nodes=2",
                        "model.global_batch_size=32"])
    text = render_scripts(spec, tmp_path, "r1", with_eval=False)["train"].text
    opts = sbatch_options(text)
    assert opts["--nodes"] == "2" and opts["--ntasks-per-node"] == "1" and opts["--gres"] == "gpu:4"
    assert 'export HPCFT_HEAD_NODE="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"' in text
    line = next(ln for ln in text.splitlines() if ln.startswith("hpcft_step train "))
    assert '--rdzv_endpoint="${HPCFT_HEAD_NODE}":29500' in line
    assert '--rdzv_id="${SLURM_JOB_ID}"' in line
    argv = rendered_step(text, "train")
    assert argv[:4] == ["srun", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    i = argv.index("torchrun")
    assert argv[i - 3:i] == ["exec", "--nv", spec.container.image] or "singularity" in argv
    assert argv[i + 1:i + 4] == ["--nproc_per_node=4", "--nnodes=2", "--rdzv_backend=c10d"]
    assert "trainer.num_nodes=2" in argv


def test_one_node_has_no_srun_or_rendezvous(work_dir, tmp_path):
    spec = compose_job([f"work_dir={work_dir}", "experiment=nig_elyza_ptuning"])
    text = render_scripts(spec, tmp_path, "r1", with_eval=False)["train"].text
    assert rendered_step(text, "train")[0] == "singularity"  # no srun in front
    assert "rdzv" not in text and "HPCFT_HEAD_NODE" not in text
    assert shlex.split("torchrun --nproc_per_node=4")[1] in text
