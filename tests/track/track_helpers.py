"""Helpers for the track tests: fixture logs, and run directories built around them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_dir(case: str) -> Path:
    path = FIXTURES / case
    assert path.is_dir(), path
    return path


def nemo_ckpt_name(prefix: str, value: float, step: int, gbs: int, last: bool = False) -> str:
    """A checkpoint filename as NeMo's default template writes it."""
    return f"{prefix}--validation_loss={value:.3f}-step={step}-consumed_samples={float(step * gbs)}" + (
        "-last" if last else ""
    ) + ".ckpt"


def make_nemo_run(
    root: Path,
    case: str,
    name: str,
    tp: int,
    checkpoints: list[str],
    final_nemo: bool = True,
    partial: dict[str, list[int]] | None = None,
    unfinished: list[str] = (),
) -> Path:
    """A run directory: the fixture's Slurm logs in logs/, NeMo's exp dir in nemo/<name>/.

    ``checkpoints`` are written into every mp_rank_XX folder (TP>1) or the checkpoints folder;
    ``partial`` maps a checkpoint name to the only ranks that have it; ``unfinished`` names get
    NeMo's ``-unfinished`` marker.
    """
    run = root / "run"
    (run / "logs").mkdir(parents=True)
    for f in fixture_dir(case).iterdir():
        if f.name.startswith("job."):
            shutil.copy(f, run / "logs" / f.name)
    ckpt_dir = run / "nemo" / name / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    partial = partial or {}
    for ckpt in list(checkpoints) + list(partial):
        ranks = partial.get(ckpt, range(tp))
        if tp > 1:
            for r in ranks:
                folder = ckpt_dir / f"mp_rank_{r:02d}"
                folder.mkdir(exist_ok=True)
                (folder / ckpt).write_bytes(b"adapter+optimizer state")
        else:
            (ckpt_dir / ckpt).write_bytes(b"adapter+optimizer state")
    for ckpt in unfinished:
        (ckpt_dir / (ckpt.removesuffix(".ckpt") + "-unfinished")).touch()
    if final_nemo:
        (ckpt_dir / f"{name}.nemo").write_bytes(b"tar of model_config.yaml + model_weights.ckpt")
    return run


def make_hf_run(root: Path, case: str, checkpoints: dict[int, dict | None]) -> Path:
    """A run directory for the hf backend: events.jsonl, logs/, checkpoints/checkpoint-N/.

    ``checkpoints`` maps a step to the trainer_state.json content (None: no trainer_state.json,
    i.e. a checkpoint still being written).
    """
    run = root / "run"
    (run / "logs").mkdir(parents=True)
    src = fixture_dir(case)
    shutil.copy(src / "events.jsonl", run / "events.jsonl")
    for f in src.iterdir():
        if f.name.startswith("job."):
            shutil.copy(f, run / "logs" / f.name)
    for step, state in checkpoints.items():
        folder = run / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(b"weights")
        if state is not None:
            (folder / "trainer_state.json").write_text(json.dumps(state))
    return run
