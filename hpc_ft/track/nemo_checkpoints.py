"""Finds the best, last and final checkpoints in a NeMo 1.x experiment directory, and its log files.

Layout (NeMo ``exp_manager`` with ``resume_if_exists=True``, the fine-tuning default)::

    <exp_dir>/<name>/                       log dir: no version folder when resuming is on
      nemo_log_globalrank-0_localrank-0.txt the current attempt's rank-0 log
      run_0/, run_1/, ...                   earlier attempts' log files, moved there at each start
      checkpoints/
        mp_rank_00/ .. mp_rank_03/          TP>1, PP=1 (tp_rank_XX_pp_rank_XXX/ when PP>1)
          <prefix>--validation_loss=0.073-step=4016-consumed_samples=64256.0.ckpt
          <prefix>--validation_loss=0.092-step=6024-consumed_samples=96384.0-last.ckpt
        <prefix>--...-step=...-unfinished   marker: that save never completed
        <exp_manager.name>.nemo             written at the end of training

A checkpoint is reported by its un-injected path (``checkpoints/<file>.ckpt``, the way NeMo
passes it to ``trainer.ckpt_path``) plus the per-rank files. It counts as complete only when
every rank folder holds it and no ``-unfinished`` marker exists.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from hpc_ft.track.events import AttemptStarted, RunFiles, merge_attempts

UNFINISHED_SUFFIX = "-unfinished"
RANK0_LOG_NAME = "nemo_log_globalrank-0_localrank-0.txt"

# <prefix>--<monitor>=<value>-step=<N>[-consumed_samples=<X>][-last|-end][-v<K>][.ckpt]
_CKPT_NAME = re.compile(
    r"^(?P<prefix>.*?)--(?P<monitor>[A-Za-z_][\w./]*)=(?P<value>-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|-?inf|nan)"
    r"-step=(?P<step>\d+)(?:-consumed_samples=(?P<consumed>\d+(?:\.\d*)?))?"
    r"(?P<tag>-last|-end)?(?:-v(?P<version>\d+))?(?P<ext>\.ckpt)?$"
)
_MP_RANK = re.compile(r"^mp_rank_(\d+)(?:_(\d+))?$")
_TP_PP_RANK = re.compile(r"^tp_rank_(\d+)_pp_rank_(\d+)$")
_RANK_COMPONENT = re.compile(r"[/\\](?:mp_rank_\d+(?:_\d+)?|tp_rank_\d+_pp_rank_\d+)(?=[/\\])")
_RUN_DIR = re.compile(r"^run_(\d+)$")


def uninject_rank_dir(path: str) -> str:
    """Drop the ``mp_rank_XX`` / ``tp_rank_XX_pp_rank_XXX`` folder from a checkpoint path."""
    return _RANK_COMPONENT.sub("", path)


@dataclass(frozen=True)
class CheckpointName:
    """The fields NeMo's checkpoint filename template encodes."""

    prefix: str
    monitor: str
    value: float
    step: int
    consumed_samples: float | None
    last: bool
    end: bool
    version: int | None
    is_file: bool  # ends in .ckpt (legacy/PEFT); a directory name otherwise (distributed checkpoint)


def parse_checkpoint_name(name: str) -> CheckpointName | None:
    """Parse a NeMo checkpoint file or directory name; None when it is not one (or is an EMA copy)."""
    m = _CKPT_NAME.match(name)
    if m is None or m["prefix"].endswith("-EMA"):
        return None
    return CheckpointName(
        prefix=m["prefix"],
        monitor=m["monitor"],
        value=float(m["value"]),
        step=int(m["step"]),
        consumed_samples=float(m["consumed"]) if m["consumed"] is not None else None,
        last=m["tag"] == "-last",
        end=m["tag"] == "-end",
        version=int(m["version"]) if m["version"] is not None else None,
        is_file=m["ext"] is not None,
    )


@dataclass(frozen=True)
class NemoCheckpoint:
    """One logical checkpoint, possibly sharded over model-parallel rank folders."""

    path: Path  # un-injected path, as NeMo resumes it
    name: CheckpointName
    rank_paths: tuple[Path, ...]  # the files that exist, one per rank folder ((path,) if unsharded)
    missing_ranks: tuple[str, ...]  # rank folders that lack it
    unfinished: bool  # an -unfinished marker exists

    @property
    def complete(self) -> bool:
        return not self.missing_ranks and not self.unfinished

    @property
    def step(self) -> int:
        return self.name.step

    @property
    def value(self) -> float:
        return self.name.value

    @property
    def last(self) -> bool:
        return self.name.last


