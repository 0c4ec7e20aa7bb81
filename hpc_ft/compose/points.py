"""Compose every point of a multirun sweep without calling Hydra once per point.

The overrides are parsed once with Hydra's own parser (`a=1,2`, `range()`, `choice()`, `glob()` on
groups, `shuffle()`) and expanded in the order of Hydra's BasicSweeper. Each point is then built the
cheapest way that keeps Hydra's semantics:

* compose: Hydra's compose API (memoised on disk) once per distinct *base*: the overrides that are
  not a swept plain `key=value`, i.e. group choices (`model=`, `cluster=`), `+key`/`++key`/`~key`
  and everything not swept. A swept `+key=1,2` therefore gets a real compose per value.
* fast: a swept `key=value` on a leaf that exists in the composed config, whose value is a plain
  scalar accepted by the schema's type, and that no interpolation depends on: the base's resolved
  spec is copied along the key's path only and the converted value set (microseconds per point).
* medium: other swept `key=value` (a list or mapping value, a key some `${...}` refers to, a value
  the schema refuses, ...): Hydra's own step for config overrides, `OmegaConf.update(cfg, key, value,
  merge=True)` on a copy of the composed config, then the schema merge (`to_spec`).

A key that does not exist gets Hydra's own error (one real compose, reused for every point with it).
Every point ends in `check_spec`; a point that fails carries the error instead of a spec.

Points are `SpecView`s: the resolved spec as plain dicts with attribute access, which check_spec, the
planner bridge, the backends and the renderer read like a DictConfig at dict speed.
"""

from __future__ import annotations

import copy
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from hpc_ft.errors import UserError


class SpecView(dict):
    """A resolved JobSpec as nested dicts with attribute access (`spec.model.micro_batch_size`); read-only by use."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def to_view(value: Any) -> Any:
    """Nested containers (from OmegaConf.to_container) as SpecViews."""
    if isinstance(value, dict):
        return SpecView((k, to_view(v)) for k, v in value.items())
    if isinstance(value, list):
        return [to_view(v) for v in value]
    return value


def view_of(spec) -> SpecView:
    """A SpecView of a resolved DictConfig (what compose_job returns)."""
    from omegaconf import OmegaConf

    return to_view(OmegaConf.to_container(spec, resolve=True))


def with_values(root: SpecView, items: Sequence[Tuple[str, Any]]) -> SpecView:
    """A copy of `root` with dotted keys set; only the dicts along each key's path are copied."""
    new_root = SpecView(root)
    for path, value in items:
        parts = path.split(".")
        node = new_root
        for part in parts[:-1]:
            child = SpecView(node[part])
            dict.__setitem__(node, part, child)
            node = child
        dict.__setitem__(node, parts[-1], value)
    return new_root


# ---- the overrides --------------------------------------------------------------------------------


@dataclass
class Axis:
    """One override of the command line: its choices (override string, parsed value) and how points apply it."""

    key: str                                   # the key element as typed: "model.micro_batch_size", "+foo", "model"
    choices: List[Tuple[str, Any]]
    swept: bool
    value_override: bool                       # a swept plain `key=value` on a config key (applied per point)
    path: str = ""                             # the dotted key of a value override
    name: str = ""                             # Hydra's key_or_group
    group: bool = False                        # a config group choice (model=, cluster=, +experiment=, x@pkg=)


def _group_names() -> Set[str]:
    """Config groups (folders holding .yaml files) of the shipped and the user's config trees."""
    from hpc_ft.compose.compose import conf_dir, user_conf_dir

    names: Set[str] = set()
    for root in (conf_dir(), user_conf_dir()):
        if not root or not root.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(root):
            if dirpath != str(root) and any(f.endswith(".yaml") for f in files):
                names.add(os.path.relpath(dirpath, root).replace(os.sep, "/"))
    return names


