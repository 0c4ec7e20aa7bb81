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

GROUPS = ("cluster", "container", "backend", "model", "peft", "data", "template", "task", "experiment")
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


def group_options(group: str) -> List[str]:
    names = set()
    for root in (conf_dir(), user_conf_dir()):
        if root and (root / group).is_dir():
            names.update(p.stem for p in (root / group).glob("*.yaml"))
    return sorted(names)


def load_group_option(group: str, option: str) -> DictConfig:
    """One option of a config group (`cluster=nig` -> conf/cluster/nig.yaml; the user's tree first), as the
    mapping that goes under the group's key. Refused naming the options when there is no such file."""
    for root in (user_conf_dir(), conf_dir()):
        path = root / group / f"{option}.yaml" if root else None
        if path is not None and path.is_file():
            return OmegaConf.load(path)
    options = group_options(group)
    raise UserError(
        f"{group}={option}: no such option in group '{group}'.{did_you_mean(option, options)} "
        f"Available: {', '.join(options) or '(none)'}."
    )


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


def schema_config() -> DictConfig:
    global _SCHEMA
    if _SCHEMA is None:
        from hpc_ft.compose.schema_cache import structured_schema

        _SCHEMA = structured_schema(JobSpec)  # OmegaConf.structured(JobSpec), cached beside its source
    return _SCHEMA


def normalise_overrides(overrides: Sequence[str]) -> List[str]:
    """Accept `+experiment=x` and `experiment=x` alike (experiment is in the defaults list)."""
    out = []
    for o in overrides:
        if o.startswith("+experiment="):
            o = o[1:]
        out.append(o)
    return out


#: leaf names people type for a key that has another name here (NeMo's), checked before did-you-mean
KEY_SYNONYMS = {
    "learning_rate": "lr",
    "lr_rate": "lr",
    "batch_size": "micro_batch_size",
    "per_device_train_batch_size": "micro_batch_size",
    "gradient_accumulation_steps": "global_batch_size",
    "epochs": "max_epochs",
    "num_train_epochs": "max_epochs",
    "steps": "max_steps",
    "gpus": "devices",
    "max_length": "max_seq_length",
    "seq_length": "max_seq_length",
    "tp": "tensor_model_parallel_size",
    "pp": "pipeline_model_parallel_size",
}


def suggest_key(key: str) -> str:
    """' Did you mean X?' for an unknown dotted key: a known synonym of its last part, else the closest key."""
    parent, _, leaf = key.rpartition(".")
    keys = _schema_keys(schema_config())
    synonym = KEY_SYNONYMS.get(leaf.lower())
    if synonym:
        candidates = [k for k in keys if k.rpartition(".")[2] == synonym]
        same_parent = [k for k in candidates if k.rpartition(".")[0] == parent]
        if same_parent or candidates:
            return f" Did you mean '{(same_parent or candidates)[0]}'?"
    hint = did_you_mean(key, keys)
    if not hint and parent:
        siblings = [k for k in keys if k.rpartition(".")[0] == parent]
        hint = did_you_mean(key, siblings)
    return hint


def _unknown_key(key: str) -> UserError:
    return UserError(
        f"{key}: unknown key.{suggest_key(key)} "
        "Check the spelling against docs/user-guide.md (every key is listed there)."
    )


_NEEDS_QUOTES = re.compile(r"[\s()#=,:\[\]{}'\"\\]|[^\x00-\x7f]")


def hydra_quoted(value: str) -> str:
    """`value` as a single-quoted Hydra string (a quote or a trailing backslash escaped)."""
    out = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    out = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, out)
    return "'" + out + "'"


