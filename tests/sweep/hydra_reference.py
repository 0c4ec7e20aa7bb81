"""Hydra's own multirun expansion (BasicSweeper), the reference the sweep's point expansion is checked against."""

from __future__ import annotations

from typing import List, Sequence


def sweep_points(overrides: Sequence[str]) -> List[List[str]]:
    """Hydra's BasicSweeper: multirun overrides (a=1,2  range()  choice()) -> one override list per point."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hpc_ft.compose.compose import normalise_overrides

    parsed = OverridesParser.create().parse_overrides(normalise_overrides(list(overrides)))
    return [list(p) for batch in BasicSweeper.split_arguments(parsed, max_batch_size=None) for p in batch]