@dataclass
class CheckpointSummary:
    """What a ``checkpoints/`` folder holds."""

    directory: Path
    rank_dirs: tuple[str, ...]  # e.g. ("mp_rank_00", ..., "mp_rank_03"); () when unsharded
    checkpoints: list[NemoCheckpoint] = field(default_factory=list)  # by step, then name
    best: NemoCheckpoint | None = None
    last: NemoCheckpoint | None = None
    final_nemo: Path | None = None


def _rank_key(name: str) -> tuple[int, int] | None:
    m = _MP_RANK.match(name)
    if m:
        return int(m[1]), int(m[2] or 0)
    m = _TP_PP_RANK.match(name)
    if m:
        return int(m[1]), int(m[2])
    return None


def expected_rank_dirs(found: list[str], expected_ranks: int | None = None) -> tuple[str, ...]:
    """The rank folders a complete checkpoint must be in.

    With ``expected_ranks`` (TP x PP of the run) for ``mp_rank_XX`` folders: exactly 00..N-1.
    Otherwise every index from 0 to the highest seen, so a missing folder in the middle counts.
    """
    keys = {n: _rank_key(n) for n in found}
    keys = {n: k for n, k in keys.items() if k is not None}
    if not keys:
        if expected_ranks and expected_ranks > 1:
            return tuple(f"mp_rank_{i:02d}" for i in range(expected_ranks))
        return ()
    if any(_TP_PP_RANK.match(n) for n in keys):
        max_tp = max(k[0] for k in keys.values())
        max_pp = max(k[1] for k in keys.values())
        return tuple(f"tp_rank_{t:02d}_pp_rank_{p:03d}" for t in range(max_tp + 1) for p in range(max_pp + 1))
    if any(_MP_RANK.match(n)[2] is not None for n in keys):  # old mp_rank_XX_YYY form
        max_tp = max(k[0] for k in keys.values())
        max_pp = max(k[1] for k in keys.values())
        return tuple(f"mp_rank_{t:02d}_{p:03d}" for t in range(max_tp + 1) for p in range(max_pp + 1))
    count = expected_ranks if expected_ranks else max(k[0] for k in keys.values()) + 1
    return tuple(f"mp_rank_{i:02d}" for i in range(count))


def _marker_path(directory: Path, entry_name: str) -> Path:
    stem = entry_name[: -len(".ckpt")] if entry_name.endswith(".ckpt") else entry_name
    return directory / (stem + UNFINISHED_SUFFIX)


def scan_checkpoints(directory: str | Path, expected_ranks: int | None = None) -> tuple[list[NemoCheckpoint], tuple[str, ...]]:
    """All checkpoints in a NeMo ``checkpoints/`` folder and the rank folders they must be in."""
    directory = Path(directory)
    if not directory.is_dir():
        return [], ()
    entries = list(directory.iterdir())
    rank_names = sorted(e.name for e in entries if e.is_dir() and _rank_key(e.name) is not None)
    ranks = expected_rank_dirs(rank_names, expected_ranks)

    # name -> {rank folder -> path}; "" is the checkpoints folder itself
    found: dict[str, dict[str, Path]] = {}
    for entry in entries:
        if entry.name in rank_names:
            for sub in entry.iterdir():
                if sub.is_file() and parse_checkpoint_name(sub.name) is not None:
                    found.setdefault(sub.name, {})[entry.name] = sub
        elif parse_checkpoint_name(entry.name) is not None:
            if entry.is_file() or (entry.is_dir() and not entry.name.endswith(".ckpt")):
                found.setdefault(entry.name, {})[""] = entry

    checkpoints = []
    for name, where in found.items():
        parsed = parse_checkpoint_name(name)
        assert parsed is not None
        if "" in where:  # unsharded file or distributed-checkpoint directory
            rank_paths: tuple[Path, ...] = (where[""],)
            missing: tuple[str, ...] = ()
        else:
            rank_paths = tuple(where[r] for r in ranks if r in where)
            missing = tuple(r for r in ranks if r not in where)
        checkpoints.append(
            NemoCheckpoint(
                path=directory / name,
                name=parsed,
                rank_paths=rank_paths,
                missing_ranks=missing,
                unfinished=_marker_path(directory, name).exists(),
            )
        )
    checkpoints.sort(key=lambda c: (c.step, c.path.name))
    return checkpoints, ranks


