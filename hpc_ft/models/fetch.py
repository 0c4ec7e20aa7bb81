"""Fetch a model from the Hugging Face Hub at a pinned commit, or from the local cache when offline.

Rules: the revision must be a full 40-character commit hash (a branch such as `main` moves, so
two runs of "the same" config could train different weights) unless `allow_unpinned=True`; the
token is read from an environment variable at call time and handed to huggingface_hub, never
printed, logged or written; with HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE=1) nothing is
downloaded and the snapshot comes from the local cache (HF_HUB_CACHE, or HF_HOME/hub), read when
the function runs rather than when huggingface_hub was imported.

Downloads resume: huggingface_hub keeps partial files and continues them; its tqdm progress bars
are shown as usual (HF_HUB_DISABLE_PROGRESS_BARS=1 turns them off).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Sequence

from hpc_ft.errors import UserError

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
MARKER = ".hpc-ft-fetch.json"
_TRUE = {"1", "true", "yes", "on"}


def is_offline(environ: dict | None = None) -> bool:
    """HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE set to a true value, read now."""
    env = os.environ if environ is None else environ
    return any(str(env.get(k, "")).strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The hub cache folder: `cache_dir`, else $HF_HUB_CACHE, $HUGGINGFACE_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def repo_cache_folder(repo_id: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """`<cache>/models--org--name`, the layout huggingface_hub uses."""
    return hub_cache_dir(cache_dir) / ("models--" + repo_id.replace("/", "--"))


def cached_revisions(repo_id: str, cache_dir: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """Commits present in the local cache for `repo_id`, each with the refs (branches/tags) pointing at it."""
    folder = repo_cache_folder(repo_id, cache_dir)
    commits: dict[str, list[str]] = {}
    snapshots = folder / "snapshots"
    if snapshots.is_dir():
        for d in sorted(snapshots.iterdir()):
            if d.is_dir():
                commits[d.name] = []
    refs = folder / "refs"
    if refs.is_dir():
        for ref in sorted(p for p in refs.rglob("*") if p.is_file()):
            commit = ref.read_text(encoding="utf-8").strip()
            commits.setdefault(commit, []).append(str(ref.relative_to(refs)))
    return commits


def _pin_hint(repo_id: str) -> str:
    return (
        "Pin a full commit hash: set model.revision=<40-hex commit> (on the command line, as in "
        "`hpc-ft model fetch model=<config> model.revision=<commit>`, or in your model config). "
        f"Find it on https://huggingface.co/{repo_id}/commits/main, or with "
        f"`python -c \"from huggingface_hub import HfApi; print(HfApi().model_info('{repo_id}').sha)\"`."
    )


def check_revision(repo_id: str, revision: str | None, allow_unpinned: bool = False) -> str:
    """Return the revision to use; refuse anything but a full commit hash unless `allow_unpinned`."""
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UserError(f"model.repo_id={repo_id!r}: expected 'organisation/name', e.g. 'elyza/ELYZA-japanese-Llama-2-7b'")
    if revision is not None and COMMIT_RE.match(revision):
        return revision
    if allow_unpinned:
        return revision or "main"
    if revision is None or revision == "":
        raise UserError(f"model.revision is not set for {repo_id}: an unpinned download can change under you. {_pin_hint(repo_id)}")
    if re.fullmatch(r"[0-9a-fA-F]{7,39}", revision):
        raise UserError(f"model.revision={revision!r} looks like a short commit hash; use all 40 characters. {_pin_hint(repo_id)}")
    if re.fullmatch(r"[0-9a-fA-F]{40}", revision):
        raise UserError(f"model.revision={revision!r}: write the commit hash in lowercase")
    raise UserError(
        f"model.revision={revision!r} for {repo_id} is a branch or tag, which can move. {_pin_hint(repo_id)} "
        "(or pass allow_unpinned / --allow-unpinned to accept whatever it points to now)"
    )


class _NeverRaised(Exception):
    """Stands in for an error class an older huggingface_hub does not define."""


def _hf_error(name: str) -> type[BaseException]:
    import huggingface_hub.utils as hf_utils

    try:
        from huggingface_hub import errors as hf_errors
    except ImportError:  # huggingface_hub < 0.24 keeps them in utils only
        hf_errors = hf_utils
    return getattr(hf_errors, name, None) or getattr(hf_utils, name, None) or _NeverRaised


def _read_token(token_env: str | None) -> str | None:
    if not token_env:
        return None
    value = os.environ.get(token_env)
    return value or None


def _marker_matches(local_dir: Path, repo_id: str, commit: str) -> bool:
    try:
        data = json.loads((local_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if data.get("repo_id") != repo_id or data.get("commit") != commit:
        return False
    return all((local_dir / f).is_file() for f in data.get("files", []))


def _write_marker(local_dir: Path, repo_id: str, revision: str, commit: str, files: Sequence[str]) -> None:
    data = {"repo_id": repo_id, "revision": revision, "commit": commit, "files": sorted(files)}
    tmp = local_dir / (MARKER + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, local_dir / MARKER)


def _snapshot_files(folder: Path) -> list[str]:
    """Files of a snapshot or local_dir, without huggingface_hub's .cache/ and our marker."""
    out = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if p.is_file() and ".cache" not in rel.parts and rel.name not in (MARKER, MARKER + ".tmp"):
            out.append(str(rel))
    return sorted(out)


