"""Run directories: `<exp_dir>/<name>/<run_id>/` with config.yaml, job.sbatch, run.json, logs/."""

from __future__ import annotations

import hashlib
import json
import os
import secrets as _secrets
import time
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import DictConfig, OmegaConf

RUN_JSON = "run.json"
SWEEP_JSON = "sweep.json"    # a sweep folder: the sweep (id, array job id, executor, counts)
POINTS_JSON = "points.json"  # a sweep folder: every point with the planner's verdict


RUN_ID_RANDOM_BYTES = 5


def new_run_id(now: Optional[float] = None) -> str:
    """`YYYYmmdd-HHMMSS-<10 hex>`: sortable by time, unique without coordination.

    Many submitters (a sweep, a script looping over `hpc-ft train`, several users on one shared
    registry) can create ids in the same second; 40 random bits keep the chance that any two of
    10,000 ids made in one second collide at about 1 in 22,000 (with 3 bytes, as before, two of
    only 200 ids collided once in about 840 bursts).
    """
    t = time.localtime(now or time.time())
    return time.strftime("%Y%m%d-%H%M%S", t) + "-" + _secrets.token_hex(RUN_ID_RANDOM_BYTES)


def config_yaml(spec: DictConfig) -> str:
    return OmegaConf.to_yaml(spec, resolve=True)


def text_hash(yaml_text: str) -> str:
    """The config hash: the first 16 hex digits of the config.yaml text's sha256."""
    return hashlib.sha256(yaml_text.encode()).hexdigest()[:16]


def config_hash(spec: DictConfig) -> str:
    return text_hash(config_yaml(spec))


def make_run_dir(spec: DictConfig, run_id: str, parent: Optional[str] = None) -> Path:
    base = Path(parent) if parent else Path(spec.exp_manager.exp_dir) / spec.exp_manager.name
    run_dir = base / run_id
    (run_dir / "logs").mkdir(parents=True, exist_ok=False)
    (run_dir / "predictions").mkdir()
    return run_dir


def write_text(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def write_new(path: Path, text: str, mode: int = 0o644) -> None:
    """A file of a run directory made just now (nothing reads it yet): written in place, mode set exactly."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def json_text(record: Dict[str, Any]) -> str:
    return json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_run_json(run_dir: Path, record: Dict[str, Any]) -> None:
    write_text(run_dir / RUN_JSON, json_text(record))


def read_run_json(run_dir: Path) -> Dict[str, Any]:
    p = Path(run_dir) / RUN_JSON
    return json.loads(p.read_text(encoding="utf-8"))


def update_run_json(run_dir: Path, **fields: Any) -> Dict[str, Any]:
    rec = read_run_json(run_dir)
    rec.update(fields)
    write_run_json(run_dir, rec)
    return rec


def file_sha256(path: str) -> Optional[str]:
    if not os.path.isfile(path):
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def code_version() -> str:
    """hpc-ft's version, plus the git commit when running from a checkout (read from .git, no subprocess)."""
    from hpc_ft import __version__

    git = Path(__file__).resolve().parent.parent.parent / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            ref_file = git / ref
            if ref_file.exists():
                sha = ref_file.read_text().strip()
            else:
                packed = (git / "packed-refs").read_text().splitlines()
                sha = next(line.split()[0] for line in packed if line.endswith(" " + ref))
        else:
            sha = head
        return f"{__version__}+g{sha[:9]}"
    except (OSError, StopIteration, NotADirectoryError):
        return __version__
