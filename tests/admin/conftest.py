"""Fixtures of the admin CLI tests: run `python -m hpc_ft.cli` for real, in a scratch work dir, with a private cache."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


class CLI:
    """Runs `python -m hpc_ft.cli ARGS` in `cwd` with the test's environment plus `env` (None removes a variable)."""

    def __init__(self, cwd: Path, cache: Path):
        self.cwd = cwd
        self.cache = cache

    def __call__(self, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        full = dict(os.environ)
        full["XDG_CACHE_HOME"] = str(self.cache)  # no compose cache shared with other runs
        full["PYTHONPATH"] = str(REPO) + (os.pathsep + full["PYTHONPATH"] if full.get("PYTHONPATH") else "")
        for key, value in (env or {}).items():
            if value is None:
                full.pop(key, None)
            else:
                full[key] = str(value)
        return subprocess.run([sys.executable, "-m", "hpc_ft.cli", *map(str, args)], cwd=self.cwd, env=full,
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli(work_dir, tmp_path) -> CLI:
    return CLI(work_dir, tmp_path / "xdg-cache")


def add_hub_snapshot(hub: Path, repo_id: str, commit: str, files: dict, ref: str | None = None) -> Path:
    """A model in huggingface_hub's cache layout: blobs/<hash>, snapshots/<commit>/<file> -> blob, refs/<ref>."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for rel, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def slurm_up() -> bool:
    try:
        proc = subprocess.run([str(REPO / "scripts" / "local-slurm.sh"), "status"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


@pytest.fixture
def hub_snapshot():
    """The function that writes a model snapshot into a hub cache folder (see add_hub_snapshot)."""
    return add_hub_snapshot


@pytest.fixture(scope="session")
def _slurm_status() -> bool:
    return slurm_up()


@pytest.fixture
def local_slurm(_slurm_status):
    """Skip unless the local Slurm of scripts/local-slurm.sh is up (`scripts/local-slurm.sh start` as root)."""
    if not _slurm_status:
        pytest.skip("local Slurm is not running (scripts/local-slurm.sh status failed); start it with scripts/local-slurm.sh start")
