"""Compose: Hydra configs + overrides -> a validated, typed JobSpec."""

from hpc_ft.compose.compose import compose_job, conf_dir
from hpc_ft.compose.schema import JobSpec

__all__ = ["JobSpec", "compose_job", "conf_dir"]
