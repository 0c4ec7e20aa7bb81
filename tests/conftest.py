"""Shared fixtures: an isolated registry and work dir per test; HF hub offline."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path, monkeypatch):
    monkeypatch.setenv("HPC_FT_REGISTRY", str(tmp_path / "registry.sqlite"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.delenv("HPC_FT_CONF_DIR", raising=False)
    monkeypatch.delenv("HPC_FT_TEMPLATE_DIR", raising=False)
    yield


@pytest.fixture
def work_dir(tmp_path):
    d = tmp_path / "work"
    d.mkdir()
    return d


# Tests that submit to (or stop a node of) the one local Slurm run on one xdist worker, one after the other:
# a node-loss test kills slurmd and skips when other jobs share the node, and the time-limit tests want
# the node to themselves. Everything else is spread over the workers (`make test` runs two).
SLURM_FIXTURES = {"slurm", "slurm2", "local_slurm", "tiny_work"}
SLURM_MODULES = {"test_cli_cluster.py", "test_cli_container.py"}


def pytest_itemcollected(item):
    """Mark as each test is collected: xdist reads the groups in its own collection_modifyitems."""
    if item.get_closest_marker("slurm") or SLURM_FIXTURES & set(getattr(item, "fixturenames", ())) \
            or item.path.name in SLURM_MODULES:
        item.add_marker(pytest.mark.xdist_group("slurm"))
