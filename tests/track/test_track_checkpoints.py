"""NeMo checkpoint folders: filename parsing, rank folders, unfinished saves, best/last/final."""

from __future__ import annotations

import os
import time

import pytest
from track_helpers import nemo_ckpt_name

from hpc_ft.track.nemo_checkpoints import (
    NemoExpDir,
    best_checkpoint,
    expected_rank_dirs,
    find_final_nemo,
    find_nemo_log_dir,
    inspect_checkpoints,
    nemo_exp_dir,
    parse_checkpoint_name,
    uninject_rank_dir,
)

PFX = "megatron_gpt_peft_ptuning_tuning"


def test_parse_top_k_and_last_names():
    top = parse_checkpoint_name(f"{PFX}--validation_loss=0.073-step=4016-consumed_samples=64256.0.ckpt")
    assert (top.prefix, top.monitor, top.value, top.step, top.consumed_samples, top.last, top.is_file) == (
        PFX,
        "validation_loss",
        0.073,
        4016,
        64256.0,
        False,
        True,
    )
    last = parse_checkpoint_name(f"{PFX}--validation_loss=0.092-step=6024-consumed_samples=96384.0-last-v1.ckpt")
    assert last.last and last.version == 1 and last.step == 6024
    dist = parse_checkpoint_name(f"{PFX}--validation_exact_string_match=0.850-step=200-consumed_samples=3200.0")
    assert dist.monitor == "validation_exact_string_match" and not dist.is_file


@pytest.mark.parametrize(
    "name",
    [
        "elyza_7b_ptuning.nemo",
        f"{PFX}--validation_loss=0.073-step=4016-consumed_samples=64256.0-unfinished",
        f"{PFX}-EMA--validation_loss=0.073-step=4016.ckpt",
        "model_weights.ckpt",
    ],
)
def test_non_checkpoint_names_are_rejected(name):
    assert parse_checkpoint_name(name) is None


def test_uninject_rank_dir():
    assert uninject_rank_dir("/r/checkpoints/mp_rank_03/a.ckpt") == "/r/checkpoints/a.ckpt"
    assert uninject_rank_dir("/r/checkpoints/tp_rank_01_pp_rank_002/a.ckpt") == "/r/checkpoints/a.ckpt"
    assert uninject_rank_dir("/r/checkpoints/a.ckpt") == "/r/checkpoints/a.ckpt"


def _tp4(tmp_path, files_by_rank: dict[str, range]):
    ck = tmp_path / "checkpoints"
    for name, ranks in files_by_rank.items():
        for r in ranks:
            (ck / f"mp_rank_{r:02d}").mkdir(parents=True, exist_ok=True)
            (ck / f"mp_rank_{r:02d}" / name).write_bytes(b"x")
    return ck


def test_tp4_best_last_and_rank_paths(tmp_path):
    best_name = nemo_ckpt_name(PFX, 0.07349, 4016, 16)
    last_name = nemo_ckpt_name(PFX, 0.0917, 6024, 16, last=True)
    ck = _tp4(tmp_path, {best_name: range(4), last_name: range(4)})
    (ck / "elyza_7b_ptuning.nemo").write_bytes(b"tar")
    summary = inspect_checkpoints(ck, name="elyza_7b_ptuning")
    assert summary.rank_dirs == ("mp_rank_00", "mp_rank_01", "mp_rank_02", "mp_rank_03")
    assert summary.best.path == ck / best_name
    assert summary.best.rank_paths == tuple(ck / f"mp_rank_{r:02d}" / best_name for r in range(4))
    assert summary.last.path == ck / last_name
    assert summary.final_nemo == ck / "elyza_7b_ptuning.nemo"


def test_a_checkpoint_missing_a_rank_or_marked_unfinished_is_not_a_candidate(tmp_path):
    good = nemo_ckpt_name(PFX, 0.073, 4016, 16)
    missing_rank = nemo_ckpt_name(PFX, 0.060, 4518, 16)
    unfinished = nemo_ckpt_name(PFX, 0.050, 5020, 16)
    newest_last = nemo_ckpt_name(PFX, 0.080, 5522, 16, last=True)
    ck = _tp4(tmp_path, {good: range(4), missing_rank: (0, 1, 3), unfinished: range(4), newest_last: (0, 1, 2)})
    (ck / (unfinished.removesuffix(".ckpt") + "-unfinished")).touch()
    older_last = nemo_ckpt_name(PFX, 0.090, 4016, 16, last=True)
    for r in range(4):
        (ck / f"mp_rank_{r:02d}" / older_last).write_bytes(b"x")
    summary = inspect_checkpoints(ck)
    by_step = {c.step: c for c in summary.checkpoints}
    assert by_step[4518].missing_ranks == ("mp_rank_02",) and not by_step[4518].complete
    assert by_step[5020].unfinished and not by_step[5020].complete
    assert summary.best.step == 4016 and not summary.best.last
    assert summary.last.path.name == older_last  # the newest -last lacks a rank


