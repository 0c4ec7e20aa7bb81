"""Backends: the only place that knows a training framework, behind the `Backend` Protocol (base.py)."""

from __future__ import annotations

from types import ModuleType

from hpc_ft.backends.base import Backend, detect_backend, get_backend  # noqa: F401 - the seam


def backend_module(name: str) -> ModuleType:
    if name == "hf":
        from hpc_ft.backends import hf as mod
    elif name == "nemo":
        from hpc_ft.backends import nemo as mod
    else:  # checked at compose time; kept for direct callers
        from hpc_ft.errors import UserError

        raise UserError(f"backend.name={name}: not one of hf, nemo.")
    return mod
