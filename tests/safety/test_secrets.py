"""Secrets (HF_TOKEN, NGC_API_KEY, WANDB_API_KEY and any name in `secrets:`) reach the job through the
environment only: never in job.sbatch, config.yaml, run.json, logs or the registry."""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Dict, List

import pytest

from tests.safety.helpers import (
    hydra_quote,
    make_probes,
    probe_env,
    read_probe,
    registry_files,
    registry_rows,
    run_cli,
    run_dirs,
    wait_for_exit_code,
    wait_slurm_jobs,
)

SECRET_NAMES = ["HF_TOKEN", "NGC_API_KEY", "WANDB_API_KEY", "HPCFT_CUSTOM_SECRET"]
SECRETS_OVERRIDE = "secrets=[" + ",".join(SECRET_NAMES) + "]"


def _secret_values() -> Dict[str, str]:
    """Distinctive values; each holds its own random tag, which is searched for on its own too."""
    tags = {name: uuid.uuid4().hex for name in SECRET_NAMES}
    return {
        "HF_TOKEN": f"hf_SafetyToken{tags['HF_TOKEN']}",
        "NGC_API_KEY": f"nvapi-{tags['NGC_API_KEY']}",
        # shell-special text: the SINGULARITYENV_ copy must still be byte-equal
        "WANDB_API_KEY": f"wandb {tags['WANDB_API_KEY']} $(touch PWNED) 'q' \"dq\" ;\nsecond line",
        "HPCFT_CUSTOM_SECRET": f"custom-ü-{tags['HPCFT_CUSTOM_SECRET']}",
    }


def _needles(values: Dict[str, str]) -> List[bytes]:
    """Each whole value, and its random 32-hex tag alone (catches an escaped or re-quoted copy)."""
    out = []
    for v in values.values():
        out.append(v.encode())
        out += [m.encode() for m in re.findall(r"[0-9a-f]{32}", v)]
    return out


def _assert_nowhere(values: Dict[str, str], files: List[Path], *texts: str) -> int:
    """No file (and no text) holds a secret value or its random tag. Returns how many files were read."""
    needles = _needles(values)
    leaks = []
    n = 0
    for f in files:
        if f.is_file() and not f.is_symlink():
            data = f.read_bytes()
            n += 1
            leaks += [(str(f), nd) for nd in needles if nd in data]
    for t in texts:
        leaks += [("<cli output>", nd) for nd in needles if nd in t.encode()]
    assert not leaks, f"secret values found: {leaks}"
    return n


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _job(tmp_path: Path, cluster: str) -> list:
    image = tmp_path / "hf.sif"
    image.write_bytes(b"not an image")
    return [
        f"cluster={cluster}", f"work_dir={hydra_quote(str(tmp_path / 'work'))}", SECRETS_OVERRIDE,
        "container=hf", f"container.image={hydra_quote(str(image))}", "cluster.container_runtime=singularity",
        "data.synthetic.n_train=40", "data.synthetic.n_valid=8", "data.synthetic.n_test=8", "data.n_valid=8",
    ]


def _check_delivered_and_not_written(tmp_path: Path, values: Dict[str, str], proc, log: Path) -> Path:
    (run_dir,) = run_dirs(tmp_path / "work")
    calls = [r for r in read_probe(log) if r["prog"] == "singularity"]
    assert len(calls) == 2  # build-model, train
    for call in calls:
        for name, value in values.items():
            assert call["secrets"][name] == _sha(value), name
            assert call["secrets"]["SINGULARITYENV_" + name] == _sha(value), name
    out = (run_dir / "logs" / "job.out").read_text(encoding="utf-8")
    assert f"probe: HF_TOKEN set=True sha256={_sha(values['HF_TOKEN'])}" in out
    registry = Path(os.environ["HPC_FT_REGISTRY"])
    assert registry_rows(registry) == 1
    files = [p for p in (tmp_path / "work").rglob("*")] + registry_files(registry)
    assert run_dir / "job.sbatch" in files and run_dir / "config.yaml" in files and run_dir / "run.json" in files
    n = _assert_nowhere(values, files, proc.stdout, proc.stderr)
    assert n >= 8
    assert not list(tmp_path.rglob("PWNED*"))
    return run_dir


def test_secrets_reach_a_local_job_by_environment_only(tmp_path, monkeypatch):
    values = _secret_values()
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    bin_dir = make_probes(tmp_path / "bin", ["singularity"])
    log = tmp_path / "probe.jsonl"
    names = SECRET_NAMES + ["SINGULARITYENV_" + n for n in SECRET_NAMES]
    proc = run_cli(["train", *_job(tmp_path, "local")], env=probe_env(bin_dir, log, secret_names=names), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = run_dirs(tmp_path / "work")
    assert wait_for_exit_code(run_dir) == "0"
    run_dir = _check_delivered_and_not_written(tmp_path, values, proc, log)
    assert list((run_dir / "logs" / "submitit").iterdir())  # submitit's own logs were scanned too


@pytest.mark.slurm
def test_secrets_reach_a_slurm_job_by_environment_only(tmp_path, monkeypatch):
    values = _secret_values()
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    bin_dir = make_probes(tmp_path / "bin", ["singularity"])
    log = tmp_path / "probe.jsonl"
    names = SECRET_NAMES + ["SINGULARITYENV_" + n for n in SECRET_NAMES]
    proc = run_cli(["train", *_job(tmp_path, "slurm_local"), "--json"],
                   env=probe_env(bin_dir, log, secret_names=names), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    jobs = json.loads(proc.stdout)["jobs"]
    assert wait_slurm_jobs(list(jobs.values())) == {jobs["train"]: "COMPLETED"}
    run_dir = _check_delivered_and_not_written(tmp_path, values, proc, log)
    assert list((run_dir / "logs" / "submitit").glob("*_submission.sh"))  # submitit's copy of the script


@pytest.mark.parametrize("runtime, prefix", [("singularity", "SINGULARITYENV_"), ("apptainer", "APPTAINERENV_"),
                                             ("none", None)])
def test_container_script_passes_secrets_by_name(tmp_path, monkeypatch, runtime, prefix):
    values = _secret_values()
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    image = tmp_path / "hf.sif"
    image.write_bytes(b"x")
    proc = run_cli(["train", f"work_dir={hydra_quote(str(tmp_path / 'work'))}", SECRETS_OVERRIDE, "container=hf",
                    f"container.image={image}", f"cluster.container_runtime={runtime}", "--dry-run",
                    "--out", str(tmp_path / "work" / "results")])
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = run_dirs(tmp_path / "work")
    script = (run_dir / "job.sbatch").read_text(encoding="utf-8")
    for name in SECRET_NAMES:
        line = f'export {prefix}{name}="${{{name}}}"'
        assert (line in script) == (prefix is not None), (name, runtime)
    if prefix is None:
        assert "ENV_" not in script
    _assert_nowhere(values, list((tmp_path / "work").rglob("*")), proc.stdout, proc.stderr)


def test_a_secret_written_into_the_config_is_refused(tmp_path):
    proc = run_cli(["train", f"work_dir={hydra_quote(str(tmp_path / 'work'))}", "+cluster.env.HF_TOKEN=hf_abc123",
                    "--dry-run"])
    assert proc.returncode == 2
    assert proc.stderr.startswith("hpc-ft: error: cluster.env.HF_TOKEN:") and "export HF_TOKEN=" in proc.stderr
    assert "hf_abc123" not in proc.stderr
    assert not (tmp_path / "work" / "results").exists()
