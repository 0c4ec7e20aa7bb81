"""Fixtures for tests against the real local Slurm (scripts/local-slurm.sh): skip cleanly when it is down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def slurm_up() -> bool:
    try:
        return subprocess.run([str(REPO / "scripts" / "local-slurm.sh"), "status"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.fixture(scope="session")
def slurm():
    if not slurm_up():
        pytest.skip("the local Slurm is not running (scripts/local-slurm.sh start)")
    return True


# hpc-ft as a user at a site runs it: the venv's own entry point by absolute path, from a shell that holds
# nothing of this test process (no venv on PATH, no PYTHONPATH, no VIRTUAL_ENV): `env -i` plus the few
# variables a user would set. A test that passes only because something outside the venv exists is a defect.
HPCFT_EXE = Path(sys.executable).parent / "hpc-ft"
_PASSED_ON = ("HPC_FT_", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "SLURM_CONF", "XDG_")


def minimal_env(env=None) -> dict:
    """`env -i HOME=… PATH=/usr/bin:/bin` plus the test's HPC_FT_*/offline/Slurm-config variables."""
    src = os.environ if env is None else env
    out = {"HOME": src.get("HOME") or "/root", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    out.update({k: v for k, v in src.items() if k.startswith(_PASSED_ON)})
    return out


def hpcft(*args, env=None, cwd=None, check=True, timeout=600):
    proc = subprocess.run([str(HPCFT_EXE), *map(str, args)], capture_output=True, text=True,
                          env=minimal_env(env), cwd=cwd, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"hpc-ft {' '.join(map(str, args))} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def tiny_work(tmp_path_factory, slurm):
    """A work_dir with prepared synthetic data and the tiny model built once for the whole session."""
    work = tmp_path_factory.mktemp("slurm-work")
    env = dict(os.environ, HPC_FT_REGISTRY=str(work / "registry.sqlite"))
    hpcft("data", "prepare", f"work_dir={work}", "data.synthetic.n_train=240", "data.synthetic.n_valid=32",
          "data.synthetic.n_test=32", env=env)
    data = work / "data" / "jcommonsenseqa-v1.1"
    subprocess.run([sys.executable, "-m", "hpc_ft.backends.hf_runtime.tiny_model", "--data-dir", str(data),
                    "--output", str(work / "models" / "tiny_llama"), "--if-missing"], check=True,
                   capture_output=True, env=minimal_env(env))
    return work


SMALL = ["trainer.max_steps=12", "trainer.val_check_interval=6", "model.micro_batch_size=4",
         "model.global_batch_size=4"]


def submit(work, *overrides, env, expect_rc=0):
    proc = hpcft("train", "cluster=slurm_local", f"work_dir={work}", *SMALL, *overrides, "--json", env=env,
                 check=expect_rc == 0)
    assert proc.returncode == expect_rc, proc.stderr
    return json.loads(proc.stdout) if expect_rc == 0 else proc


def two_nodes_up() -> str | None:
    """None when partition multi has two usable nodes (scripts/local-slurm.sh start --nodes 2), else why not."""
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-p", "multi", "-o", "%N %T"], capture_output=True, text=True,
                             timeout=30).stdout.split("\n")
    except (OSError, subprocess.SubprocessError) as exc:
        return f"sinfo failed: {exc}"
    usable = [ln.split()[0] for ln in out if len(ln.split()) == 2 and ln.split()[1] in ("idle", "mixed", "allocated")]
    if len(usable) < 2:
        return (f"the two-node local Slurm is not up (partition multi: {', '.join(out).strip(', ') or 'missing'}); "
                "run scripts/local-slurm.sh start --nodes 2 (make test does)")
    return None


@pytest.fixture(scope="session")
def slurm2(slurm):
    why = two_nodes_up()
    if why:
        pytest.skip(why)
    return True


def broken_model(work, tmp_path) -> Path:
    """A checkpoint folder that passes every check at submit (config.json, tokenizer) but has no weights:
    the training step fails on the node, as a job does when its files go wrong after submit."""
    import shutil

    broken = tmp_path / "broken-model"
    broken.mkdir()
    for f in (work / "models" / "tiny_llama").iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin")):
            shutil.copy(f, broken / f.name)
    return broken
