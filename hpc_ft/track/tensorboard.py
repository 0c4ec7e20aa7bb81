"""Reads scalars from TensorBoard event files (``events.out.tfevents.*``) without TensorFlow.

NeMo (Lightning's TensorBoardLogger) writes them under ``<exp_dir>/<name>/version_N/``; the
Transformers Trainer writes them under its logging dir when TensorBoard reporting is on. They are
the fourth event source of ``run_state``: used when the logs show no training progress.

The file is a sequence of TFRecords::

    uint64 length | uint32 masked_crc32c(length) | data[length] | uint32 masked_crc32c(data)

(little-endian; masked crc = ((crc >> 15) | (crc << 17)) + 0xa282ead8), each ``data`` one ``Event``
protobuf. Only the few protobuf fields needed are decoded, by hand::

    Event:       1 wall_time (double), 2 step (int64), 5 summary (Summary)
    Summary:     1 value (repeated Value)
    Value:       1 tag (string), 2 simple_value (float), 8 tensor (TensorProto)
    TensorProto: 1 dtype (enum: 1 float, 2 double, 3 int32, 9 int64, 19 half), 4 tensor_content (bytes),
                 5 float_val, 6 double_val, 7 int_val, 10 int64_val, 13 half_val (packed or not)

The length's CRC is always checked (it guards the framing); the data's CRC only with
``verify_data=True`` (pure-Python CRC-32C runs at some MB/s). A record cut short at the end of the
file is one still being written: the reader stops before it and reads it on the next call.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from hpc_ft.track.events import Event, Progress, ValLoss

FILE_GLOB = "events.out.tfevents.*"
_SKIP_DIRS = {"checkpoints", "predictions", "state", "__pycache__", ".git"}


# ---- CRC-32C (Castagnoli), as TFRecord uses it ------------------------------------------------------

def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class CorruptRecord(ValueError):
    """A record whose CRC does not match: the file is damaged (or not an event file) from here on."""


def iter_records(data: bytes, start: int = 0, verify_data: bool = False) -> Iterator[tuple[int, bytes]]:
    """(end offset, record data) for each complete record of ``data`` from ``start``."""
    pos, n = start, len(data)
    while pos + 12 <= n:
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (len_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        if masked_crc(header) != len_crc:
            raise CorruptRecord(f"bad length checksum at byte {pos}")
        end = pos + 12 + length + 4
        if end > n:
            return  # still being written
        body = data[pos + 12:pos + 12 + length]
        if verify_data:
            (data_crc,) = struct.unpack("<I", data[end - 4:end])
            if masked_crc(body) != data_crc:
                raise CorruptRecord(f"bad data checksum in the record at byte {pos}")
        yield end, body
        pos = end


# ---- minimal protobuf decoding ------------------------------------------------------------------------

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of a message: varints as int, fixed64/fixed32 as raw bytes,
    length-delimited as bytes."""
    pos, n = 0, len(buf)
    while pos < n:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > n:
            raise ValueError("truncated protobuf message")
        yield number, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _tensor_value(buf: bytes) -> float | None:
    """The first element of a scalar TensorProto."""
    dtype, content = 0, b""
    values: list[float] = []
    for number, wire, value in _fields(buf):
        if number == 1 and wire == 0:
            dtype = value  # type: ignore[assignment]
        elif number == 4 and wire == 2:
            content = value  # type: ignore[assignment]
        elif number == 5:  # float_val: packed (wire 2) or one fixed32 (wire 5)
            values.extend(struct.unpack(f"<{len(value) // 4}f", value))  # type: ignore[arg-type]
        elif number == 6:  # double_val: packed (wire 2) or one fixed64 (wire 1)
            values.extend(struct.unpack(f"<{len(value) // 8}d", value))  # type: ignore[arg-type]
        elif number in (7, 10, 13) and wire == 2:  # int_val / int64_val / half_val, packed varints
            pos, raw = 0, value
            while pos < len(raw):  # type: ignore[arg-type]
                v, pos = _varint(raw, pos)  # type: ignore[arg-type]
                values.append(float(_signed64(v)) if number != 13 else struct.unpack("<e", struct.pack("<H", v))[0])
        elif number in (7, 10) and wire == 0:
            values.append(float(_signed64(value)))  # type: ignore[arg-type]
    if values:
        return values[0]
    fmt = {1: ("<f", 4), 2: ("<d", 8), 3: ("<i", 4), 9: ("<q", 8), 19: ("<e", 2)}.get(dtype)
    if fmt and len(content) >= fmt[1]:
        return float(struct.unpack(fmt[0], content[:fmt[1]])[0])
    return None


@dataclass(frozen=True)
class Scalar:
    tag: str
    step: int
    value: float
    wall_time: float | None = None


def parse_event(data: bytes) -> list[Scalar]:
    """The scalars of one serialized Event (none for file-version, graph and other records)."""
    wall, step, summary = None, 0, None
    for number, wire, value in _fields(data):
        if number == 1 and wire == 1:
            (wall,) = struct.unpack("<d", value)  # type: ignore[arg-type]
        elif number == 2 and wire == 0:
            step = _signed64(value)  # type: ignore[arg-type]
        elif number == 5 and wire == 2:
            summary = value
    if summary is None:
        return []
    out: list[Scalar] = []
    for number, wire, value in _fields(summary):  # type: ignore[arg-type]
        if number != 1 or wire != 2:
            continue
        tag, scalar = "", None
        for vn, vw, vv in _fields(value):  # type: ignore[arg-type]
            if vn == 1 and vw == 2:
                tag = vv.decode("utf-8", "replace")  # type: ignore[union-attr]
            elif vn == 2 and vw == 5:
                (scalar,) = struct.unpack("<f", vv)  # type: ignore[arg-type]
            elif vn == 8 and vw == 2 and scalar is None:
                scalar = _tensor_value(vv)  # type: ignore[arg-type]
        if tag and scalar is not None:
            out.append(Scalar(tag, step, float(scalar), wall))
    return out


