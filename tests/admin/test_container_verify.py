"""Image verification against the lock (exists, size, sha256, %test) and the cached digest used in run.json."""

from __future__ import annotations

import hashlib
import stat
import sys

import pytest

from hpc_ft.containers import verify as verify_mod
from hpc_ft.containers.lock import ImageEntry, ImageLock, dump_lock, load_lock, write_lock
from hpc_ft.containers.verify import record_digest, record_image, sha256_file, verify_image
from hpc_ft.errors import UserError

PAYLOAD = b"not really a SIF, but bytes are bytes\n" * 1000


@pytest.fixture
def no_runtime(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", str(bindir))
    return bindir


def _lock(tmp_path, size=None, sha=None, produced_by=None) -> ImageLock:
    lock = ImageLock(path=tmp_path / "images.lock")
    lock.images["tiny"] = ImageEntry("tiny", "docker://docker.io/library/ubuntu:22.04", "tiny.sif", "tiny.def", size, sha, produced_by)
    write_lock(lock)
    return lock


def _image(tmp_path, data=PAYLOAD):
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    (images / "tiny.sif").write_bytes(data)
    return images


def _statuses(result):
    return {c.name: c.status for c in result.checks}


def test_matching_size_and_sha_verify_ok(tmp_path, no_runtime):
    images = _image(tmp_path)
    _lock(tmp_path, len(PAYLOAD), hashlib.sha256(PAYLOAD).hexdigest(), "build")
    result = verify_image("tiny", tmp_path / "images.lock", images)
    assert result.ok
    assert _statuses(result) == {"exists": "ok", "size": "ok", "sha256": "ok", "test": "skipped"}
    assert result.check("test").detail == "skipped: singularity not installed"


def test_size_mismatch_fails(tmp_path, no_runtime):
    images = _image(tmp_path)
    _lock(tmp_path, len(PAYLOAD) + 1, hashlib.sha256(PAYLOAD).hexdigest())
    result = verify_image("tiny", tmp_path / "images.lock", images)
    assert not result.ok
    assert _statuses(result)["size"] == "fail" and _statuses(result)["sha256"] == "fail"


def test_same_size_different_content_fails_on_sha(tmp_path, no_runtime):
    tampered = bytearray(PAYLOAD)
    tampered[100] ^= 0xFF
    images = _image(tmp_path, bytes(tampered))
    _lock(tmp_path, len(PAYLOAD), hashlib.sha256(PAYLOAD).hexdigest())
    result = verify_image("tiny", tmp_path / "images.lock", images)
    assert not result.ok
    assert _statuses(result) == {"exists": "ok", "size": "ok", "sha256": "fail", "test": "skipped"}


def test_missing_image_fails_and_says_how_to_build(tmp_path, no_runtime):
    (tmp_path / "images").mkdir()
    _lock(tmp_path, 1, "0" * 64)
    result = verify_image("tiny", tmp_path / "images.lock", tmp_path / "images")
    assert not result.ok
    assert result.checks[0].status == "fail" and "hpc-ft container build tiny" in result.checks[0].detail


def test_unset_lock_values_are_skipped_and_the_digest_reported(tmp_path, no_runtime):
    images = _image(tmp_path)
    _lock(tmp_path)
    result = verify_image("tiny", tmp_path / "images.lock", images)
    assert result.ok
    assert _statuses(result)["size"] == "skipped" and _statuses(result)["sha256"] == "skipped"
    assert result.sha256 == hashlib.sha256(PAYLOAD).hexdigest()


def _fake_singularity(bindir, exit_code):
    script = bindir / "singularity"
    script.write_text(f"#!{sys.executable}\nimport sys\nprint('ran', sys.argv[1:])\nsys.exit({exit_code})\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


@pytest.mark.parametrize("exit_code,status", [(0, "ok"), (1, "fail")])
def test_percent_test_runs_where_the_runtime_exists(tmp_path, no_runtime, exit_code, status):
    _fake_singularity(no_runtime, exit_code)
    images = _image(tmp_path)
    _lock(tmp_path, len(PAYLOAD), hashlib.sha256(PAYLOAD).hexdigest(), "build")
    result = verify_image("tiny", tmp_path / "images.lock", images, nv=False)
    check = result.check("test")
    assert check.status == status
    assert "singularity test" in check.detail and "tiny.sif" in check.detail


def test_plain_pull_has_no_test_to_run(tmp_path, no_runtime):
    _fake_singularity(no_runtime, 1)
    images = _image(tmp_path)
    _lock(tmp_path, len(PAYLOAD), hashlib.sha256(PAYLOAD).hexdigest(), "pull")
    assert verify_image("tiny", tmp_path / "images.lock", images).check("test").status == "skipped"


def test_sha256_is_streamed_in_chunks(tmp_path):
    data = bytes(range(256)) * 4099  # not a multiple of the chunk size
    p = tmp_path / "f"
    p.write_bytes(data)
    assert sha256_file(p, chunk_bytes=1000) == hashlib.sha256(data).hexdigest()


def test_record_digest_caches_by_path_size_and_mtime(tmp_path, monkeypatch):
    cache = tmp_path / "cache" / "digests.json"
    img = tmp_path / "a.sif"
    img.write_bytes(b"one")
    assert record_digest(img, cache) == hashlib.sha256(b"one").hexdigest()

    def boom(*a, **k):
        raise AssertionError("should have used the cache")

    monkeypatch.setattr(verify_mod, "sha256_file", boom)
    assert record_digest(img, cache) == hashlib.sha256(b"one").hexdigest()
    monkeypatch.undo()

    img.write_bytes(b"three")  # size (and mtime) change -> re-hash
    assert record_digest(img, cache) == hashlib.sha256(b"three").hexdigest()


def test_record_digest_survives_a_corrupt_cache_and_missing_file(tmp_path):
    cache = tmp_path / "digests.json"
    cache.write_text("{not json")
    img = tmp_path / "a.sif"
    img.write_bytes(b"x")
    assert record_digest(img, cache) == hashlib.sha256(b"x").hexdigest()
    with pytest.raises(UserError, match="container.image"):
        record_digest(tmp_path / "missing.sif", cache)


def test_record_image_fills_the_lock_from_the_measured_file(tmp_path, no_runtime):
    images = _image(tmp_path)
    _lock(tmp_path)
    record_image("tiny", tmp_path / "images.lock", images, "build")
    entry = load_lock(tmp_path / "images.lock").images["tiny"]
    assert entry.size_bytes == len(PAYLOAD)
    assert entry.sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert entry.produced_by == "build"
    assert verify_image("tiny", tmp_path / "images.lock", images).ok
    (images / "tiny.sif").unlink()
    with pytest.raises(UserError, match="does not exist"):
        record_image("tiny", tmp_path / "images.lock", images, "build")


def test_dumped_lock_marks_unset_values_and_loads_back(tmp_path):
    lock = _lock(tmp_path)
    text = dump_lock(lock)
    assert "sha256: null  # unset" in text
    assert load_lock(tmp_path / "images.lock").images == lock.images


@pytest.mark.parametrize(
    "body,match",
    [
        ("version: 2\nimages: {}\n", "version"),
        ("version: 1\nimages:\n  a: {source: 'docker://x/y:1', sif: a.sif, sha256: abc}\n", "sha256"),
        ("version: 1\nimages:\n  a: {source: 'docker://x/y:1', sif: a.sif, size_bytes: -1}\n", "size_bytes"),
        ("version: 1\nimages:\n  a: {source: 'x/y:1', sif: a.sif}\n", "source"),
        ("version: 1\nimages:\n  a: {source: 'docker://x/y:1', sif: a.sif, colour: red}\n", "unknown keys"),
        ("version: 1\nimages:\n  a: {source: 'docker://x/y:1', sif: sub/a.sif}\n", "sif"),
    ],
)
def test_lock_validation_names_the_bad_key(tmp_path, body, match):
    p = tmp_path / "images.lock"
    p.write_text(body)
    with pytest.raises(UserError, match=match):
        load_lock(p)
