"""The package's import graph: no import circle between hpc_ft's modules, no import of another module's
private name (`from x import _y`, `import x._y`), and Slurm spoken only by hpc_ft/executors/."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, List, Set, Tuple

PKG = Path(__file__).resolve().parents[2] / "hpc_ft"

# A third-party private module with no public equivalent, and why it is used.
ALLOWED_PRIVATE = {
}


def _modules() -> Dict[str, Path]:
    mods = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _imports(path: Path, name: str, is_pkg: bool) -> List[Tuple[str, List[str], int]]:
    """(module, imported names, line) of every import in the file, function-level ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.extend((a.name, [], node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            out.append((base, [a.name for a in node.names], node.lineno))
    return out


def _graph() -> Tuple[Dict[str, Set[str]], List[str]]:
    mods = _modules()
    graph: Dict[str, Set[str]] = {m: set() for m in mods}
    private: List[str] = []
    for mod, path in mods.items():
        for target, names, line in _imports(path, mod, path.name == "__init__.py"):
            where = f"{path.relative_to(PKG.parent)}:{line}"
            segs = target.split(".")
            for i, seg in enumerate(segs):
                if seg.startswith("_") and not seg.startswith("__"):
                    full = ".".join(segs[: i + 1])
                    if not any(a.startswith(full + ".") or a == full for a in ALLOWED_PRIVATE) \
                            or not all(f"{target}.{n}" in ALLOWED_PRIVATE for n in names):
                        private.append(f"{where}: import of private module {target}")
                    break
            for n in names:
                if n.startswith("_") and not n.startswith("__") and f"{target}.{n}" not in ALLOWED_PRIVATE:
                    private.append(f"{where}: from {target} import {n}")
            if not target.startswith("hpc_ft"):
                continue
            for n in names or [""]:
                sub = f"{target}.{n}" if n else target
                dest = sub if sub in mods else target
                if dest in mods and dest != mod:
                    graph[mod].add(dest)
    return graph, private


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    found: List[List[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    import sys

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_between_modules():
    graph, _ = _graph()
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_another_modules_private_name():
    _, private = _graph()
    assert private == []


SLURM_COMMAND = re.compile(r"""["'](sbatch|sacct|squeue|scancel|sinfo|scontrol)["']""")
EXECUTOR_NAME = re.compile(r"""executor\)?\s*[!=]=\s*["'](slurm|local)["']|["'](slurm|local)["']\s*[!=]=\s*\S*executor""")


def test_only_the_executors_package_runs_slurm_commands_or_compares_executor_names():
    offenders = []
    for path in PKG.rglob("*.py"):
        if path.parent.name == "executors":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if SLURM_COMMAND.search(code) or EXECUTOR_NAME.search(code):
                offenders.append(f"{path.relative_to(PKG.parent)}:{n}: {line.strip()}")
    assert offenders == []


BACKEND_NAME = re.compile(r"""["'](hf|nemo)["']\s*[!=]=|[!=]=\s*["'](hf|nemo)["']""")


def test_track_submit_and_sweep_ask_the_backend_and_never_compare_its_name():
    offenders = []
    for package in ("track", "submit", "sweep"):
        for path in (PKG / package).rglob("*.py"):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if BACKEND_NAME.search(line.split("#", 1)[0]):
                    offenders.append(f"{path.relative_to(PKG.parent)}:{n}: {line.strip()}")
    assert offenders == []
    assert BACKEND_NAME.search('if spec.backend.name == "nemo":') and BACKEND_NAME.search("'hf' != backend")


def test_code_after_compose_reads_specs_by_attribute_only():
    """A single run's spec is a DictConfig, a sweep point's a SpecView: what reads specs after compose uses
    no OmegaConf API, so one code path serves both (submit/rundir.ConfigYaml takes either)."""
    offenders = []
    for package in ("render", "plan", "backends", "sweep", "data", "tasks"):
        for path in (PKG / package).rglob("*.py"):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if "OmegaConf." in line.split("#", 1)[0]:
                    offenders.append(f"{path.relative_to(PKG.parent)}:{n}: {line.strip()}")
    assert offenders == []