def _syntax_error(bad: str, msg: str) -> UserError:
    """A syntax error in one override; when quoting the value fixes it, the message shows the quoted form."""
    key, eq, value = bad.partition("=")
    if eq and value and value[0] not in "[{'\"" and _NEEDS_QUOTES.search(value):
        quoted = f"{key}={hydra_quoted(value)}"
        if _first_unparsable([quoted]) is None:
            why = ("a space, parenthesis or non-ASCII character" if re.search(r"[\s()]|[^\x00-\x7f]", value)
                   else "a character Hydra reads as syntax")
            shell = "" if re.search(r"[$`\"\\!]", quoted) else f" (in the shell: \"{quoted}\")"
            return UserError(
                f"override '{bad}': syntax error: the value has {why}, so Hydra needs it quoted. "
                f"Write {quoted}{shell}."
            )
    return UserError(f"override '{bad}': syntax error ({msg}). Use key=value, e.g. trainer.max_steps=100.")


def _explain_hydra_error(exc: Exception, overrides: Sequence[str]) -> UserError:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    m = re.search(r"Ambiguous value for argument '([^']+)'", str(exc))
    if m:
        bad = m.group(1)
        key, _, value = bad.partition("=")
        return UserError(
            f"{bad}: several values for {key.lstrip('+')} without -m: use -m to sweep (hpc-ft train -m {bad}); "
            f"for a list value write {key}=[{value}]."
        )
    m = re.search(r"Could not (?:find|load) '([\w\-/]+)/([\w\-.]+)'", str(exc))
    if m:
        group, option = m.group(1), m.group(2)
        options = group_options(group)
        return UserError(
            f"{group}={option}: no such option in group '{group}'.{did_you_mean(option, options)} "
            f"Available: {', '.join(options) or '(none)'}."
        )
    m = re.search(r"Could not override '([^']+)'", str(exc)) or re.search(r"Key '([^']+)' is not in struct", str(exc))
    if m:
        key = m.group(1)
        parent = key.rpartition(".")[0]
        if parent and _is_open_map(parent):
            return UserError(
                f"{key}: {parent} has no entry '{key.rpartition('.')[2]}' yet; add one with a leading '+': "
                f"+{key}=VALUE"
            )
        return _unknown_key(key)
    if type(exc).__name__ == "OverrideParseException":
        bad = _first_unparsable(overrides)
        if bad is not None:
            return _syntax_error(bad, msg)
    m = re.search(r"Error parsing override '([^']+)'", str(exc))
    if m:
        return _syntax_error(m.group(1), msg)
    return UserError(f"config: {msg}")


def _is_open_map(dotted: str) -> bool:
    """True for a schema key that is a free-form mapping (cluster.env, backend.env, cluster.sbatch_extra)."""
    try:
        node = OmegaConf.select(schema_config(), dotted)
    except OmegaConfBaseException:
        return False
    return isinstance(node, DictConfig) and OmegaConf.get_type(node) is dict