def _previous_files(local_dir: Path) -> list[str]:
    try:
        data = json.loads((local_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    files = [f for f in data.get("files", []) if isinstance(f, str)]
    return [f for f in files if not os.path.isabs(f) and ".." not in Path(f).parts]


def _materialise(snapshot: Path, local_dir: Path) -> list[str]:
    """Copy (hard-link where possible) the snapshot's files into local_dir as real files."""
    files = _snapshot_files(snapshot)
    for rel in files:
        src = (snapshot / rel).resolve()
        dst = local_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists() and dst.stat().st_size == src.stat().st_size:
            continue
        tmp = dst.with_name(dst.name + ".hpc-ft-partial")
        if tmp.exists():
            tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    return files


def _offline_error(repo_id: str, revision: str, cache: Path) -> UserError:
    have = cached_revisions(repo_id, cache)
    if have:
        listing = "; ".join(f"{c}" + (f" ({', '.join(r)})" if r else "") for c, r in have.items())
        where = f"The cache holds {repo_id} at: {listing}."
    else:
        where = f"{repo_id} is not in that cache at all."
    return UserError(
        f"model {repo_id}@{revision} is not in the local Hugging Face cache {cache}, and HF_HUB_OFFLINE=1 forbids downloading. "
        f"{where} Fix: on a machine with network access run `hpc-ft model fetch` with the same overrides (model.revision={revision}) "
        "with HF_HUB_OFFLINE unset (same HF_HOME), or point HF_HUB_CACHE/HF_HOME at the cache that has it."
    )


def fetch_model(
    repo_id: str,
    revision: str | None,
    local_dir: str | os.PathLike | None,
    token_env: str | None = "HF_TOKEN",
    allow_patterns: Sequence[str] | str | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    allow_unpinned: bool = False,
    ignore_patterns: Sequence[str] | str | None = None,
) -> Path:
    """Download `repo_id` at `revision` (a commit hash) and return the folder holding its files.

    With `local_dir`, the files end up there as real files (as the reference tutorial's
    snapshot_download(local_dir=...)) and a `.hpc-ft-fetch.json` marker records repo and commit;
    without it, the path of the snapshot in the hub cache is returned. Offline (HF_HUB_OFFLINE=1),
    the snapshot comes from the cache and is copied (hard-linked where possible) into `local_dir`.
    """
    import huggingface_hub

    rev = check_revision(repo_id, revision, allow_unpinned)
    cache = hub_cache_dir(cache_dir)
    target = Path(local_dir).expanduser().resolve() if local_dir is not None else None

    if is_offline():
        commit = rev if COMMIT_RE.match(rev) else None
        if commit is None:  # allowed-unpinned branch name: resolve through refs/ in the cache
            ref = repo_cache_folder(repo_id, cache) / "refs" / rev
            commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() else None
        if target is not None and commit is not None and _marker_matches(target, repo_id, commit):
            return target
        try:
            snapshot = huggingface_hub.snapshot_download(
                repo_id, revision=rev, cache_dir=str(cache), local_files_only=True,
                allow_patterns=allow_patterns, ignore_patterns=ignore_patterns,
            )
        except _hf_error("LocalEntryNotFoundError"):
            raise _offline_error(repo_id, rev, cache) from None
        except _hf_error("IncompleteSnapshotError") as exc:
            raise UserError(f"the cached snapshot of {repo_id}@{rev} in {cache} is incomplete ({exc}); re-run the fetch with network access") from None
        snapshot_path = Path(snapshot)
        if target is None:
            return snapshot_path
        target.mkdir(parents=True, exist_ok=True)
        previous = _previous_files(target)
        files = _materialise(snapshot_path, target)
        for stale in set(previous) - set(files):  # left over from the revision fetched before
            (target / stale).unlink(missing_ok=True)
        _write_marker(target, repo_id, rev, snapshot_path.name, files)
        return target

    token = _read_token(token_env)
    try:
        if not COMMIT_RE.match(rev):  # allow_unpinned: record the commit the branch points at now
            info = huggingface_hub.HfApi().model_info(repo_id, revision=rev, token=token)
            rev_commit = info.sha
        else:
            rev_commit = rev
        path = huggingface_hub.snapshot_download(
            repo_id, revision=rev_commit, cache_dir=str(cache), local_dir=str(target) if target else None,
            token=token, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns,
        )
    except _hf_error("RevisionNotFoundError"):
        raise UserError(f"model.revision={rev!r} does not exist in {repo_id}. {_pin_hint(repo_id)}") from None
    except _hf_error("GatedRepoError"):
        raise UserError(
            f"{repo_id} is gated: accept its licence on https://huggingface.co/{repo_id} with your account, "
            f"then export {token_env or 'HF_TOKEN'}=<a read token> (https://huggingface.co/settings/tokens)"
        ) from None
    except _hf_error("RepositoryNotFoundError"):
        raise UserError(
            f"model repository {repo_id} was not found (or is private): check the spelling; for a private repo "
            f"export {token_env or 'HF_TOKEN'}=<a read token>"
        ) from None
    except _hf_error("LocalEntryNotFoundError") as exc:
        raise UserError(f"could not reach the Hugging Face Hub for {repo_id} and it is not cached: {type(exc).__name__}. Check the network or set HF_ENDPOINT") from None
    result = Path(path)
    if target is not None:
        _write_marker(target, repo_id, rev, rev_commit, _snapshot_files(target))
    return result
