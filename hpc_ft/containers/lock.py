"""The image lock file (`containers/images.lock`): which SIF each image name means, and its digest.

Format (YAML, version 1):

    version: 1
    images:
      nemo-24.03:
        recipe: nemo-24.03.def        # relative to the lock file's folder; null for a plain pull
        source: docker://nvcr.io/nvidia/nemo:24.03
        sif: nemo_24.03.sif           # file name inside the images directory
        size_bytes: null              # unset until someone builds/pulls the image and records it
        sha256: null                  # 64 lowercase hex characters once recorded
        produced_by: null             # "build" (from the recipe) or "pull" (plain registry image)

`size_bytes`/`sha256` are only ever filled by `record_image` from a file that exists; a null
means "nobody has built this here", never a guess.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from hpc_ft.errors import UserError, did_you_mean

LOCK_VERSION = 1
LOCK_FILENAME = "images.lock"
PRODUCERS = ("build", "pull")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ImageEntry:
    """One image in the lock."""

    name: str
    source: str  # docker://registry/repo:tag the recipe starts from (and what a plain pull fetches)
    sif: str
    recipe: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    produced_by: str | None = None

    @property
    def docker_ref(self) -> str:
        return self.source[len("docker://") :] if self.source.startswith("docker://") else self.source

    @property
    def registry(self) -> str:
        first = self.docker_ref.split("/", 1)[0]
        return first if ("." in first or ":" in first or first == "localhost") and "/" in self.docker_ref else "docker.io"

    @property
    def needs_ngc_login(self) -> bool:
        return self.registry == "nvcr.io"


@dataclass
class ImageLock:
    """All entries of one lock file, plus where it lives (recipes resolve relative to it)."""

    path: Path
    images: dict[str, ImageEntry] = field(default_factory=dict)

    def get(self, name: str) -> ImageEntry:
        if name in self.images:
            return self.images[name]
        known = sorted(self.images)
        raise UserError(
            f"no image named '{name}' in {self.path}.{did_you_mean(name, known)} Known images: {', '.join(known) or 'none'}"
        )

    def recipe_path(self, entry: ImageEntry) -> Path | None:
        return (self.path.parent / entry.recipe) if entry.recipe else None


def default_lock_path() -> Path:
    from hpc_ft.containers.recipes import recipes_dir

    return recipes_dir() / LOCK_FILENAME


def _fail(path: Path, where: str, message: str) -> UserError:
    return UserError(f"{path}: {where}: {message}")


def load_lock(path: str | os.PathLike | None = None) -> ImageLock:
    """Read and validate a lock file (default: the one next to the recipes)."""
    import yaml

    p = Path(path) if path is not None else default_lock_path()
    if not p.is_file():
        raise UserError(f"image lock {p} does not exist; pass the lock file path or set HPC_FT_CONTAINERS_DIR")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise _fail(p, "top level", "expected a mapping with 'version' and 'images'")
    if data.get("version") != LOCK_VERSION:
        raise _fail(p, "version", f"expected {LOCK_VERSION}, found {data.get('version')!r}")
    images = data.get("images") or {}
    if not isinstance(images, dict):
        raise _fail(p, "images", "expected a mapping of image name -> entry")
    lock = ImageLock(path=p)
    for name, raw in images.items():
        name = str(name)
        where = f"images.{name}"
        if not _NAME.match(name):
            raise _fail(p, where, "image names use letters, digits, '.', '_' and '-'")
        if not isinstance(raw, dict):
            raise _fail(p, where, "expected a mapping")
        unknown = set(raw) - {"recipe", "source", "sif", "size_bytes", "sha256", "produced_by"}
        if unknown:
            raise _fail(p, where, f"unknown keys {sorted(unknown)}")
        for key in ("source", "sif"):
            if not isinstance(raw.get(key), str) or not raw[key].strip():
                raise _fail(p, f"{where}.{key}", "required, a non-empty string")
        if not raw["source"].startswith("docker://"):
            raise _fail(p, f"{where}.source", f"expected docker://REGISTRY/REPO:TAG, found {raw['source']!r}")
        if "/" in raw["sif"]:
            raise _fail(p, f"{where}.sif", "a file name inside the images directory, not a path")
        size = raw.get("size_bytes")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise _fail(p, f"{where}.size_bytes", f"expected null or a non-negative integer, found {size!r}")
        sha = raw.get("sha256")
        if sha is not None and (not isinstance(sha, str) or not _SHA256.match(sha)):
            raise _fail(p, f"{where}.sha256", "expected null or 64 lowercase hex characters")
        produced_by = raw.get("produced_by")
        if produced_by is not None and produced_by not in PRODUCERS:
            raise _fail(p, f"{where}.produced_by", f"expected null, 'build' or 'pull', found {produced_by!r}")
        recipe = raw.get("recipe")
        if recipe is not None and not isinstance(recipe, str):
            raise _fail(p, f"{where}.recipe", "expected null or a file name")
        lock.images[name] = ImageEntry(
            name=name,
            source=raw["source"],
            sif=raw["sif"],
            recipe=recipe,
            size_bytes=size,
            sha256=sha,
            produced_by=produced_by,
        )
    return lock


_HEADER = """\
# hpc-ft container image lock (format version 1). One entry per image name:
#   recipe       definition file, relative to this folder (null: the image is a plain registry pull)
#   source       the docker:// image the recipe starts from, tag pinned
#   sif          file name of the built image inside the images directory
#   size_bytes   size of that file, and
#   sha256       its sha256; both null ("unset") until someone builds or pulls the image and
#                records it (hpc_ft.containers.verify.record_image); never filled by hand from guesses
#   produced_by  "build" (singularity build from the recipe) or "pull" (singularity pull of source)
"""


def _yaml_scalar(value) -> str:
    import yaml

    if value is None:
        return "null"
    # safe_dump of a scalar is "VALUE\n...\n"; keep the first line (quoted by YAML when needed).
    return yaml.safe_dump(value, width=1_000_000).splitlines()[0]


def dump_lock(lock: ImageLock) -> str:
    """The lock as text, with the header and an 'unset' note on every null digest field."""
    lines = [_HEADER.rstrip("\n"), f"version: {LOCK_VERSION}", "images:"]
    for name in sorted(lock.images):
        e = lock.images[name]
        lines.append(f"  {name}:")
        lines.append(f"    recipe: {_yaml_scalar(e.recipe)}")
        lines.append(f"    source: {_yaml_scalar(e.source)}")
        lines.append(f"    sif: {_yaml_scalar(e.sif)}")
        note = "  # unset: not built or pulled and recorded yet"
        lines.append(f"    size_bytes: {_yaml_scalar(e.size_bytes)}" + (note if e.size_bytes is None else ""))
        lines.append(f"    sha256: {_yaml_scalar(e.sha256)}" + (note if e.sha256 is None else ""))
        lines.append(f"    produced_by: {_yaml_scalar(e.produced_by)}" + (note if e.produced_by is None else ""))
    return "\n".join(lines) + "\n"


def write_lock(lock: ImageLock, path: str | os.PathLike | None = None) -> Path:
    """Write the lock atomically (temp file + rename) so a reader never sees half a file."""
    p = Path(path) if path is not None else lock.path
    text = dump_lock(lock)
    fd, tmp = tempfile.mkstemp(prefix=".images.lock.", dir=str(p.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return p


def with_digest(entry: ImageEntry, size_bytes: int, sha256: str, produced_by: str) -> ImageEntry:
    if produced_by not in PRODUCERS:
        raise ValueError(f"produced_by must be one of {PRODUCERS}")
    return replace(entry, size_bytes=size_bytes, sha256=sha256, produced_by=produced_by)
