"""TensorBoard event files read without TensorFlow: a file written by TensorBoard's own writer, records
still being written, damage, and the fourth event source of run_state."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from hpc_ft.track.events import Progress, ValLoss
from hpc_ft.track.run_state import state_from_run_dir
from hpc_ft.track.tensorboard import (
    TbScalarsReader,
    crc32c,
    encode_scalar_event,
    find_event_files,
    frame_record,
    iter_records,
    parse_event,
    read_tb_events,
)

GOLDEN = Path(__file__).parent / "fixtures" / "tensorboard" / "events.out.tfevents.1763700000.node01.4242.0"


def test_crc32c_is_castagnoli():
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value
    assert crc32c(b"") == 0


def test_a_file_written_by_tensorboard_itself_is_read_with_every_checksum_verified():
    data = GOLDEN.read_bytes()
    records = list(iter_records(data, verify_data=True))
    assert records[-1][0] == len(data) and len(records) == 128  # file_version + 127 summaries
    scalars = [s for _, r in records for s in parse_event(r)]
    by_tag = {}
    for s in scalars:
        by_tag.setdefault(s.tag, []).append(s)
    assert len(by_tag["reduced_train_loss"]) == 30
    last = by_tag["reduced_train_loss"][-1]
    assert last.step == 30 and last.value == pytest.approx(1.5) and last.wall_time == 1763700030.0
    assert [s.value for s in by_tag["eval/loss"]] == pytest.approx([2.3, 2.1, 1.9])  # float tensors
    assert by_tag["tokens_per_s"][0].value == 12345.5  # a double tensor's tensor_content

    events = read_tb_events([GOLDEN], verify_data=True)
    assert [e for e in events if isinstance(e, ValLoss)] == [ValLoss(10, pytest.approx(2.3)),
                                                             ValLoss(20, pytest.approx(2.1)),
                                                             ValLoss(30, pytest.approx(1.9))]
    progress = events[-1]
    assert isinstance(progress, Progress) and progress.step == 30
    assert progress.train_loss == pytest.approx(1.5) and progress.step_time_s == pytest.approx(0.28)
    assert progress.tokens_per_s == 12345.5


def test_a_record_still_being_written_is_read_on_the_next_call(tmp_path):
    data = GOLDEN.read_bytes()
    ends = [end for end, _ in iter_records(data)]
    path = tmp_path / "events.out.tfevents.1.h.1.0"
    cut = ends[40] + 7  # mid-record
    path.write_bytes(data[:cut])
    reader = TbScalarsReader()
    first = reader.feed_file(path)
    assert reader.offsets[str(path)] == ends[40]
    with open(path, "ab") as f:
        f.write(data[cut:])
    second = reader.feed_file(path)
    assert reader.bytes_read == cut + (len(data) - ends[40])
    whole = [s for _, r in iter_records(data) for s in parse_event(r)]
    assert first + second == whole


def test_damage_is_reported_and_does_not_raise(tmp_path):
    data = bytearray(GOLDEN.read_bytes())
    ends = [end for end, _ in iter_records(bytes(data))]
    data[ends[10] + 2] ^= 0xFF  # the length field of record 11
    path = tmp_path / "events.out.tfevents.1.h.1.0"
    path.write_bytes(bytes(data))
    reader = TbScalarsReader()
    scalars = reader.feed_file(path)
    assert reader.corrupt and "length checksum" in reader.corrupt[0]
    assert len(scalars) == 10  # records 1..10 (record 0 is the file version)
    data = bytearray(GOLDEN.read_bytes())
    data[ends[3] + 20] ^= 0x01  # inside the data of record 4
    with pytest.raises(ValueError, match="data checksum"):
        list(iter_records(bytes(data), verify_data=True))


def test_hand_encoded_events_read_back():
    rec = frame_record(encode_scalar_event("train_loss", 0.5, 7, 1.0))
    [(end, body)] = list(iter_records(rec, verify_data=True))
    assert end == len(rec)
    [s] = parse_event(body)
    assert (s.tag, s.step, s.value) == ("train_loss", 7, 0.5)


def _nemo_run_without_progress(tmp_path) -> Path:
    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True)
    # a log with NeMo's start-up but no progress bar (enable_progress_bar=False), still running
    (run_dir / "logs" / "job.out").write_text("[hpc-ft] attempt 1 start job=1 host=n1\nGPU available: True (cuda)\n")
    version = run_dir / "nemo" / "megatron_gpt_peft" / "version_0"
    version.mkdir(parents=True)
    shutil.copy(GOLDEN, version / GOLDEN.name)
    return run_dir


def test_run_state_takes_progress_from_tensorboard_when_the_log_has_none(tmp_path):
    run_dir = _nemo_run_without_progress(tmp_path)
    rs = state_from_run_dir(run_dir, "nemo", slurm_state="RUNNING", exp_name="megatron_gpt_peft", max_steps=100)
    assert rs.step == 30 and rs.max_steps == 100
    assert rs.train_loss == pytest.approx(1.5) and rs.val_loss == pytest.approx(1.9)
    assert rs.best_val_loss == pytest.approx(1.9) and rs.step_time_s == pytest.approx(0.28)
    assert rs.end_cause.value == "RUNNING"


def test_hf_run_with_tensorboard_logging_and_an_empty_event_file(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "events.jsonl").write_text(json.dumps({"kind": "start", "max_steps": 40}) + "\n")
    tb = run_dir / "tb" / "Nov21_12-00-00_node01"
    tb.mkdir(parents=True)
    path = tb / "events.out.tfevents.1763700100.node01.1.0"
    path.write_bytes(b"".join(frame_record(encode_scalar_event(tag, v, step, 1.0 + step))
                              for step in (5, 10) for tag, v in (("train/loss", 1.0 / step), ("eval/loss", 2.0 / step))))
    (run_dir / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    (run_dir / "checkpoints" / "checkpoint-5" / "events.out.tfevents.9.x.1.0").write_bytes(b"not read")
    assert find_event_files(run_dir) == [path]
    rs = state_from_run_dir(run_dir, "hf", slurm_state="RUNNING")
    assert rs.step == 10 and rs.train_loss == pytest.approx(0.1) and rs.best_val_loss == pytest.approx(0.2)


def test_the_log_wins_when_it_shows_progress(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "events.jsonl").write_text(
        json.dumps({"kind": "start", "max_steps": 40}) + "\n"
        + json.dumps({"kind": "train", "step": 3, "loss": 2.0}) + "\n")
    (run_dir / "tb").mkdir()
    (run_dir / "tb" / "events.out.tfevents.1.h.1.0").write_bytes(frame_record(encode_scalar_event("loss", 9.0, 99, 1.0)))
    rs = state_from_run_dir(run_dir, "hf", slurm_state="RUNNING")
    assert rs.step == 3 and rs.train_loss == 2.0


def test_struct_layout_of_a_record_header():
    rec = frame_record(b"abc")
    assert struct.unpack("<Q", rec[:8])[0] == 3 and len(rec) == 8 + 4 + 3 + 4