def sweep_axes(overrides: Sequence[str]) -> List[Axis]:
    """Parse the command line's overrides once; one Axis per key (a repeated key: the last one wins, as in Hydra)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob, Override, OverrideType, Transformer
    from hydra.errors import HydraException

    from hpc_ft.compose.compose import first_line, group_options, normalise_overrides

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(normalise_overrides(list(overrides)))
    except HydraException as exc:
        raise UserError(f"sweep overrides: {first_line(exc)}. Use key=a,b,c or key=range(1,5).") from None
    groups = _group_names()
    axes: Dict[str, Axis] = {}
    for o in parsed:
        key = o.get_key_element()
        name = o.key_or_group
        is_group = (o.package is not None or name in groups or "/" in name or name.split(".")[0] == "hydra")
        if o.is_sweep_override():
            if o.is_interval_sweep():
                raise UserError(f"{key}: interval() cannot be listed point by point; use range(a,b,step) or a,b,c.")
            if isinstance(o._value, Glob):
                raw = o._value.filter(group_options(name))
                if not raw:
                    raise UserError(f"{o.input_line}: the glob matches no option of group '{name}'.")
            else:
                raw = list(o.sweep_iterator())
            # the strings as Hydra's BasicSweeper spells them (Transformer.str: re-parseable, special characters escaped)
            choices = [(f"{key}={Transformer.str(r)}", Override._convert_value(r)) for r in raw]
            value_override = o.type == OverrideType.CHANGE and not is_group
            axis = Axis(key, choices, True, value_override, name if value_override else "", name, is_group)
        else:
            axis = Axis(key, [((o.input_line or "").strip(), None)], False, False, "", name, is_group)
        axes[key] = axis  # a repeated key keeps its first position and its last value, as in BasicSweeper
    out = list(axes.values())
    for axis in out:
        # Overrides of overlapping keys (model.optim={...} and model.optim.lr=...) apply in command-line order:
        # such a sweep is composed for real, value by value.
        if axis.value_override and any(_related(axis.name, other.name) for other in out
                                       if other is not axis and not other.group):
            axis.value_override, axis.path = False, ""
    return out


# ---- the points -----------------------------------------------------------------------------------


@dataclass
class Point:
    """One point of the grid: its full override list, its resolved spec or the error that refused it."""

    index: int
    overrides: List[str]
    swept: Dict[str, str] = field(default_factory=dict)  # swept key -> its value as typed in this point
    spec: Optional[SpecView] = None
    error: Optional[str] = None
    how: str = ""                                        # fast | medium | compose (how the spec was built)


_TOKEN = re.compile(r"\.*[A-Za-z_][\w\-]*(?:\.[\w\-]+)*")
_UNSET = object()


def _interpolation_bodies(text: str) -> List[str]:
    """The text inside each top-level `${...}` of a string (nested interpolations included)."""
    bodies, i = [], text.find("${")
    while i >= 0:
        depth, j = 0, i + 1
        while j < len(text):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        bodies.append(text[i + 2:j])
        i = text.find("${", j)
    return bodies


def _interpolations(container: Any, prefix: str = "") -> Dict[str, Set[str]]:
    """dotted path -> the config keys (absolute; a superset) that the interpolation at that path mentions."""
    out: Dict[str, Set[str]] = {}
    if isinstance(container, dict):
        items = container.items()
    elif isinstance(container, list):
        items = enumerate(container)
    else:
        return out
    for k, v in items:
        path = f"{prefix}{k}"
        if isinstance(v, (dict, list)):
            out.update(_interpolations(v, path + "."))
        elif isinstance(v, str) and "${" in v:
            parent = prefix[:-1].split(".") if prefix else []
            refs = set()
            for body in _interpolation_bodies(v):
                for tok in _TOKEN.findall(body):
                    dots = len(tok) - len(tok.lstrip("."))
                    if dots:  # relative: ${.x} is a sibling, ${..x} the parent's sibling
                        tok = ".".join(parent[: max(0, len(parent) - (dots - 1))] + [tok.lstrip(".")])
                    refs.add(tok)
            out[path] = refs
    return out


def _value_mentions(path: str, values: Sequence[Any]) -> Set[str]:
    """The config keys that interpolations inside swept values at `path` mention (relative ones from `path`)."""
    mentioned: Set[str] = set()
    for value in values:
        nested: Any = value
        for part in reversed(path.split(".")):
            nested = {part: nested}
        for refs in _interpolations(nested).values():
            mentioned |= refs
    return mentioned


def _related(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _affected(keys: Sequence[str], refs: Dict[str, Set[str]]) -> Set[str]:
    """`keys` and every interpolation that depends on them, directly or through others."""
    affected = set(keys)
    changed = True
    while changed:
        changed = False
        for path, toks in refs.items():
            if path not in affected and any(_related(t, s) for t in toks for s in affected):
                affected.add(path)
                changed = True
    return affected


def _entangled(key: str, refs: Dict[str, Set[str]]) -> bool:
    """True when some interpolation (directly or through others) depends on `key`."""
    return len(_affected([key], refs)) > 1


def _affected_order(keys: Sequence[str], refs: Dict[str, Set[str]]) -> Optional[List[str]]:
    """The interpolations that depend on `keys` (directly or through each other), dependencies first;
    None for a cycle."""
    affected = _affected(keys, refs)
    todo = [p for p in refs if p in affected and p not in keys]
    order: List[str] = []
    while todo:
        ready = [p for p in todo if not any(_related(t, q) for t in refs[p] for q in todo if q != p)]
        if not ready:
            return None
        order.extend(ready)
        todo = [p for p in todo if p not in ready]
    return order


def _dict_leaf_strings(container: Any, prefix: str = "") -> Dict[str, str]:
    """dotted path -> string value, for the string leaves reached through mappings only (not inside lists)."""
    out: Dict[str, str] = {}
    if isinstance(container, dict):
        for k, v in container.items():
            if isinstance(v, dict):
                out.update(_dict_leaf_strings(v, f"{prefix}{k}."))
            elif isinstance(v, str):
                out[f"{prefix}{k}"] = v
    return out


def _lookup(spec: Any, path: str) -> Any:
    node = spec
    for part in path.split("."):
        node = node[part]  # KeyError/TypeError: not a plain key of this point
    return node


def _put(tree: Dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        nxt = tree.get(part)
        if not isinstance(nxt, dict):
            nxt = tree[part] = {}
        tree = nxt
    tree[parts[-1]] = value


def _node_exists(cfg, path: str) -> bool:
    from omegaconf import DictConfig

    node = cfg
    try:
        for part in path.split("."):
            if not isinstance(node, DictConfig):
                return False
            node = node._get_node(part)
            if node is None:
                return False
    except Exception:  # noqa: BLE001 - struct/readonly access errors mean "not a plain existing key"
        return False
    return True


def _schema_value_node(path: str):
    """The schema's typed leaf node for `path` (None when the key is not a schema leaf)."""
    from omegaconf import DictConfig
    from omegaconf.nodes import ValueNode

    from hpc_ft.compose.compose import schema_config

    node = schema_config()
    try:
        for part in path.split("."):
            if not isinstance(node, DictConfig):
                return None
            node = node._get_node(part)
            if node is None:
                return None
    except Exception:  # noqa: BLE001
        return None
    return node if isinstance(node, ValueNode) else None


