"""Container recipes: find them, read them with spython, and lint them before anyone builds.

A recipe is a Singularity definition file (`*.def`) or a Dockerfile (`Dockerfile*`) in the
recipe directory (`containers/` in a checkout, `hpc_ft/containers_recipes/` when installed).
Parsing and writing go through spython's parsers and writers; `load_recipe` smooths over two
spython quirks (labels and files from a Singularity file are kept as raw strings, which its
SingularityWriter spells out character by character; Docker labels come as one-item lists) so
that a parse -> write -> parse round trip is meaningful.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from hpc_ft.errors import UserError, did_you_mean

# Labels every recipe carries (one source of truth; `hpc-ft container verify` and run.json read them).
REQUIRED_LABELS = (
    "org.hpc-ft.version",  # the hpc-ft release the recipe belongs to
    "org.hpc-ft.base-image",  # e.g. nvcr.io/nvidia/nemo
    "org.hpc-ft.base-tag",  # e.g. 24.03 (never latest)
    "org.hpc-ft.nemo-version",  # "none" for images without NeMo
    "org.hpc-ft.cuda-version",
    "org.hpc-ft.min-compute-capability",  # 7.0 = V100
)

RECIPE_SUFFIXES = (".def",)
DOCKERFILE_PREFIX = "Dockerfile"

# Lines spython adds to the install list to emulate %test / %runscript scripts; they are not %post.
SPYTHON_SCRIPT_LINE = re.compile(r'^(echo ".*" >> /(tests|entrypoint)\.sh|chmod u\+x /(tests|entrypoint)\.sh)$')
_SECTION_LINE = re.compile(r"^%([A-Za-z]+)\b")


@dataclass(frozen=True)
class Problem:
    """One lint finding: the recipe, the rule it breaks, and what to do."""

    path: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: [{self.rule}] {self.message}"


@dataclass
class Recipe:
    """What hpc-ft needs from a parsed recipe (first build stage only)."""

    path: Path
    kind: str  # "singularity" | "docker"
    base: str  # the From/FROM image reference
    labels: dict[str, str]
    environment: dict[str, str]
    post: list[str]  # %post / RUN lines, comments and spython's script emulation removed
    files: list[tuple[str, str]]
    sections: list[str] = field(default_factory=list)  # section names seen in the raw text
    has_test: bool = False
    stages: int = 1

    @property
    def name(self) -> str:
        return recipe_name(self.path)


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference: registry/repository[:tag][@digest]."""

    repository: str
    tag: str | None
    digest: str | None

    @property
    def pinned(self) -> bool:
        return bool(self.digest) or (bool(self.tag) and self.tag != "latest")


def parse_image_ref(ref: str) -> ImageRef:
    """Split `nvcr.io/nvidia/nemo:24.03` (or `...@sha256:...`) into repository, tag and digest."""
    ref = ref.strip()
    if ref.startswith("docker://"):
        ref = ref[len("docker://") :]
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
    tag = None
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:  # a colon in the first component alone is a registry port
        ref, tag = ref.rsplit(":", 1)
    return ImageRef(repository=ref, tag=tag or None, digest=digest or None)


# ----------------------------------------------------------------------------- locating recipes


def recipes_dir() -> Path:
    """The recipe directory: $HPC_FT_CONTAINERS_DIR, the checkout's containers/, or the installed copy."""
    env = os.environ.get("HPC_FT_CONTAINERS_DIR")
    if env:
        return Path(env)
    package_root = Path(__file__).resolve().parent.parent  # .../hpc_ft
    checkout = package_root.parent / "containers"
    if checkout.is_dir() and (package_root.parent / "pyproject.toml").is_file():
        return checkout
    return package_root / "containers_recipes"


def recipe_name(path: str | os.PathLike) -> str:
    """`nemo-24.03.def` -> `nemo-24.03`; `Dockerfile.hf` -> `Dockerfile.hf`."""
    p = Path(path)
    return p.stem if p.suffix in RECIPE_SUFFIXES else p.name


def is_dockerfile(path: str | os.PathLike) -> bool:
    return Path(path).name.startswith(DOCKERFILE_PREFIX)


def list_recipes(directory: str | os.PathLike | None = None) -> list[Path]:
    """Every recipe in `directory` (default `recipes_dir()`): `*.def` and `Dockerfile*`, sorted."""
    d = Path(directory) if directory is not None else recipes_dir()
    if not d.is_dir():
        raise UserError(f"recipe directory {d} does not exist; set HPC_FT_CONTAINERS_DIR to the folder with the .def files")
    found = [p for p in d.iterdir() if p.is_file() and (p.suffix in RECIPE_SUFFIXES or is_dockerfile(p))]
    return sorted(found)


