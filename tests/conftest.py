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