class _Base:
    """The composed config of one distinct base override list, and how its points are built."""

    def __init__(self, overrides: List[str], work_dir: Optional[str], value_paths: Sequence[str],
                 value_refs: Dict[str, Set[str]]) -> None:
        from omegaconf import OmegaConf

        from hpc_ft.compose.compose import hydra_compose, to_spec

        self.overrides = overrides
        self.work_dir = work_dir
        self.error: Optional[str] = None
        self.cfg = None
        self.view: Optional[SpecView] = None
        self.fast_paths: Set[str] = set()
        self.missing: Dict[str, Optional[str]] = {}   # path -> Hydra's error for a key that does not exist
        self.compose_paths: Set[str] = set()          # keys Hydra accepts although they are not in the config
        self._converted: Dict[Tuple[str, str, Any], Tuple[bool, Any]] = {}
        self._medium_memo: Dict[str, Any] = {}
        self._resolved: Dict[Tuple, Any] = {}
        self._typed_cfg: Any = _UNSET
        self.refs: Dict[str, Set[str]] = {}
        self.reresolve: List[Tuple[str, str]] = []   # interpolations resolved again per point, in dependency order
        try:
            self.cfg = hydra_compose(overrides)
        except UserError as exc:
            self.error = str(exc)
            return
        try:
            self.view = view_of(to_spec(copy.deepcopy(self.cfg), work_dir))
        except UserError:
            self.view = None  # e.g. a value only the swept override sets: every point takes the medium path
        container = OmegaConf.to_container(self.cfg, resolve=False)
        refs = _interpolations(container)
        for path, mentioned in value_refs.items():  # interpolations in swept values: `gbs=${model.micro_batch_size},16`
            refs[path] = refs.get(path, set()) | mentioned
        self.refs = refs
        entangled = []
        for path in value_paths:
            if not _node_exists(self.cfg, path):
                self.missing[path] = None
            elif path != "work_dir" and _schema_value_node(path) is not None:
                if _entangled(path, refs):
                    entangled.append(path)
                else:
                    self.fast_paths.add(path)
        if entangled:
            # Keys that interpolations depend on stay on the fast path when every such interpolation is a plain
            # reference (`${a.b}_${c}`, no resolver) at a schema leaf outside lists: those are resolved again
            # for each point, from the point's own values.
            order = _affected_order(entangled, refs)
            raw = _dict_leaf_strings(container)
            if order is not None and all(
                    a in raw and a not in value_paths and _schema_value_node(a) is not None
                    and not any(":" in body for body in _interpolation_bodies(raw[a])) for a in order):
                self.fast_paths.update(entangled)
                self.reresolve = [(a, raw[a]) for a in order]

    @property
    def typed(self):
        """The composed config merged onto the schema, interpolations unresolved (None if that fails); made on
        first use."""
        if self._typed_cfg is _UNSET:
            from omegaconf import OmegaConf

            from hpc_ft.compose.compose import schema_config

            data = OmegaConf.to_container(self.cfg, resolve=False)
            data.pop("hydra", None)
            data["work_dir"] = os.path.abspath(str(Path(self.work_dir or data.get("work_dir") or ".").expanduser()))
            try:
                self._typed_cfg = OmegaConf.merge(schema_config(), data)
            except Exception:  # noqa: BLE001 - the canonical path reports what is wrong
                self._typed_cfg = None
        return self._typed_cfg

    def _convert(self, path: str, value: Any) -> Tuple[bool, Any]:
        """(ok, value as the schema stores it); not ok: leave it to the medium path and its error message."""
        if not (value is None or isinstance(value, (bool, int, float, str))):
            return False, None
        if isinstance(value, str) and ("${" in value or value == "???"):  # interpolations, MISSING: the faithful way
            return False, None
        key = (path, type(value).__name__, value)
        hit = self._converted.get(key)
        if hit is None:
            try:
                hit = (True, _schema_value_node(path).validate_and_convert(value))
            except Exception:  # noqa: BLE001 - any refusal goes the faithful way
                hit = (False, None)
            self._converted[key] = hit
        return hit

    def point(self, point: Point, values: Sequence[Tuple[str, Any]]) -> None:
        from hpc_ft.compose.checks import check_spec
        from hpc_ft.compose.compose import compose_job

        if self.error is not None:
            point.error, point.how = self.error, "compose"
            return
        for path, _ in values:
            if path in self.compose_paths:
                point.spec, point.how = view_of(compose_job(point.overrides, self.work_dir)), "compose"
                return
            if path in self.missing:
                # a key that is not in the config: Hydra's own error, from one real compose per key
                point.how = "compose"
                if self.missing[path] is None:
                    try:
                        spec = compose_job(point.overrides, self.work_dir)
                    except UserError as exc:
                        self.missing[path] = str(exc)
                    else:  # Hydra accepted it after all: compose such points for real
                        del self.missing[path]
                        self.compose_paths.add(path)
                        point.spec = view_of(spec)
                        return
                point.error = self.missing[path]
                return
        fast: List[Tuple[str, Any]] = []
        rest: List[Tuple[str, Any]] = []
        for path, value in values:
            ok, converted = self._convert(path, value) if path in self.fast_paths else (False, None)
            if ok:
                fast.append((path, converted))
            else:
                rest.append((path, value))
        point.how = "medium" if rest or self.view is None else "fast"
        if self.view is None:
            base, fast = self._medium(list(values)), []
        elif rest:
            base = self._medium(rest)
        else:
            base = self.view
        spec = with_values(base, fast) if fast else base
        if fast and self.reresolve:
            try:
                spec = self._resolve_again(spec)
            except Exception:  # noqa: BLE001 - e.g. a reference to a whole mapping: do it the faithful way
                spec, point.how = self._medium(list(values)), "medium"
        check_spec(spec)
        point.spec = spec

    def _resolve_again(self, spec: SpecView) -> SpecView:
        """The interpolations that depend on swept keys, resolved from this point's values (OmegaConf on a
        config holding only the keys they mention), converted to the schema's type."""
        from omegaconf import OmegaConf

        for path, text in self.reresolve:
            tokens = sorted(self.refs[path], key=lambda t: t.count("."))
            picked: List[Tuple[str, Any]] = []
            for tok in tokens:
                if any(tok.startswith(p + ".") for p, _ in picked):
                    continue
                picked.append((tok, _lookup(spec, tok)))
            memo_key = (path, repr(picked))
            value = self._resolved.get(memo_key, _UNSET)
            if value is _UNSET:
                mini: Dict[str, Any] = {}
                for tok, v in picked:
                    _put(mini, tok, _plain(v))
                _put(mini, path, text)
                resolved = OmegaConf.select(OmegaConf.create(mini), path, throw_on_missing=True)
                if OmegaConf.is_config(resolved):
                    raise ValueError(f"{path} refers to a whole mapping")
                value = self._resolved[memo_key] = _schema_value_node(path).validate_and_convert(resolved)
            spec = with_values(spec, [(path, value)])
        return spec

    def _medium(self, values: List[Tuple[str, Any]]) -> SpecView:
        """Hydra's step for config overrides, `OmegaConf.update(cfg, key, value, merge=True)`, on a copy.

        On a copy of the typed (schema-merged, unresolved) base when that gives a clean result; otherwise
        (a refused type, a missing value, an unresolvable interpolation, work_dir) on a copy of the composed
        config followed by the schema merge (`to_spec`), whose error messages are the ones every command
        gives. Memoised on the values: points that differ only in fast keys share one medium result."""
        memo_key = repr(values)
        hit = self._medium_memo.get(memo_key)
        if hit is None:
            try:
                hit = self._medium_typed(values)
            except Exception:  # noqa: BLE001 - anything unusual takes the canonical path
                hit = None
            if hit is None:
                try:
                    hit = self._medium_canonical(values)
                except UserError as exc:
                    hit = exc
            self._medium_memo[memo_key] = hit
        if isinstance(hit, UserError):
            raise UserError(str(hit))
        return hit

    def _medium_typed(self, values: List[Tuple[str, Any]]) -> Optional[SpecView]:
        from omegaconf import OmegaConf

        if self.typed is None or any(_related(path, "work_dir") for path, _ in values):
            return None
        cfg = copy.deepcopy(self.typed)
        for path, value in values:
            OmegaConf.update(cfg, path, value, merge=True)
        data = OmegaConf.to_container(cfg, resolve=True)
        return None if _has_missing(data) else to_view(data)

    def _medium_canonical(self, values: List[Tuple[str, Any]]) -> SpecView:
        from omegaconf import OmegaConf

        from hpc_ft.compose.compose import to_spec

        cfg = copy.deepcopy(self.cfg)
        OmegaConf.set_struct(cfg, False)
        for path, value in values:
            OmegaConf.update(cfg, path, value, merge=True)
        return view_of(to_spec(cfg, self.work_dir))