def find_recipe(name: str, directory: str | os.PathLike | None = None) -> Path:
    """The recipe called `name` (`nemo-24.03`, `nemo-24.03.def`, `hf`, or a path)."""
    p = Path(name)
    if p.is_file():
        return p
    recipes = list_recipes(directory)
    by_name = {recipe_name(r): r for r in recipes} | {r.name: r for r in recipes}
    if name in by_name:
        return by_name[name]
    names = sorted(recipe_name(r) for r in recipes)
    raise UserError(f"no recipe named '{name}' in {Path(directory or recipes_dir())}.{did_you_mean(name, names)} Known: {', '.join(names)}")


# ----------------------------------------------------------------------------- parsing


@contextlib.contextmanager
def quiet_spython() -> Iterator[None]:
    """Silence spython's warnings (e.g. a COPY source that only exists at build time)."""
    from spython.logger import bot
    from spython.logger.message import ERROR

    saved = bot.level
    bot.level = ERROR
    try:
        yield
    finally:
        bot.level = saved


def _split_pair(text: str) -> tuple[str, str]:
    """`key value`, `key=value` or `key="value"` -> (key, value)."""
    text = text.strip().rstrip("\\").strip()
    m = re.match(r"^([^\s=]+)\s*(?:=|\s)\s*(.*)$", text)
    if not m:
        return text, ""
    key, value = m.group(1), m.group(2).strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    return key, value


def _normalise_pairs(items: list) -> list[list[str]]:
    """spython keeps Singularity labels/files as strings and Docker ones as lists; make both [a, b]."""
    out = []
    for item in items:
        text = " ".join(item) if isinstance(item, (list, tuple)) else str(item)
        if not text.strip() or text.strip().startswith("#"):
            continue
        out.append(list(_split_pair(text)))
    return out


def _normalise_files(items: list) -> list[list[str]]:
    out = []
    for item in items:
        if isinstance(item, (list, tuple)):
            parts = [str(x) for x in item]
        else:
            parts = str(item).split()
        if not parts or parts[0].startswith("#"):
            continue
        out.append([parts[0], parts[1] if len(parts) > 1 else parts[0]])
    return out


def _post_lines(install: list[str]) -> list[str]:
    lines = []
    for line in install:
        s = line.strip()
        if not s or s.startswith("#") or SPYTHON_SCRIPT_LINE.match(s):
            continue
        lines.append(s)
    return lines


def _raw_sections(path: Path) -> list[str]:
    sections = []
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _SECTION_LINE.match(line.strip())
        if m:
            sections.append(m.group(1).lower())
    return sections


def parse_spython(path: Path, kind: str) -> dict:
    """Run spython's parser; return its stage dict (layer name -> spython Recipe)."""
    from spython.main.parse.parsers import DockerParser, SingularityParser

    parser_cls = DockerParser if kind == "docker" else SingularityParser
    with quiet_spython():
        try:
            parser = parser_cls(str(path))
        except SystemExit as exc:  # spython calls sys.exit on a missing file or a bad FROM
            raise UserError(f"{path}: spython could not parse this {kind} recipe (exit {exc.code})") from None
        except NotImplementedError as exc:
            raise UserError(f"{path}: {exc} (hpc-ft recipes use 'Bootstrap: docker')") from None
        except Exception as exc:  # spython raises assorted errors on malformed input
            raise UserError(f"{path}: spython could not parse this {kind} recipe: {exc}") from None
    for stage in parser.recipe.values():
        stage.labels = _normalise_pairs(stage.labels)
        stage.files = _normalise_files(stage.files)
    return parser.recipe


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Parse a `.def` or `Dockerfile*` with spython into a `Recipe` (first stage)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"recipe {p} does not exist")
    kind = "docker" if is_dockerfile(p) else "singularity"
    stages = parse_spython(p, kind)
    first = next(iter(stages.values()))
    if not first.fromHeader:
        raise UserError(f"{p}: no base image ({'FROM' if kind == 'docker' else 'From:'} line)")
    env = dict(_split_pair(e) for e in first.environ if "=" in e)
    return Recipe(
        path=p,
        kind=kind,
        base=first.fromHeader.strip(),
        labels={k: v for k, v in first.labels},
        environment=env,
        post=_post_lines(first.install),
        files=[(a, b) for a, b in first.files],
        sections=_raw_sections(p) if kind == "singularity" else [],
        has_test=first.test is not None,
        stages=len(stages),
    )


def write_singularity(stages: dict) -> str:
    """spython's SingularityWriter on already-normalised stages.

    For a single stage the `Stage: spython-base` header spython writes is dropped: it adds
    nothing to a one-stage build, and spython's own parser cannot read that stage name back.
    """
    from spython.main.parse.writers import SingularityWriter

    with quiet_spython():
        text = SingularityWriter(stages).convert()
    if len(stages) == 1:
        text = "\n".join(ln for ln in text.splitlines() if not re.match(r"^Stage:\s*spython-base\s*$", ln))
    return text