# ---- which tags mean what -------------------------------------------------------------------------------

def _norm(tag: str) -> str:
    return tag.strip().lower().replace(" ", "_")


TRAIN_LOSS_TAGS = {"train_loss", "loss", "train/loss", "reduced_train_loss", "train/train_loss", "training_loss",
                   "training/loss", "train/reduced_train_loss"}
VAL_LOSS_TAGS = {"val_loss", "eval/loss", "eval_loss", "validation_loss", "val/loss", "validation/loss",
                 "valid_loss", "val/val_loss"}
STEP_TIME_TAGS = {"train_step_timing", "train_step_timing_in_s", "step_time", "step_time_s", "train/step_time",
                  "train/step_time_s", "train_step_time"}
TOKENS_TAGS = {"tokens_per_s", "train/tokens_per_s", "throughput/tokens_per_s", "tokens_per_second"}


def kind_of(tag: str) -> str | None:
    t = _norm(tag)
    for kind, tags in (("train_loss", TRAIN_LOSS_TAGS), ("val_loss", VAL_LOSS_TAGS), ("step_time_s", STEP_TIME_TAGS),
                       ("tokens_per_s", TOKENS_TAGS)):
        if t in tags:
            return kind
    return None


@dataclass
class TbScalarsReader:
    """Incremental reader of one or more event files: each ``feed_file`` reads only new records.

    ``events()`` gives the track events the scalars stand for: a ``ValLoss`` per validation step
    and one ``Progress`` with the latest step, train loss, step time and tokens/s.
    """

    verify_data: bool = False
    offsets: dict[str, int] = field(default_factory=dict)
    bytes_read: int = 0
    corrupt: list[str] = field(default_factory=list)
    _latest: dict[str, tuple[int, float]] = field(default_factory=dict)
    _step: int | None = None
    _val: dict[int, float] = field(default_factory=dict)

    def feed_file(self, path: str | os.PathLike) -> list[Scalar]:
        key = str(path)
        start = self.offsets.get(key, 0)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < start:  # replaced: read it again
                    start = 0
                f.seek(start)
                data = f.read()
        except OSError:
            return []
        self.bytes_read += len(data)
        scalars: list[Scalar] = []
        end = 0
        try:
            for end, record in iter_records(data, 0, self.verify_data):
                scalars.extend(parse_event(record))
        except (CorruptRecord, ValueError, struct.error, IndexError) as exc:
            self.corrupt.append(f"{path}: {exc}")
            end = len(data)  # skip the rest: it cannot be framed
        self.offsets[key] = start + end
        for s in scalars:
            self.add(s)
        return scalars

    def add(self, s: Scalar) -> None:
        kind = kind_of(s.tag)
        if kind is None:
            return
        self._step = s.step if self._step is None else max(self._step, s.step)
        if kind == "val_loss":
            self._val[s.step] = s.value
        else:
            self._latest[kind] = (s.step, s.value)

    def events(self) -> list[Event]:
        out: list[Event] = [ValLoss(step, v) for step, v in sorted(self._val.items())]
        if self._step is not None and self._latest:
            get = lambda k: self._latest[k][1] if k in self._latest else None  # noqa: E731
            out.append(Progress(step=self._step, train_loss=get("train_loss"), step_time_s=get("step_time_s"),
                                tokens_per_s=get("tokens_per_s"),
                                val_loss=self._val[max(self._val)] if self._val else None))
        return out


def find_event_files(root: str | os.PathLike, max_depth: int = 3) -> list[Path]:
    """``events.out.tfevents.*`` under ``root`` (checkpoint, prediction and state folders skipped),
    oldest first (their names start with the writer's start time)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found: list[Path] = []
    base = len(root.parts)
    for folder, dirs, files in os.walk(root):
        depth = len(Path(folder).parts) - base
        dirs[:] = [] if depth >= max_depth else [d for d in dirs if d not in _SKIP_DIRS]
        found.extend(Path(folder) / f for f in files if f.startswith("events.out.tfevents."))

    def key(p: Path) -> tuple:
        parts = p.name.split(".")
        started = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0
        return (started, str(p))

    return sorted(found, key=key)


def read_tb_events(files: list[Path], verify_data: bool = False) -> list[Event]:
    reader = TbScalarsReader(verify_data=verify_data)
    for p in files:
        reader.feed_file(p)
    return reader.events()


# ---- writing (tests and benches make event files with it) ------------------------------------------------

def _key(number: int, wire: int) -> bytes:
    return _enc_varint((number << 3) | wire)


def _enc_varint(v: int) -> bytes:
    out = bytearray()
    v &= (1 << 64) - 1
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _enc_varint(len(payload)) + payload


def encode_scalar_event(tag: str, value: float, step: int, wall_time: float) -> bytes:
    """An Event with one simple_value scalar, as torch's SummaryWriter writes it."""
    val = _len_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", value)
    summary = _len_field(1, val)
    return _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _enc_varint(step) + _len_field(5, summary)


def frame_record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc(header)) + data + struct.pack("<I", masked_crc(data))
