"""`hpc-ft data prepare` through the real CLI: the files written, their row counts and sha256."""

from __future__ import annotations

import hashlib
import json
import re


def _listing(stdout: str) -> dict:
    """{split: (path, rows, sha256)} from the printed table."""
    out = {}
    for m in re.finditer(r"^  (train|valid|test)\s+(\S+)\s+(\d+) rows  sha256 ([0-9a-f]{64})$", stdout, re.M):
        out[m.group(1)] = (m.group(2), int(m.group(3)), m.group(4))
    return out


def _jglue_row(i: int) -> dict:
    return {"q_id": i, "question": f"質問{i}", **{f"choice{k}": f"選択{i}-{k}" for k in range(5)}, "label": i % 5}


def test_synthetic_prepare_prints_each_file_with_rows_and_sha256(cli, work_dir):
    proc = cli("data", "prepare", f"work_dir={work_dir}", "data.synthetic.n_train=40", "data.synthetic.n_valid=7",
               "data.synthetic.n_test=9")
    assert proc.returncode == 0, proc.stderr
    listing = _listing(proc.stdout)
    assert set(listing) == {"train", "valid", "test"}
    folder = work_dir / "data" / "jcommonsenseqa-v1.1"
    expected = {"train": ("train-v1.1.jsonl", 40), "valid": ("valid-v1.1.jsonl", 7), "test": ("test-v1.1.jsonl", 9)}
    for split, (name, n) in expected.items():
        path, rows, sha = listing[split]
        assert path == str(folder / name) and rows == n
        data = (folder / name).read_bytes()
        assert len(data.decode().splitlines()) == n and hashlib.sha256(data).hexdigest() == sha


def test_jglue_source_is_converted(cli, work_dir, tmp_path):
    src = tmp_path / "JGLUE" / "datasets" / "jcommonsenseqa-v1.1"
    src.mkdir(parents=True)
    (src / "train-v1.1.json").write_text("".join(json.dumps(_jglue_row(i), ensure_ascii=False) + "\n" for i in range(20)))
    (src / "valid-v1.1.json").write_text("".join(json.dumps(_jglue_row(i), ensure_ascii=False) + "\n" for i in range(6)))
    proc = cli("data", "prepare", f"work_dir={work_dir}", f"data.source={tmp_path / 'JGLUE'}", "data.n_valid=5", "--json")
    assert proc.returncode == 0, proc.stderr
    files = {f["split"]: f for f in json.loads(proc.stdout)["files"]}
    assert {k: f["rows"] for k, f in files.items()} == {"train": 15, "valid": 5, "test": 6}
    first = json.loads(open(files["test"]["path"], encoding="utf-8").readline())
    assert first["output"] == "選択0-0" and first["input"].endswith("### 応答:")


def test_already_prepared_files_are_listed_when_no_source_is_set(cli, work_dir):
    assert cli("data", "prepare", f"work_dir={work_dir}", "data.synthetic.n_train=10", "data.synthetic.n_valid=2",
               "data.synthetic.n_test=2").returncode == 0
    proc = cli("data", "prepare", f"work_dir={work_dir}", "data.source=null")
    assert proc.returncode == 0, proc.stderr
    assert "already prepared (data.source is unset)" in proc.stdout
    assert {k: v[1] for k, v in _listing(proc.stdout).items()} == {"train": 10, "valid": 2, "test": 2}


def test_a_missing_source_is_a_user_error(cli, work_dir, tmp_path):
    proc = cli("data", "prepare", f"work_dir={work_dir}", f"data.source={tmp_path / 'nope'}")
    assert proc.returncode == 2 and proc.stderr.startswith("hpc-ft: error: data.source=")
    proc = cli("data", "prepare", f"work_dir={work_dir}", "data.source=null")
    assert proc.returncode == 2 and "data.source is not set" in proc.stderr


def test_a_data_file_key_pointing_elsewhere_is_warned_about(cli, work_dir, tmp_path):
    proc = cli("data", "prepare", f"work_dir={work_dir}", f"data.validation_file={tmp_path / 'other.jsonl'}",
               "data.synthetic.n_train=10", "data.synthetic.n_valid=2", "data.synthetic.n_test=2")
    assert proc.returncode == 0, proc.stderr
    assert f"the job reads data.validation_file={tmp_path / 'other.jsonl'}, not the files written above" in proc.stderr
    assert "train_file" not in proc.stderr
