"""The backend seam: a `Backend` Protocol that hf and nemo implement (hf.HfBackend, nemo.NemoBackend).

A backend gives the command lines of the train and eval jobs, the keys it honours, the tasks it
supports, what must exist before the queue, and the run reader for its logs and checkpoints. track/,
submit/ and sweep/ ask `get_backend(name)` and never branch on the backend's name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

from omegaconf import DictConfig

from hpc_ft.render import Step


@runtime_checkable
class Backend(Protocol):
    name: str
    tasks: Tuple[str, ...]          # the tasks it supports
    keys: Tuple[str, ...]           # the config sections (prefixes) it honours
    requires_final_artifact: bool   # a run that ends well leaves a final artifact (NeMo's .nemo); missing = failed

    def train_steps(self, spec: DictConfig, run_dir: str) -> List[Step]:
        """The train job's steps (command lines)."""

    def eval_steps(self, spec: DictConfig, run_dir: str) -> List[Step]:
        """The eval job's steps (command lines)."""

    def prepare_steps(self, spec: DictConfig, run_dir: str) -> List[Step]:
        """Steps of a job that must end well (afterok) before training starts, e.g. NeMo's packing; often none."""

    def job_env(self, spec: DictConfig) -> Dict[str, str]:
        """Environment the job's steps need."""

    def input_problems(self, spec: DictConfig) -> List[str]:
        """Files the job needs that do not exist (one line each, naming the key and a fix)."""

    def point_values(self, spec: Any, run_dir: Path) -> Sequence[Tuple[str, Any]]:
        """Values a sweep point must own (its own folders), as (key, value) pairs."""

    def reader_kwargs(self, cfg: DictConfig, run_dir: Path) -> Dict[str, Any]:
        """What the run reader needs to find this backend's logs and checkpoints, from a run's config.yaml
        and its run directory."""

    def read_run(self, run_dir: Path, reader: Any, sources: list, log_files: List[Path],
                 options: Dict[str, Any]) -> Any:
        """The run reader: a `track.events.RunFiles` (events, checkpoint fields, notes, TensorBoard folder, log
        files) from the run directory. `reader` reads files (track.run_state.EventSources), `sources` are the
        Slurm logs' events, `options` what `reader_kwargs` gave (exp_name, nemo_exp_root, mode, expected_ranks)."""

    def plan_fields(self, spec: DictConfig) -> Dict[str, Any]:
        """How this backend's keys reach the memory planner: PlanRequest's optimizer, recompute,
        gradient_checkpointing, flash_attention and lora_targets (the module names it really targets)."""

    def converts_data(self, report: Any) -> bool:
        """Whether the user's files (a data.checks.DataReport) must be converted at submit for this backend."""

    def read_events(self, run_dir: Path) -> list:
        """The run's events (progress, validation, end), from this backend's logs."""

    def peak_memory_mb(self, run_dir: Path) -> Optional[float]:
        """The peak memory the backend reported, or None."""


BACKEND_NAMES = ("hf", "nemo")


def get_backend(name: str) -> Backend:
    """The Backend of `backend.name`."""
    if name == "hf":
        from hpc_ft.backends.hf import HfBackend

        return HfBackend()
    if name == "nemo":
        from hpc_ft.backends.nemo import NemoBackend

        return NemoBackend()
    from hpc_ft.errors import UserError

    raise UserError(f"backend.name={name}: not one of {', '.join(BACKEND_NAMES)}.")


def detect_backend(run_dir: Path) -> str:
    """The backend of a run folder that has no run.json: hf when it holds hf's events.jsonl, else nemo (a NeMo
    run laid out by hand or by the tutorial)."""
    return "hf" if (Path(run_dir) / "events.jsonl").is_file() else "nemo"