def _has_missing(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_missing(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_missing(v) for v in value)
    return value == "???"


def compose_points(overrides: Sequence[str], work_dir: Optional[str] = None) -> List[Point]:
    """Every point of the sweep, in Hydra's order, each with its spec (a SpecView) or its error."""
    axes = sweep_axes(overrides)
    bases: Dict[Tuple[str, ...], _Base] = {}
    value_paths = [a.path for a in axes if a.value_override]
    value_refs = {a.path: _value_mentions(a.path, [c[1] for c in a.choices]) for a in axes if a.value_override}
    points: List[Point] = []
    for index, combo in enumerate(itertools.product(*[a.choices for a in axes])):
        strings = [c[0] for c in combo]
        base_key = tuple(s for a, s in zip(axes, strings) if not a.value_override)
        base = bases.get(base_key)
        if base is None:
            base = bases[base_key] = _Base(list(base_key), work_dir, value_paths, value_refs)
        point = Point(index=index, overrides=strings,
                      swept={a.key: s.partition("=")[2] for a, s in zip(axes, strings) if a.swept})
        values = [(a.path, c[1]) for a, c in zip(axes, combo) if a.value_override]
        try:
            base.point(point, values)
        except UserError as exc:
            point.spec, point.error = None, str(exc)
        points.append(point)
    return points


def point_overrides(overrides: Sequence[str]) -> List[List[str]]:
    """Only the override lists of the points (what `hpc_ft.compose.compose.sweep_points` returns)."""
    axes = sweep_axes(overrides)
    return [[c[0] for c in combo] for combo in itertools.product(*[a.choices for a in axes])]
