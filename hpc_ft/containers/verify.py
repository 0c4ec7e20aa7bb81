"""Check a built image against the lock (exists, size, sha256, %test), and record image digests cheaply.

`record_digest` hashes a file once per (path, size, mtime): the result is cached in a small JSON
file, so every run can put its container digest in run.json without re-reading a 17 GB SIF.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hpc_ft.containers.lock import ImageLock, load_lock, with_digest, write_lock
from hpc_ft.containers.runtime import detect_runtime, get_runtime, runtime_binary
from hpc_ft.errors import UserError

CHUNK_BYTES = 8 * 1024 * 1024
CACHE_VERSION = 1

OK, FAIL, SKIPPED = "ok", "fail", "skipped"


@dataclass(frozen=True)
class Check:
    name: str  # exists | size | sha256 | test
    status: str  # ok | fail | skipped
    detail: str


@dataclass
class VerifyResult:
    """Outcome of `verify_image`: ok when no check failed (skipped checks do not fail)."""

    name: str
    path: Path
    checks: list[Check] = field(default_factory=list)
    sha256: str | None = None  # the digest computed here, when the file exists
    size_bytes: int | None = None

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def summary(self) -> str:
        lines = [f"{self.name}: {'OK' if self.ok else 'FAILED'} ({self.path})"]
        lines += [f"  {c.name:<7} {c.status:<8} {c.detail}" for c in self.checks]
        return "\n".join(lines)


def sha256_file(path: str | os.PathLike, chunk_bytes: int = CHUNK_BYTES) -> str:
    """sha256 of a file, read in chunks (constant memory)."""
    h = hashlib.sha256()
    buf = bytearray(chunk_bytes)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


def default_cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hpc-ft" / "digests.json"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def _write_cache(path: Path, entries: dict) -> None:
    """Atomic replace; a cache that cannot be written only costs a re-hash next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".digests.", dir=str(path.parent))
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": CACHE_VERSION, "entries": entries}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass


def record_digest(path: str | os.PathLike, cache_path: str | os.PathLike | None = None) -> str:
    """sha256 (hex) of `path`, cached by (absolute path, size, mtime_ns) in a JSON file.

    A changed size or mtime re-hashes; a missing file is a UserError naming `container.image`.
    """
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise UserError(f"container.image={str(path)!r} does not exist; cannot record its digest") from None
    key = str(p.resolve())
    cache_file = Path(cache_path) if cache_path is not None else default_cache_path()
    entries = _read_cache(cache_file)
    hit = entries.get(key)
    if isinstance(hit, dict) and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
        sha = hit.get("sha256")
        if isinstance(sha, str) and len(sha) == 64:
            return sha
    sha = sha256_file(p)
    entries = _read_cache(cache_file)  # re-read: another job may have added entries meanwhile
    entries[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}
    _write_cache(cache_file, entries)
    return sha


def _as_lock(lock: ImageLock | str | os.PathLike | None) -> ImageLock:
    return lock if isinstance(lock, ImageLock) else load_lock(lock)


def verify_image(
    name: str,
    lock: ImageLock | str | os.PathLike | None,
    images_dir: str | os.PathLike,
    *,
    runtime: str | None = None,
    run_test: bool = True,
    nv: bool | None = None,
    timeout_s: float = 1800,
) -> VerifyResult:
    """Check image `name`: the file exists, its size and sha256 match the lock, and its %test passes.

    Size and sha256 are 'skipped' when the lock has them unset (the computed digest is still
    reported, for `record_image`). %test runs via `<runtime> test` only where the binary exists;
    otherwise it is 'skipped: singularity not installed'. A plain pull has no %test to run.
    """
    lk = _as_lock(lock)
    entry = lk.get(name)
    path = Path(images_dir).expanduser() / entry.sif
    result = VerifyResult(name=name, path=path)

    if not path.is_file():
        result.checks.append(Check("exists", FAIL, f"{path} not found; build it with `hpc-ft container build {name}`"))
        return result
    result.checks.append(Check("exists", OK, str(path)))

    size = path.stat().st_size
    result.size_bytes = size
    if entry.size_bytes is None:
        result.checks.append(Check("size", SKIPPED, f"unset in the lock ({size} bytes here)"))
    elif entry.size_bytes == size:
        result.checks.append(Check("size", OK, f"{size} bytes"))
    else:
        result.checks.append(Check("size", FAIL, f"{size} bytes here, {entry.size_bytes} in the lock"))

    if entry.sha256 is None:
        sha = sha256_file(path)
        result.sha256 = sha
        result.checks.append(Check("sha256", SKIPPED, f"unset in the lock (here: {sha})"))
    elif entry.size_bytes is not None and entry.size_bytes != size:
        result.checks.append(Check("sha256", FAIL, "not computed: the size already differs"))
    else:
        sha = sha256_file(path)
        result.sha256 = sha
        if sha == entry.sha256:
            result.checks.append(Check("sha256", OK, sha))
        else:
            result.checks.append(Check("sha256", FAIL, f"{sha} here, {entry.sha256} in the lock"))

    result.checks.append(_run_test(entry, path, runtime, run_test, nv, timeout_s))
    return result


def _run_test(entry, path: Path, runtime: str | None, run_test: bool, nv: bool | None, timeout_s: float) -> Check:
    if not run_test:
        return Check("test", SKIPPED, "not requested")
    if entry.produced_by == "pull":
        return Check("test", SKIPPED, "a plain registry pull has no hpc-ft %test")
    rt_name = runtime or detect_runtime()
    if rt_name == "none":
        return Check("test", SKIPPED, "skipped: singularity not installed")
    rt = get_runtime(rt_name)
    binary = runtime_binary(rt_name)
    if binary is None:
        return Check("test", SKIPPED, f"skipped: {rt.binary} not installed")
    if nv is None:
        nv = shutil.which("nvidia-smi") is not None
    argv = [binary, "test"] + (["--nv"] if nv else []) + [str(path)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return Check("test", FAIL, f"`{' '.join(argv)}` ran past {timeout_s:.0f} s")
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
    detail = f"`{' '.join(argv)}` exit {proc.returncode}" + (": " + " | ".join(tail) if tail else "")
    return Check("test", OK if proc.returncode == 0 else FAIL, detail)


def record_image(
    name: str,
    lock: ImageLock | str | os.PathLike | None,
    images_dir: str | os.PathLike,
    produced_by: str,
    *,
    write: bool = True,
    measured: VerifyResult | None = None,
) -> ImageLock:
    """Put the size and sha256 of the image file that exists now into the lock (and write it).

    `produced_by` is 'build' or 'pull'. Refuses when the file is missing: the lock only ever
    holds digests of files that were actually measured. `measured` is a `verify_image` result
    for the same file: its sha256 is reused (a 17 GB image is not hashed twice) when the file's
    size has not changed since.
    """
    lk = _as_lock(lock)
    entry = lk.get(name)
    path = Path(images_dir).expanduser() / entry.sif
    if not path.is_file():
        raise UserError(f"{path} does not exist; build or pull image '{name}' before recording it in {lk.path}")
    size = path.stat().st_size
    reuse = (
        measured is not None and measured.sha256 is not None and measured.size_bytes == size
        and measured.path.expanduser().resolve() == path.resolve()
    )
    lk.images[name] = with_digest(entry, size, measured.sha256 if reuse else sha256_file(path), produced_by)
    if write:
        write_lock(lk)
    return lk