def best_checkpoint(checkpoints: list[NemoCheckpoint], mode: str = "min", monitor: str | None = None) -> NemoCheckpoint | None:
    """The complete top-k checkpoint with the best monitored value (``mode`` "min" or "max").

    ``-last`` checkpoints are candidates only when no top-k one is complete (a -last file can
    only look better than every top-k file when the top-k file it copies is gone). Ties go to
    the earlier step; NaN never wins.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
    sign = 1.0 if mode == "min" else -1.0
    candidates = [
        c
        for c in checkpoints
        if c.complete and not math.isnan(c.value) and (monitor is None or c.name.monitor == monitor)
    ]
    top_k = [c for c in candidates if not c.last]
    pool = top_k or candidates
    if not pool:
        return None
    return min(pool, key=lambda c: (sign * c.value, c.step))


def last_checkpoint(checkpoints: list[NemoCheckpoint]) -> NemoCheckpoint | None:
    """The complete checkpoint NeMo would resume from: the newest ``-last`` one, else the newest."""
    complete = [c for c in checkpoints if c.complete]
    if not complete:
        return None
    lasts = [c for c in complete if c.last]
    pool = lasts or complete
    return max(pool, key=lambda c: (c.step, c.name.version or 0))


def find_final_nemo(directory: str | Path, name: str | None = None) -> Path | None:
    """``<checkpoints>/<name>.nemo`` when it exists, is non-empty and has no unfinished marker.

    Without ``name``: the single un-versioned ``*.nemo`` in the folder, the newest if several.
    """
    directory = Path(directory)
    if name is not None:
        candidates = [directory / f"{name}.nemo"]
    elif directory.is_dir():
        candidates = sorted(
            (p for p in directory.glob("*.nemo") if not re.search(r"-v\d+\.nemo$", p.name)),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
    else:
        candidates = []
    for path in candidates:
        if not path.exists() or (directory / (path.stem + UNFINISHED_SUFFIX)).exists():
            continue
        if path.is_dir() or path.stat().st_size > 0:
            return path
    return None


def inspect_checkpoints(
    directory: str | Path,
    name: str | None = None,
    mode: str = "min",
    expected_ranks: int | None = None,
    monitor: str | None = None,
) -> CheckpointSummary:
    """Scan a ``checkpoints/`` folder: every checkpoint, the best, the last and the final .nemo."""
    directory = Path(directory)
    checkpoints, ranks = scan_checkpoints(directory, expected_ranks)
    return CheckpointSummary(
        directory=directory,
        rank_dirs=ranks,
        checkpoints=checkpoints,
        best=best_checkpoint(checkpoints, mode, monitor),
        last=last_checkpoint(checkpoints),
        final_nemo=find_final_nemo(directory, name),
    )


# ---- experiment directory -------------------------------------------------------------------


@dataclass(frozen=True)
class NemoExpDir:
    """NeMo's log dir for one experiment name, and the per-attempt rank-0 logs in it."""

    log_dir: Path
    checkpoints_dir: Path
    attempt_dirs: tuple[Path, ...]  # run_0, run_1, ... (earlier attempts), by number

    def rank0_logs(self) -> list[Path]:
        """The rank-0 NeMo log of every attempt, oldest first; the current one is last."""
        logs = [d / RANK0_LOG_NAME for d in self.attempt_dirs]
        logs.append(self.log_dir / RANK0_LOG_NAME)
        return [p for p in logs if p.is_file()]


def find_nemo_log_dir(exp_dir: str | Path, name: str | None = None) -> Path | None:
    """NeMo's log dir under ``exp_dir``: ``exp_dir/name`` (no version folder with resume_if_exists),
    else its newest version folder (``version_N`` or a date string), else None.

    Without ``name``: the only sub-folder of ``exp_dir``, or the most recently changed one.
    """
    exp_dir = Path(exp_dir)
    if name is None:
        subdirs = [p for p in exp_dir.iterdir() if p.is_dir()] if exp_dir.is_dir() else []
        if not subdirs:
            return None
        base = max(subdirs, key=lambda p: p.stat().st_mtime)
    else:
        base = exp_dir / name
    if not base.is_dir():
        return None
    if (base / "checkpoints").is_dir() or (base / RANK0_LOG_NAME).is_file() or any(
        _RUN_DIR.match(p.name) for p in base.iterdir()
    ):
        return base
    versions = [p for p in base.iterdir() if p.is_dir() and ((p / "checkpoints").is_dir() or (p / RANK0_LOG_NAME).is_file())]
    if versions:
        return max(versions, key=lambda p: (p.stat().st_mtime, p.name))
    return base


def nemo_exp_dir(log_dir: str | Path) -> NemoExpDir:
    """Describe a NeMo log dir (see ``find_nemo_log_dir``)."""
    log_dir = Path(log_dir)
    runs = []
    if log_dir.is_dir():
        for p in log_dir.iterdir():
            m = _RUN_DIR.match(p.name)
            if m and p.is_dir():
                runs.append((int(m[1]), p))
    return NemoExpDir(
        log_dir=log_dir,
        checkpoints_dir=log_dir / "checkpoints",
        attempt_dirs=tuple(p for _, p in sorted(runs)),
    )