def _first_unparsable(overrides: Sequence[str]) -> Optional[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_overrides([o])
        except Exception:  # noqa: BLE001 - any parse failure identifies the culprit
            return o
    return None


def _prepend_user_dir(udir: Path) -> None:
    """Search the user's/site's config tree before the shipped one, so that its cluster/nig.yaml wins.

    (`hydra.searchpath=[...]` appends after the shipped tree, where a file of the same name is never reached.)
    """
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    csp = loader.config_search_path
    csp.prepend("hpc-ft-user", f"file://{udir.resolve()}", anchor=SearchPathQuery(provider="main"))
    loader.repository.initialize_sources(csp)


def hydra_compose(overrides: List[str]) -> DictConfig:
    """Hydra's compose API over the shipped conf/ (and the user's own tree), memoised on disk.

    The cache key covers the overrides, Hydra's version and every config file's name, size and
    mtime, so an edited or added YAML file is composed anew; a hit skips importing Hydra at all.
    """
    udir = user_conf_dir()
    roots = [conf_dir()] + ([udir] if udir and udir.is_dir() else [])
    key = _cache_key(overrides, roots)
    cached = _cache_get(key) if overrides else _base_get(key)  # no overrides: the base, kept once
    if cached is not None:
        return cached
    fast = _compose_on_base(overrides, roots)
    if fast is not None:
        _cache_put(key, fast)
        return fast
    cfg = _hydra_compose_uncached(overrides, roots, udir)
    if overrides:
        _cache_put(key, cfg)
    else:
        _base_put(key, cfg)
    return cfg


def _hydra_compose_uncached(overrides: List[str], roots, udir) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException as _OCE

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            if len(roots) > 1:
                _prepend_user_dir(udir)
            cfg = compose(config_name="config", overrides=overrides)
    except (HydraException, _OCE, ValueError) as exc:
        raise _explain_hydra_error(exc, overrides) from None
    return cfg


# ---- value overrides on the cached default composition ----------------------------------------------
# A command whose overrides only set values (`work_dir=/x trainer.max_steps=10`, no group, no +/~) composes
# as Hydra does, by applying them to the composition without overrides (Hydra applies value overrides after
# the defaults tree), which is kept beside the package like bytecode: its key is the config files' stamps.
# Only values whose Hydra reading is certain are taken this way (null, true/false, plain ints and floats,
# strings of path characters that do not start like a number); anything else goes to Hydra itself, and so
# does any override that does not apply cleanly (Hydra then gives its own error).
_INT = re.compile(r"[+-]?(0|[1-9][0-9]*)")
_FLOAT = re.compile(r"[+-]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?[0-9]+[eE][+-]?[0-9]+")
_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*")
_NOT_PLAIN = {"inf", "nan", "true", "false", "null"}


def plain_value_override(override: str) -> Optional[tuple]:
    """(key, value) of `a.b=value` when Hydra would certainly read it so, else None."""
    key, eq, text = override.partition("=")
    if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        return None
    if "." not in key and key in GROUPS:
        return None
    lower = text.lower()
    if lower == "null":
        return key, None
    if lower in ("true", "false"):
        return key, lower == "true"
    if _INT.fullmatch(text):
        return key, int(text)
    if _FLOAT.fullmatch(text):
        return key, float(text)
    if _PLAIN.fullmatch(text) and lower not in _NOT_PLAIN:
        return key, text
    return None


def _compose_on_base(overrides: List[str], roots) -> Optional[DictConfig]:
    plain = [plain_value_override(o) for o in overrides]
    if not overrides or any(p is None for p in plain):
        return None
    base_key = _cache_key([], roots)
    base = _base_get(base_key)
    if base is None:
        return None  # the first composition ever: Hydra composes it (and the base is kept then)
    OmegaConf.set_struct(base, True)
    missing = object()
    try:
        for key, value in plain:
            if OmegaConf.select(base, key, default=missing, throw_on_missing=False) is missing:
                return None
            OmegaConf.update(base, key, value, merge=True)
    except Exception:  # noqa: BLE001 - Hydra itself then composes, and explains what is wrong
        return None
    OmegaConf.set_struct(base, False)
    return base


def _base_places() -> List[Path]:
    return [Path(__file__).parent / "__pycache__", _cache_dir()]


def _base_get(key: str) -> Optional[DictConfig]:
    for place in _base_places():
        cfg = _read_cfg(place / f"base.{key}.json")
        if cfg is not None:
            return cfg
    return None


def _base_put(key: str, cfg: DictConfig) -> None:
    for place in _base_places():
        if _write_cfg(place, f"base.{key}.json", cfg):
            return


def _cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "hpc-ft" / "compose"


def _cache_key(overrides: Sequence[str], roots: Sequence[Path]) -> str:
    import hashlib
    import json

    from omegaconf import version as oc_version

    stamp = []
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for f in sorted(files):
                if f.endswith(".yaml"):
                    st = os.stat(os.path.join(dirpath, f))
                    stamp.append((os.path.join(dirpath, f), st.st_size, st.st_mtime_ns))
    import importlib.util

    hydra_spec = importlib.util.find_spec("hydra")  # its install, by file stamp: no import, no metadata scan
    hydra_version = os.stat(hydra_spec.origin).st_mtime_ns if hydra_spec and hydra_spec.origin else "?"
    from hpc_ft import __version__

    code = os.stat(__file__).st_mtime_ns  # how composition is done is part of the key, too
    blob = json.dumps([list(overrides), sorted(stamp), hydra_version, oc_version.__version__, __version__, code])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _read_cfg(path: Path) -> Optional[DictConfig]:
    """A composition kept as JSON, or None when it is not there (or unreadable)."""
    import json

    try:
        return OmegaConf.create(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def _write_cfg(folder: Path, name: str, cfg: DictConfig) -> bool:
    """Keep a composition (without Hydra's own node) as folder/name, atomically; False when it cannot be written."""
    import json

    data = OmegaConf.to_container(cfg, resolve=False)
    data.pop("hydra", None)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, folder / name)
        return True
    except OSError:
        return False


def _cache_get(key: str) -> Optional[DictConfig]:
    return _read_cfg(_cache_dir() / f"{key}.json")


def _cache_put(key: str, cfg: DictConfig) -> None:
    d = _cache_dir()
    if not _write_cfg(d, f"{key}.json", cfg):
        return  # a read-only home: compose every time
    try:
        entries = sorted(d.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for old in entries[:-512]:
            old.unlink(missing_ok=True)
    except OSError:
        pass


def to_spec(cfg: DictConfig, work_dir: Optional[str]) -> DictConfig:
    """Merge the composed config onto the typed schema and resolve every interpolation."""
    if "hydra" in cfg:
        with_flag = OmegaConf.to_container(cfg, resolve=False)
        with_flag.pop("hydra", None)
        cfg = OmegaConf.create(with_flag)
    base = str(Path(work_dir or cfg.get("work_dir") or ".").expanduser())
    OmegaConf.set_struct(cfg, False)
    cfg.work_dir = os.path.abspath(base)
    try:
        spec = OmegaConf.merge(schema_config(), cfg)
    except ConfigKeyError as exc:
        key = getattr(exc, "full_key", None) or str(exc)
        raise _unknown_key(str(key)) from None
    except ValidationError as exc:
        key = getattr(exc, "full_key", "") or "config"
        raise UserError(f"{key}: {first_line(exc)}. {_type_fix(key)}") from None
    try:
        OmegaConf.resolve(spec)
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", "") or "config"
        raise UserError(f"{key}: missing value. Set it on the command line: {key}=...") from None
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or "config"
        raise UserError(f"{key}: {first_line(exc)}") from None
    missing = OmegaConf.missing_keys(spec)
    if missing:
        key = sorted(missing)[0]
        raise UserError(f"{key}: missing value. Set it on the command line: {key}=...")
    OmegaConf.set_readonly(spec, False)
    for ds in ("train_ds", "validation_ds", "test_ds"):  # a null file (data.test_file=null) names no file
        names = spec.model.data[ds].file_names
        if any(f is None for f in names):
            spec.model.data[ds].file_names = [f for f in names if f is not None]
    return spec


_TYPE_EXAMPLES = {int: ("an integer", "8"), float: ("a number", "0.5"), bool: ("true or false", "true"),
                  str: ("a string", "'some text'")}


def _type_fix(key: str) -> str:
    """'Give KEY <kind of value>, e.g. KEY=<example>.' from the schema's type of `key`."""
    node = schema_config()
    try:
        for part in key.split("."):
            node = node._get_node(part)
        ref = node._metadata.ref_type
        optional = node._metadata.optional
    except (AttributeError, KeyError, OmegaConfBaseException):
        return f"Give {key} a value of the right type."
    if ref in _TYPE_EXAMPLES:
        kind, example = _TYPE_EXAMPLES[ref]
    elif str(ref).startswith("typing.List"):
        kind, example = "a list", "[a,b]"
    elif str(ref).startswith("typing.Dict"):
        kind, example = "a mapping", "{A:b}"
    else:
        return f"Give {key} a value of the right type."
    return f"Give {key} {kind}{' (or null)' if optional else ''}, e.g. {key}={example}."


def first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def compose_job(overrides: Iterable[str] = (), work_dir: Optional[str] = None) -> DictConfig:
    """Compose, type-check, resolve and check ranges. Returns the JobSpec as a typed DictConfig."""
    from hpc_ft.compose.checks import check_spec

    cfg = hydra_compose(normalise_overrides(list(overrides)))
    spec = to_spec(cfg, work_dir)
    check_spec(spec)
    return spec
