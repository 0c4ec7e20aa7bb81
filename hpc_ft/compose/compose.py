"""Compose a job from Hydra configs and override strings into a resolved, typed config (JobSpec).

Every user mistake (override syntax, unknown key or group option, wrong type, value out of range)
becomes one `UserError` naming the key and a fix; nothing downstream ever sees a bad config.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

from hpc_ft.compose.schema import JobSpec
from hpc_ft.errors import UserError, did_you_mean

GROUPS = ("cluster", "container", "backend", "model", "peft", "data", "experiment")
USER_CONF_ENV = "HPC_FT_CONF_DIR"


def conf_dir() -> Path:
    """The shipped config directory: inside the installed wheel, or the checkout's conf/."""
    here = Path(__file__).resolve().parent.parent
    packaged = here / "conf"
    if packaged.is_dir():
        return packaged
    return here.parent / "conf"


def user_conf_dir() -> Optional[Path]:
    """A user's or site's own config tree (same layout as conf/); its files win over the shipped ones."""
    env = os.environ.get(USER_CONF_ENV)
    if env:
        return Path(env).expanduser()
    default = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "hpc-ft" / "conf"
    return default if default.is_dir() else None


def _group_options(group: str) -> List[str]:
    names = set()
    for root in (conf_dir(), user_conf_dir()):
        if root and (root / group).is_dir():
            names.update(p.stem for p in (root / group).glob("*.yaml"))
    return sorted(names)


def _schema_keys(node) -> List[str]:
    """All dotted keys of the schema, for did-you-mean on unknown keys."""
    out: List[str] = []

    def walk(cfg, prefix):
        for k in cfg.keys():
            v = cfg._get_node(k)
            dotted = f"{prefix}{k}"
            out.append(dotted)
            if isinstance(v, DictConfig):
                walk(v, dotted + ".")

    walk(node, "")
    return out


_SCHEMA = None


def _schema() -> DictConfig:
    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = OmegaConf.structured(JobSpec)
    return _SCHEMA


def _normalise_overrides(overrides: Sequence[str]) -> List[str]:
    """Accept `+experiment=x` and `experiment=x` alike (experiment is in the defaults list)."""
    out = []
    for o in overrides:
        if o.startswith("+experiment="):
            o = o[1:]
        out.append(o)
    return out


def _explain_hydra_error(exc: Exception, overrides: Sequence[str]) -> UserError:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    m = re.search(r"Could not (?:find|load) '([\w\-/]+)/([\w\-.]+)'", str(exc))
    if m:
        group, option = m.group(1), m.group(2)
        options = _group_options(group)
        return UserError(
            f"{group}={option}: no such option in group '{group}'.{did_you_mean(option, options)} "
            f"Available: {', '.join(options) or '(none)'}."
        )
    m = re.search(r"Could not override '([^']+)'", str(exc)) or re.search(r"Key '([^']+)' is not in struct", str(exc))
    if m:
        key = m.group(1)
        return UserError(
            f"{key}: unknown key.{did_you_mean(key, _schema_keys(_schema()))} "
            "Check the spelling against docs/user-guide.md (every key is listed there)."
        )
    if type(exc).__name__ == "OverrideParseException":
        bad = _first_unparsable(overrides)
        if bad is not None:
            return UserError(f"override '{bad}': syntax error ({msg}). Use key=value, e.g. trainer.max_steps=100.")
    m = re.search(r"Error parsing override '([^']+)'", str(exc))
    if m:
        return UserError(f"override '{m.group(1)}': syntax error ({msg}). Use key=value, e.g. trainer.max_steps=100.")
    return UserError(f"config: {msg}")


def _first_unparsable(overrides: Sequence[str]) -> Optional[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_overrides([o])
        except Exception:  # noqa: BLE001 - any parse failure identifies the culprit
            return o
    return None


def _hydra_compose(overrides: List[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException as _OCE

    extra = []
    udir = user_conf_dir()
    if udir and udir.is_dir():
        extra.append(f"hydra.searchpath=[file://{udir}]")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            return compose(config_name="config", overrides=extra + overrides)
    except (HydraException, _OCE, ValueError) as exc:
        raise _explain_hydra_error(exc, overrides) from None


def _to_spec(cfg: DictConfig, work_dir: Optional[str]) -> DictConfig:
    """Merge the composed config onto the typed schema and resolve every interpolation."""
    if "hydra" in cfg:
        with_flag = OmegaConf.to_container(cfg, resolve=False)
        with_flag.pop("hydra", None)
        cfg = OmegaConf.create(with_flag)
    base = str(Path(work_dir or cfg.get("work_dir") or ".").expanduser())
    OmegaConf.set_struct(cfg, False)
    cfg.work_dir = os.path.abspath(base)
    try:
        spec = OmegaConf.merge(_schema(), cfg)
    except ConfigKeyError as exc:
        key = getattr(exc, "full_key", None) or str(exc)
        raise UserError(
            f"{key}: unknown key.{did_you_mean(str(key), _schema_keys(_schema()))} "
            "Check the spelling against `hpc-ft train --cfg` (docs/user-guide.md lists every key)."
        ) from None
    except ValidationError as exc:
        key = getattr(exc, "full_key", "") or "config"
        raise UserError(f"{key}: {_first_line(exc)}. Give a value of the right type, e.g. {key}=<number>.") from None
    try:
        OmegaConf.resolve(spec)
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", "") or "config"
        raise UserError(f"{key}: missing value. Set it on the command line: {key}=...") from None
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or "config"
        raise UserError(f"{key}: {_first_line(exc)}") from None
    missing = OmegaConf.missing_keys(spec)
    if missing:
        key = sorted(missing)[0]
        raise UserError(f"{key}: missing value. Set it on the command line: {key}=...")
    OmegaConf.set_readonly(spec, False)
    return spec


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def compose_job(overrides: Iterable[str] = (), work_dir: Optional[str] = None) -> DictConfig:
    """Compose, type-check, resolve and check ranges. Returns the JobSpec as a typed DictConfig."""
    from hpc_ft.compose.checks import check_spec

    cfg = _hydra_compose(_normalise_overrides(list(overrides)))
    spec = _to_spec(cfg, work_dir)
    check_spec(spec)
    return spec


def sweep_points(overrides: Sequence[str]) -> List[List[str]]:
    """Expand Hydra multirun overrides (a=1,2  range()  choice()) into one override list per point."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(_normalise_overrides(list(overrides)))
    except HydraException as exc:
        raise UserError(f"sweep overrides: {_first_line(exc)}. Use key=a,b,c or key=range(1,5).") from None
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [list(p) for batch in batches for p in batch]


def compose_sweep(overrides: Sequence[str], work_dir: Optional[str] = None):
    """Compose every point of a multirun sweep. Returns [(point_overrides, spec), ...]."""
    return [(point, compose_job(point, work_dir)) for point in sweep_points(overrides)]