def test_expected_ranks_catches_a_whole_missing_rank_folder(tmp_path):
    name = nemo_ckpt_name(PFX, 0.1, 10, 16)
    ck = _tp4(tmp_path, {name: range(3)})  # mp_rank_03 never created
    assert inspect_checkpoints(ck).best is not None
    assert inspect_checkpoints(ck, expected_ranks=4).best is None


def test_pipeline_parallel_rank_folders(tmp_path):
    ck = tmp_path / "checkpoints"
    name = nemo_ckpt_name(PFX, 0.2, 100, 8)
    for tp in range(2):
        for pp in range(2):
            if (tp, pp) == (1, 1):
                continue
            d = ck / f"tp_rank_{tp:02d}_pp_rank_{pp:03d}"
            d.mkdir(parents=True)
            (d / name).write_bytes(b"x")
    assert expected_rank_dirs(sorted(p.name for p in ck.iterdir())) == (
        "tp_rank_00_pp_rank_000",
        "tp_rank_00_pp_rank_001",
        "tp_rank_01_pp_rank_000",
        "tp_rank_01_pp_rank_001",
    )
    assert inspect_checkpoints(ck).checkpoints[0].missing_ranks == ("tp_rank_01_pp_rank_001",)


def test_unsharded_files_and_max_mode(tmp_path):
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    for value, step in ((0.61, 100), (0.85, 200), (0.72, 300)):
        (ck / f"{PFX}--validation_exact_string_match={value:.3f}-step={step}-consumed_samples={step * 8.0}.ckpt").write_bytes(b"x")
    summary = inspect_checkpoints(ck, mode="max")
    assert summary.best.step == 200 and summary.best.rank_paths == (summary.best.path,)
    assert inspect_checkpoints(ck, mode="min").best.step == 100
    with pytest.raises(ValueError):
        best_checkpoint(summary.checkpoints, mode="median")


def test_distributed_checkpoint_directories(tmp_path):
    ck = tmp_path / "checkpoints"
    d = ck / f"{PFX}--validation_loss=0.300-step=50-consumed_samples=400.0"
    d.mkdir(parents=True)
    (d / "metadata.json").write_text("{}")
    summary = inspect_checkpoints(ck)
    assert summary.best.path == d and summary.best.complete


def test_final_nemo_ignores_backups_empty_and_unfinished_files(tmp_path):
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    assert find_final_nemo(ck) is None
    (ck / "run-v1.nemo").write_bytes(b"old")
    assert find_final_nemo(ck) is None
    (ck / "run.nemo").write_bytes(b"")
    assert find_final_nemo(ck, "run") is None  # still being written
    (ck / "run.nemo").write_bytes(b"tar")
    assert find_final_nemo(ck, "run") == ck / "run.nemo" == find_final_nemo(ck)
    (ck / "run-unfinished").touch()
    assert find_final_nemo(ck, "run") is None


def test_log_dir_with_resume_has_no_version_folder_and_keeps_attempts_in_run_n(tmp_path):
    log_dir = tmp_path / "nemo" / "elyza"
    (log_dir / "checkpoints").mkdir(parents=True)
    for k in (1, 0, 10):
        (log_dir / f"run_{k}").mkdir()
        (log_dir / f"run_{k}" / "nemo_log_globalrank-0_localrank-0.txt").write_text(f"attempt {k}")
    (log_dir / "nemo_log_globalrank-0_localrank-0.txt").write_text("current")
    assert find_nemo_log_dir(tmp_path / "nemo", "elyza") == log_dir
    assert find_nemo_log_dir(tmp_path / "nemo") == log_dir
    exp = nemo_exp_dir(log_dir)
    assert isinstance(exp, NemoExpDir)
    assert [p.read_text() for p in exp.rank0_logs()] == ["attempt 0", "attempt 1", "attempt 10", "current"]
    assert exp.checkpoints_dir == log_dir / "checkpoints"


def test_versioned_log_dir_picks_the_newest_version(tmp_path):
    base = tmp_path / "nemo" / "elyza"
    old = base / "2024-06-06_10-00-00"
    new = base / "2024-06-07_10-00-00"
    for d in (old, new):
        (d / "checkpoints").mkdir(parents=True)
    past = time.time() - 3600
    os.utime(old, (past, past))
    assert find_nemo_log_dir(tmp_path / "nemo", "elyza") == new
    assert find_nemo_log_dir(tmp_path / "nemo", "other") is None