# ---- a folder laid out as the tutorial leaves it ----------------------------------------------

#: Slurm's default output file, as a job submitted without --output leaves it in its working folder
SLURM_DEFAULT_LOG = re.compile(r"^slurm-(\d+)(?:_\d+)?\.out$")
#: where NeMo's exp_dir is looked for inside a run folder: hpc-ft's own (<run>/nemo), the tutorial's (<dir>/results)
EXP_ROOT_NAMES = ("nemo", "results")


def slurm_default_logs(folder: str | Path) -> list[Path]:
    """``slurm-<jobid>.out`` files at the top of ``folder``, oldest job first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m[1]), p) for p in folder.iterdir() if (m := SLURM_DEFAULT_LOG.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def find_exp_root(folder: str | Path) -> Path | None:
    """The folder holding NeMo's ``<name>/`` log dir inside a run folder: ``nemo/`` (hpc-ft) or ``results/``
    (the tutorial's ``EXP_DIR``), the first that holds a NeMo log dir; None when neither does."""
    folder = Path(folder)
    for name in EXP_ROOT_NAMES:
        root = folder / name
        if root.is_dir() and any(
            (sub / "checkpoints").is_dir() or (sub / RANK0_LOG_NAME).is_file()
            or any(p.is_dir() and (p / "checkpoints").is_dir() for p in sub.iterdir())
            for sub in root.iterdir() if sub.is_dir()
        ):
            return root
    return None


def looked_for(folder: str | Path) -> str:
    """What a NeMo run reader looks for in ``folder`` (for the message when none of it is there)."""
    return (f"logs/job.out, logs/job.err, slurm-<jobid>.out, and NeMo's log dir {', '.join(f'{n}/<name>/' for n in EXP_ROOT_NAMES)}"
            f" (checkpoints/, {RANK0_LOG_NAME}) in {folder}")


def _rank0_events(log_dir: Path, reader) -> tuple[list, list[Path]]:
    """Events of NeMo's own rank-0 logs, one file per attempt (used when Slurm logs are missing)."""
    files = nemo_exp_dir(log_dir).rank0_logs()
    events: list = []
    for p in files:
        parsed = reader.job_log(p)
        if events and not (parsed and isinstance(parsed[0], AttemptStarted)):
            events.append(AttemptStarted("nemo"))
        events.extend(parsed)
    return events, files


def read_nemo_run(run_dir: Path, reader, sources: list, log_files: list[Path], *, exp_name: str | None = None,
                  nemo_exp_root=None, mode: str = "min", expected_ranks: int | None = None, **_):
    """A NeMo run's RunFiles: the Slurm logs' events (else NeMo's rank-0 logs), the checkpoints of
    <exp_dir>/<exp_manager.name>/ (best by `mode`, complete only with `expected_ranks` rank folders)."""
    nemo_root = Path(nemo_exp_root) if nemo_exp_root else (find_exp_root(run_dir) or run_dir / "nemo")
    log_dir = find_nemo_log_dir(nemo_root, exp_name) if nemo_root.is_dir() else None
    found = RunFiles(events=[], log_files=list(log_files))
    if log_dir is None and not sources:
        found.notes.append(f"no NeMo log or checkpoints found; looked for {looked_for(run_dir)}")
    summary: CheckpointSummary | None = None
    if log_dir is not None:
        name = exp_name or (log_dir.name if log_dir.parent == nemo_root else log_dir.parent.name)
        summary = inspect_checkpoints(log_dir / "checkpoints", name=name, mode=mode, expected_ranks=expected_ranks)
        found.tb_root = log_dir if log_dir.parent == nemo_root else log_dir.parent  # <exp_dir>/<name>: all version_N
        if not sources:
            rank0, files = _rank0_events(log_dir, reader)
            sources, found.log_files = [rank0], files[-1:]
    found.events = merge_attempts(*sources)
    if summary is not None:
        if summary.best is not None:
            found.fields.update(best_checkpoint=str(summary.best.path), best_value=summary.best.value,
                                best_step=summary.best.step)
        if summary.last is not None:
            found.fields["last_checkpoint"] = str(summary.last.path)
        if summary.final_nemo is not None:
            found.fields["final_artifact"] = str(summary.final_nemo)
        incomplete = [c.path.name for c in summary.checkpoints if not c.complete]
        if incomplete:
            found.notes.append(f"incomplete checkpoints (missing rank files or unfinished): {', '.join(incomplete)}")
    return found
