"""`hpc-ft cluster check` submits a probe job under the profile's own rules and reports what the node finds."""

from __future__ import annotations

import json
import sys

import pytest

from tests.slurm.conftest import hpcft

pytestmark = [pytest.mark.slurm]


def _checks(proc) -> dict:
    return {c["name"]: c for c in json.loads(proc.stdout)["checks"]}


def test_probe_under_export_none_finds_the_recorded_interpreter_and_torch(slurm, tmp_path):
    proc = hpcft("cluster", "check", "cluster=slurm_local", "cluster.export=NONE", "--json",
                 env={"HPC_FT_REGISTRY": str(tmp_path / "r.sqlite"), "HOME": str(tmp_path)}, check=False)
    checks = _checks(proc)
    assert proc.returncode == 0, proc.stdout
    assert checks["node-python"]["status"] == "ok" and sys.executable in checks["node-python"]["detail"]
    assert checks["node-torch"]["status"] == "ok" and "torch 2." in checks["node-torch"]["detail"]
    assert "node-runtime" not in checks  # no container: nothing to look for


def test_probe_fails_when_the_container_runtime_is_not_on_the_node(slurm, tmp_path):
    image = tmp_path / "fake.sif"
    image.write_bytes(b"not an image, only readable")
    proc = hpcft("cluster", "check", "cluster=slurm_local", "cluster.container_runtime=singularity",
                 f"container.image={image}", "--json",
                 env={"HPC_FT_REGISTRY": str(tmp_path / "r.sqlite"), "HOME": str(tmp_path)}, check=False)
    checks = _checks(proc)
    assert proc.returncode == 1
    assert checks["node-runtime"]["status"] == "fail" and "singularity is not on the node" in \
        checks["node-runtime"]["detail"]
    assert "node-python" not in checks  # the interpreter step never ran: the runtime step stopped the job
