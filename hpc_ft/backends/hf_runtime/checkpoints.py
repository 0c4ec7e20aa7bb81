"""Where a run's checkpoints are: the newest one to resume from, and the best one to evaluate (no torch needed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from hpc_ft.errors import UserError

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
BEST_DIR = "best"
END_RECORD = "train_end.json"
STATE_FILE = "trainer_state.json"


def checkpoint_dirs(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete Trainer checkpoints (checkpoint-N holding trainer_state.json), oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = CHECKPOINT_RE.match(child.name)
        if match and child.is_dir() and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child.resolve()))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = checkpoint_dirs(output_dir)
    return found[-1][1] if found else None


def read_end_record(output_dir: str | Path) -> dict | None:
    """The end event train.py left in <output-dir>/train_end.json when it finished (None if it never did)."""
    path = Path(output_dir) / END_RECORD
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def is_model_dir(path: Path) -> bool:
    """An adapter (adapter_config.json) or a full model (config.json) saved there."""
    return (path / "adapter_config.json").is_file() or (path / "config.json").is_file()


def _existing(recorded: str | None, run_dir: Path) -> Path | None:
    """A recorded checkpoint path, or the same name under run_dir when the run folder was moved or remounted."""
    if not recorded:
        return None
    for candidate in (Path(recorded), run_dir / Path(recorded).name):
        if candidate.is_dir() and is_model_dir(candidate):
            return candidate.resolve()
    return None


def _best_from_state(state_file: Path, run_dir: Path) -> Path | None:
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return _existing(state.get("best_model_checkpoint"), run_dir)


def _best_from_events(events_file: Path | None, run_dir: Path) -> Path | None:
    if events_file is None or not Path(events_file).is_file():
        return None
    from hpc_ft.backends.hf_runtime.events import read_events

    ends = [e for e in read_events(events_file) if e.get("kind") == "end" and e.get("best_checkpoint")]
    return _existing(ends[-1]["best_checkpoint"], run_dir) if ends else None


def resolve_best_checkpoint(run_dir: str | Path, events_file: str | Path | None = None) -> Path:
    """Best checkpoint of a training output dir: top-level trainer_state.json, then best/, then the end event, then the newest checkpoint's state."""
    root = Path(run_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"--adapter auto:{root}: no such folder; point it at the training --output-dir.")
    best = _best_from_state(root / STATE_FILE, root)
    if best is None and is_model_dir(root / BEST_DIR):
        best = (root / BEST_DIR).resolve()
    if best is None:
        best = _best_from_events(Path(events_file) if events_file else None, root)
    if best is None:
        newest = latest_checkpoint(root)
        if newest is not None:
            best = _best_from_state(newest / STATE_FILE, root) or newest
    if best is None:
        raise UserError(
            f"--adapter auto:{root}: no trained checkpoint there (no trainer_state.json, best/ or checkpoint-N); "
            "did the training job finish? Check its log, or pass --adapter PATH."
        )
    return best
