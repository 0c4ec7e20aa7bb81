"""Model fetch: pinned revisions only, the token from the environment, offline loads from a local hub cache.

The cache is built by hand in the layout huggingface_hub reads:
models--org--name/{blobs/<hash>, snapshots/<commit>/<file> -> ../../blobs/<hash>, refs/main}.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pytest

from hpc_ft.models.fetch import MARKER, cached_revisions, check_revision, fetch_model, hub_cache_dir
from hpc_ft.errors import UserError

REPO_ID = "tiny-org/tiny-llama"
COMMIT_A = "a" * 40
COMMIT_B = "0123456789abcdef0123456789abcdef01234567"
FILES_A = {
    "config.json": json.dumps({"model_type": "llama", "hidden_size": 64}).encode(),
    "tokenizer_config.json": b'{"model_max_length": 128}',
    "sub/extra.txt": b"nested file\n",
}
FILES_B = {"config.json": json.dumps({"model_type": "llama", "hidden_size": 128}).encode()}


def add_snapshot(hub: Path, repo_id: str, commit: str, files: dict[str, bytes], ref: str | None = None) -> Path:
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for rel, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    home = tmp_path / "hf_home"
    hub = home / "hub"
    add_snapshot(hub, REPO_ID, COMMIT_A, FILES_A, ref="main")
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub


def test_cache_dir_follows_hf_home_at_call_time(offline_hub):
    assert hub_cache_dir() == offline_hub


def test_pinned_revision_resolves_from_the_cache(offline_hub):
    path = fetch_model(REPO_ID, COMMIT_A, local_dir=None)
    assert path == offline_hub / "models--tiny-org--tiny-llama" / "snapshots" / COMMIT_A
    assert json.loads((path / "config.json").read_text())["hidden_size"] == 64


def test_offline_fetch_into_local_dir_gives_real_files_and_a_marker(offline_hub, tmp_path):
    out = tmp_path / "models" / "tiny"
    assert fetch_model(REPO_ID, COMMIT_A, out) == out.resolve()
    for rel, data in FILES_A.items():
        assert (out / rel).read_bytes() == data
        assert not (out / rel).is_symlink()
    marker = json.loads((out / MARKER).read_text())
    assert marker["repo_id"] == REPO_ID and marker["commit"] == COMMIT_A
    assert sorted(marker["files"]) == sorted(FILES_A)


def test_switching_revision_replaces_the_files(offline_hub, tmp_path):
    add_snapshot(offline_hub, REPO_ID, COMMIT_B, FILES_B)
    out = tmp_path / "m"
    fetch_model(REPO_ID, COMMIT_A, out)
    fetch_model(REPO_ID, COMMIT_B, out)
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 128
    assert not (out / "tokenizer_config.json").exists() and not (out / "sub" / "extra.txt").exists()
    assert json.loads((out / MARKER).read_text())["commit"] == COMMIT_B


@pytest.mark.parametrize("revision", [None, "", "main", "v1.0", "abc1234", "A" * 40])
def test_unpinned_revisions_are_refused_with_how_to_pin(offline_hub, revision):
    with pytest.raises(UserError) as info:
        fetch_model(REPO_ID, revision, None)
    msg = str(info.value)
    assert "model.revision" in msg
    if revision != "A" * 40:
        assert "model.revision=<40-hex commit>" in msg and f"huggingface.co/{REPO_ID}/commits/main" in msg


def test_allow_unpinned_follows_the_cached_ref(offline_hub):
    path = fetch_model(REPO_ID, "main", None, allow_unpinned=True)
    assert path.name == COMMIT_A
    assert check_revision(REPO_ID, None, allow_unpinned=True) == "main"


def test_missing_repo_offline_is_a_clear_error(offline_hub):
    with pytest.raises(UserError, match="not in the local Hugging Face cache") as info:
        fetch_model("someone/absent", COMMIT_A, None)
    assert "not in that cache at all" in str(info.value)
    assert "HF_HUB_OFFLINE" in str(info.value)


def test_uncached_revision_offline_lists_what_is_cached(offline_hub):
    with pytest.raises(UserError) as info:
        fetch_model(REPO_ID, COMMIT_B, None)
    assert f"{COMMIT_A} (main)" in str(info.value)
    assert cached_revisions(REPO_ID) == {COMMIT_A: ["main"]}


def test_transformers_offline_counts_as_offline(offline_hub, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert fetch_model(REPO_ID, COMMIT_A, None).name == COMMIT_A


def test_bad_repo_id(offline_hub):
    with pytest.raises(UserError, match="organisation/name"):
        fetch_model("no-slash", COMMIT_A, None)


def test_online_fetch_passes_the_token_and_never_shows_it(tmp_path, monkeypatch, caplog, capsys):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MY_TOKEN", "hf_secret_token")
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        local = Path(kwargs["local_dir"])
        local.mkdir(parents=True, exist_ok=True)
        (local / "config.json").write_text("{}")
        return str(local)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    caplog.set_level(logging.DEBUG)
    out = fetch_model(REPO_ID, COMMIT_A, tmp_path / "m", token_env="MY_TOKEN", allow_patterns=["*.json"])
    (repo_id, kwargs), = calls
    assert repo_id == REPO_ID
    assert kwargs["token"] == "hf_secret_token"
    assert kwargs["revision"] == COMMIT_A
    assert kwargs["allow_patterns"] == ["*.json"]
    assert kwargs["cache_dir"] == str(tmp_path / "home" / "hub")
    assert "local_files_only" not in kwargs
    marker = json.loads((out / MARKER).read_text())
    assert marker == {"repo_id": REPO_ID, "revision": COMMIT_A, "commit": COMMIT_A, "files": ["config.json"]}
    captured = capsys.readouterr()
    assert "hf_secret_token" not in captured.out + captured.err + caplog.text
    assert "hf_secret_token" not in (out / MARKER).read_text()


def test_online_fetch_without_the_token_variable_lets_the_hub_decide(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    seen = {}
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: seen.update(kw) or str(tmp_path))
    fetch_model(REPO_ID, COMMIT_A, None, cache_dir=tmp_path / "c")
    assert seen["token"] is None and seen["local_dir"] is None and seen["cache_dir"] == str(tmp_path / "c")
