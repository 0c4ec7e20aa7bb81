"""Run directories: `<exp_dir>/<name>/<run_id>/` with config.yaml, job.sbatch, run.json, logs/."""

from __future__ import annotations

import hashlib
import json
import os
import secrets as _secrets
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

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


# YAML 1.1 reads these bare words as booleans: a string with one of them as its value is quoted
_YAML_BOOLS = frozenset("y Y yes Yes YES n N no No NO true True TRUE false False FALSE on On ON off Off OFF".split())


def _number_like(text: str) -> bool:
    for kind in (int, float):
        try:
            kind(text)
            return True
        except ValueError:
            pass
    return False


def _yaml_dumper():
    """A YAML dumper writing what OmegaConf.to_yaml writes (strings that would read back as a bool or a number
    are single-quoted), on libyaml when present."""
    import yaml

    class Dumper(getattr(yaml, "CDumper", yaml.Dumper)):  # type: ignore[misc]
        def ignore_aliases(self, data) -> bool:
            return True  # sweep points share sub-dicts; OmegaConf's containers never do, so never "&id001"

    def represent_str(dumper, text: str):
        quoted = text in _YAML_BOOLS or _number_like(text)
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="'" if quoted else None)

    Dumper.add_representer(str, represent_str)
    Dumper.add_multi_representer(dict, lambda dumper, data: dumper.represent_dict(data))  # SpecView
    return Dumper


class ConfigYaml:
    """The config.yaml text of a resolved spec (the text OmegaConf.to_yaml(spec, resolve=True) gives), for one
    run or for every point of a sweep.

    A block mapping's entries are emitted independently of their siblings, so the text of each entry two
    levels down (`model:` -> `  optim: ...`) is dumped once in its real context and reused: sweep points share
    the sections they do not change (`compose.points.with_values` copies only the dicts along a changed key's
    path) and most of their scalar values."""

    def __init__(self) -> None:
        self._dumper = _yaml_dumper()
        self._cache: Dict[Tuple, Tuple[Any, str]] = {}

    def _dump(self, data: Any) -> str:
        import yaml

        return yaml.dump(data, default_flow_style=False, allow_unicode=True, sort_keys=False, Dumper=self._dumper)

    def _entry(self, key: str, sub: Optional[str], value: Any) -> str:
        """The text of `key: value` (sub None) or of `sub: value` inside the top-level mapping `key`."""
        container = isinstance(value, (dict, list))
        ident: Tuple = (key, sub, id(value)) if container else (key, sub, type(value).__name__, repr(value))
        hit = self._cache.get(ident)
        if hit is None or (container and hit[0] is not value):
            if sub is None:
                text = self._dump({key: value})
            else:
                text = self._dump({key: {sub: value}}).split("\n", 1)[1]  # without the "key:" line
            hit = self._cache[ident] = (value, text)  # holding `value` keeps its id from being reused
        return hit[1]

    def __call__(self, spec: Any) -> str:
        """`spec`: a resolved DictConfig, or its values as nested dicts (a sweep point's SpecView)."""
        if isinstance(spec, DictConfig):
            spec = OmegaConf.to_container(spec, resolve=True, enum_to_str=True)
        parts = []
        for key, value in spec.items():
            if isinstance(value, dict) and value:
                head = self._cache.get(("head", key))
                if head is None:
                    head = self._cache[("head", key)] = (None, self._dump({key: {"x": 0}}).split("\n", 1)[0] + "\n")
                parts.append(head[1])
                parts.extend(self._entry(key, sub, v) for sub, v in value.items())
            else:
                parts.append(self._entry(key, None, value))
        return "".join(parts)


def config_yaml(spec: Any) -> str:
    """One run's config.yaml text (see ConfigYaml)."""
    return ConfigYaml()(spec)


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