def _round_trip(path: Path, kind: str) -> tuple[Recipe, Recipe]:
    """Parse `path`, write it as a Singularity recipe, parse that again."""
    before = load_recipe(path)
    text = write_singularity(parse_spython(path, kind))
    with tempfile.TemporaryDirectory(prefix="hpc-ft-lint-") as tmp:
        out = Path(tmp) / "roundtrip.def"
        out.write_text(text + "\n", encoding="utf-8")
        after = load_recipe(out)
    return before, after


# ----------------------------------------------------------------------------- lint


def lint_recipe(path: str | os.PathLike) -> list[Problem]:
    """Check one recipe; return the problems (empty list = clean).

    Rules: it parses with spython; it round-trips (parse -> SingularityWriter -> parse keeps the
    base image, labels, environment and %post lines); the base tag is pinned (present, not
    `latest`); %labels has every key in REQUIRED_LABELS, non-empty, and base-image/base-tag agree
    with the From line; a `.def` has %test and %help.
    """
    p = Path(path)
    shown = str(p)
    problems: list[Problem] = []

    def add(rule: str, message: str) -> None:
        problems.append(Problem(shown, rule, message))

    if not p.is_file():
        add("parse", "recipe file does not exist")
        return problems
    kind = "docker" if is_dockerfile(p) else "singularity"
    if kind == "singularity":
        header = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.strip().startswith("#")]
        bootstrap = next((ln for ln in header if ln.lower().startswith("bootstrap:")), None)
        if bootstrap is None or bootstrap.split(":", 1)[1].strip().lower() != "docker":
            add("bootstrap", "first header must be 'Bootstrap: docker' (the base comes from a registry)")
            return problems
    try:
        recipe = load_recipe(p)
    except UserError as exc:
        add("parse", str(exc))
        return problems

    if recipe.stages > 1:
        add("stages", f"{recipe.stages} build stages; hpc-ft recipes use one stage so labels and %test describe the image")

    ref = parse_image_ref(recipe.base)
    if not ref.pinned:
        add("pinned-tag", f"base image '{recipe.base}' is not pinned: give it an explicit tag other than 'latest' (or @sha256:...)")

    for key, value in recipe.labels.items():
        if not key or key.startswith("%"):
            add("labels", f"malformed label line '{key} {value}'")
    missing = [k for k in REQUIRED_LABELS if k not in recipe.labels]
    if missing:
        add("labels", f"missing labels: {', '.join(missing)} (add them to %labels as 'KEY VALUE')")
    empty = [k for k in REQUIRED_LABELS if k in recipe.labels and not recipe.labels[k].strip()]
    if empty:
        add("labels", f"empty labels: {', '.join(empty)}")
    base_image = recipe.labels.get("org.hpc-ft.base-image")
    base_tag = recipe.labels.get("org.hpc-ft.base-tag")
    if base_image and base_image != ref.repository:
        add("label-base", f"org.hpc-ft.base-image is '{base_image}' but the recipe builds from '{ref.repository}'")
    if base_tag and base_tag != (ref.tag or ref.digest):
        add("label-base", f"org.hpc-ft.base-tag is '{base_tag}' but the recipe builds from tag '{ref.tag}'")

    if kind == "singularity":
        if not recipe.has_test or "test" not in recipe.sections:
            add("test", "no %test section: add checks (imports, versions, sm_70 in the CUDA arch list, expected scripts)")
        if "help" not in recipe.sections:
            add("help", "no %help section: say what the image is for and how to build and run it")

    try:
        before, after = _round_trip(p, kind)
    except UserError as exc:
        add("round-trip", f"written recipe does not parse again: {exc}")
        return problems
    for attr in ("base", "labels", "environment", "post"):
        a, b = getattr(before, attr), getattr(after, attr)
        if a != b:
            add("round-trip", f"{attr} changes after parse -> write -> parse: {_first_difference(a, b)}")
    return problems


def _first_difference(a, b) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        for k in keys:
            if a.get(k) != b.get(k):
                return f"{k!r}: {a.get(k)!r} -> {b.get(k)!r}"
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return f"line {i + 1}: {x!r} -> {y!r}"
        return f"{len(a)} lines -> {len(b)} lines"
    return f"{a!r} -> {b!r}"


def lint_all(directory: str | os.PathLike | None = None) -> list[Problem]:
    """Lint every recipe in the recipe directory."""
    problems: list[Problem] = []
    for path in list_recipes(directory):
        problems.extend(lint_recipe(path))
    return problems
