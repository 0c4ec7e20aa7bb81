"""trainer.num_nodes > 1: one task per node, srun + torchrun with a c10d rendezvous on the first node."""

from __future__ import annotations

import shlex
import subprocess

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
    assert '--rdzv_endpoint="${HPCFT_RDZV_ENDPOINT}"' in line
    assert '--rdzv_id="${SLURM_JOB_ID}"' in line
    argv = rendered_step(text, "train")
    assert argv[:4] == ["srun", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    i = argv.index("torchrun")
    assert argv[i - 3:i] == ["exec", "--nv", spec.container.image] or "singularity" in argv
    assert argv[i + 1:i + 4] == ["--nproc_per_node=4", "--nnodes=2", "--rdzv_backend=c10d"]
    assert "trainer.num_nodes=2" in argv


def test_each_multi_node_job_rendezvouses_on_a_port_of_its_own(work_dir, tmp_path):
    # one fixed port: two multi-node jobs sharing a first node would meet on one store (torch joins the store
    # it finds there as a client) and the second would lose it when the first one ends
    spec = compose_job([f"work_dir={work_dir}", "experiment=nig_elyza_ptuning", "trainer.num_nodes=2",
                        "model.global_batch_size=32"])
    text = render_scripts(spec, tmp_path, "r1", with_eval=False)["train"].text
    lines = [ln for ln in text.splitlines() if ln.startswith("export HPCFT_")]
    assert [ln.split("=")[0] for ln in lines] == ["export HPCFT_HEAD_NODE", "export HPCFT_RDZV_PORT",
                                                  "export HPCFT_RDZV_ENDPOINT"]
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text("#!/bin/sh\nprintf 'node7\\nnode8\\n'\n")
    (fake / "scontrol").chmod(0o755)

    def endpoint(job_id):
        script = "\n".join(lines + ['echo "$HPCFT_RDZV_ENDPOINT"'])
        env = {"PATH": f"{fake}:/usr/bin:/bin", "SLURM_JOB_ID": job_id, "SLURM_JOB_NODELIST": "node[7-8]"}
        return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True).stdout.strip()

    assert endpoint("4711") == "node7:30211" and endpoint("4712") == "node7:30212"
    assert endpoint("5000") == "node7:29500"


def test_one_node_has_no_srun_or_rendezvous(work_dir, tmp_path):
    spec = compose_job([f"work_dir={work_dir}", "experiment=nig_elyza_ptuning"])
    text = render_scripts(spec, tmp_path, "r1", with_eval=False)["train"].text
    assert rendered_step(text, "train")[0] == "singularity"  # no srun in front
    assert "rdzv" not in text and "HPCFT_HEAD_NODE" not in text
    assert shlex.split("torchrun --nproc_per_node=4")[1] in text
