"""Fixtures of the sweep tests: the CLI as a subprocess, the local Slurm, prepared data, a train step that
runs out of GPU memory on cue."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# The step a fake point runs instead of training: prints a CUDA OOM like torch does when MBS and seq length
# match the cue, sleeps briefly otherwise. The marker is assembled at run time, so that the command line the
# supervisor echoes into the log does not hold it.
FAKE_TRAIN = r'''
mbs=$1; seq=$2; oom_mbs=$3; oom_seq=$4
echo "fake train: mbs=$mbs seq=$seq"
if [ "$mbs" = "$oom_mbs" ] && [ "$seq" = "$oom_seq" ]; then
  word=memory
  echo "Traceback (most recent call last):" >&2
  echo "torch.OutOfMemoryError: CUDA out of $word. Tried to allocate 2.00 GiB (GPU 0; 15.77 GiB total capacity)" >&2
  exit 1
fi
sleep 1
'''


class CLI:
    """Runs `python -m hpc_ft.cli ARGS` in `cwd` with the test's environment (its registry) and a private cache."""

    def __init__(self, cwd: Path, cache: Path):
        self.cwd, self.cache = cwd, cache

    def __call__(self, *args, timeout: float = 300, env=None) -> subprocess.CompletedProcess:
        full = dict(os.environ)
        full["XDG_CACHE_HOME"] = str(self.cache)
        full["PYTHONPATH"] = str(REPO) + (os.pathsep + full["PYTHONPATH"] if full.get("PYTHONPATH") else "")
        full.update({k: str(v) for k, v in (env or {}).items()})
        return subprocess.run([sys.executable, "-m", "hpc_ft.cli", *map(str, args)], cwd=self.cwd, env=full,
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli(work_dir, tmp_path) -> CLI:
    return CLI(work_dir, tmp_path / "xdg-cache")


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """An empty compose cache for in-process calls (so Hydra really composes)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def prepared(work_dir):
    """Small synthetic data in the default data.dir of work_dir."""
    from hpc_ft.data.jcommonsenseqa import make_synthetic

    make_synthetic(work_dir / "data" / "jcommonsenseqa-v1.1", n_train=200, n_valid=40, n_test=20, seed=0)
    return work_dir


@pytest.fixture
def oom_step(monkeypatch):
    """Every hf point trains with FAKE_TRAIN; `oom_step(mbs, seq)` picks the point that runs out of GPU memory."""
    import hpc_ft.backends.hf as hf
    from hpc_ft.render import Step

    cue = {"mbs": -1, "seq": -1}

    def fake_train_steps(spec, run_dir):
        return [Step("train", ["bash", "-c", FAKE_TRAIN, "fake-train", spec.model.micro_batch_size,
                               spec.data.seq_len, cue["mbs"], cue["seq"]])]

    monkeypatch.setattr(hf, "train_steps", fake_train_steps)

    def choose(mbs: int, seq: int) -> None:
        cue.update(mbs=mbs, seq=seq)

    return choose


def slurm_up() -> bool:
    try:
        proc = subprocess.run([str(REPO / "scripts" / "local-slurm.sh"), "status"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


@pytest.fixture(scope="session")
def _slurm_status() -> bool:
    return slurm_up()


@pytest.fixture
def local_slurm(_slurm_status):
    if not _slurm_status:
        pytest.skip("the local Slurm is not up (scripts/local-slurm.sh start)")


def wait_until(predicate, timeout: float, interval: float = 2.0):
    """Poll `predicate()` until it returns something truthy; return it (fail after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s")
        time.sleep(interval)
