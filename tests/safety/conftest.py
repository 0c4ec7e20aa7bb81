"""Fixtures of the safety tests: tests marked `slurm` skip cleanly when the local Slurm is not usable."""

from __future__ import annotations

import pytest

from tests.safety.helpers import slurm_status


@pytest.fixture(autouse=True)
def _skip_without_slurm(request):
    if request.node.get_closest_marker("slurm") is not None:
        ok, why = slurm_status()
        if not ok:
            pytest.skip(why)
