"""The typed schema, `OmegaConf.structured(JobSpec)`, kept as a pickle beside its source (as Python keeps bytecode).

Building it walks every dataclass and deep-copies each nested node: about a tenth of a whole
`hpc-ft train --dry-run`. Loading the pickle takes under a millisecond. The file name carries a
hash of the source of every module that defines a dataclass of the schema, omegaconf's version and
Python's, so an edited schema (or another omegaconf) is built anew, never read stale. The pickle goes
to the package's `__pycache__` when that is writable, else to the user's cache folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import sys
from pathlib import Path
from typing import List

from omegaconf import DictConfig


def _schema_modules(root: type) -> List[str]:
    """Source files of the modules defining `root` and the dataclasses nested in it (by default_factory)."""
    seen, files, todo = set(), [], [root]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        path = getattr(sys.modules.get(cls.__module__), "__file__", None)
        if path and path not in files:
            files.append(path)
        for f in dataclasses.fields(cls):
            factory = f.default_factory
            if isinstance(factory, type) and dataclasses.is_dataclass(factory):
                todo.append(factory)
    return sorted(files)


def _cache_key(root: type) -> str:
    from omegaconf import version

    digest = hashlib.sha256()
    for path in _schema_modules(root):
        digest.update(Path(path).read_bytes())
    digest.update(f"{root.__module__}.{root.__qualname__}|{version.__version__}|{sys.version}".encode())
    return digest.hexdigest()[:20]


def _places(root: type) -> List[Path]:
    here = Path(sys.modules[root.__module__].__file__).parent / "__pycache__"
    user = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hpc-ft" / "schema"
    return [here, user]


def structured_schema(root: type) -> DictConfig:
    """`OmegaConf.structured(root)`, from the pickle when there is a current one."""
    name = f"{root.__name__.lower()}.{_cache_key(root)}.omegaconf.pickle"
    places = _places(root)
    for place in places:
        try:
            cfg = pickle.loads((place / name).read_bytes())
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, TypeError, ValueError):
            continue
        if isinstance(cfg, DictConfig):
            return cfg
    from omegaconf import OmegaConf

    cfg = OmegaConf.structured(root)
    blob = pickle.dumps(cfg, protocol=pickle.HIGHEST_PROTOCOL)
    for place in places:
        try:
            place.mkdir(parents=True, exist_ok=True)
            partial = place / f".{name}.{os.getpid()}.tmp"
            partial.write_bytes(blob)
            os.replace(partial, place / name)  # readers see the whole file or none
            break
        except OSError:
            continue  # a read-only install: try the user's cache; neither: build it each time
    return cfg
