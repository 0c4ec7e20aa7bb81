"""Submit-time data: both backends read model.data.*_ds.file_names; nemo gets NeMo jsonl converted into the run folder; the per-split summary; bad keys refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.core.sbatch_parse import rendered_step

REPO = Path(__file__).resolve().parents[2]
ALPACA = [{"instruction": "次の説明に当てはまる言葉", "input": f"説明{i}", "output": f"答え{i}"} for i in range(6)]
TEMPLATE = ["template=alpaca-ja"]


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def hpcft(*args, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "hpc_ft.cli", *args], capture_output=True, text=True, cwd=cwd)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def dry_run(tmp_path: Path, *overrides: str) -> tuple[str, str, Path]:
    proc = hpcft("train", f"work_dir={tmp_path / 'work'}", *overrides, "--dry-run", "--out", str(tmp_path / "out"),
                 cwd=tmp_path)
    run_dir = Path(proc.stderr.rsplit("dry run: rendered ", 1)[1].split(" (nothing")[0])
    return proc.stdout, proc.stderr, run_dir


@pytest.fixture
def user_files(tmp_path):
    files = {split: jsonl(tmp_path / f"{split}.jsonl", ALPACA) for split in ("train", "valid", "test")}
    keys = [f"model.data.train_ds.file_names=[{files['train']}]",
            f"model.data.validation_ds.file_names=[{files['valid']}]",
            f"model.data.test_ds.file_names=[{files['test']}]"]
    return files, keys


def test_the_hf_job_reads_the_users_files_not_the_preset(tmp_path, user_files):
    files, keys = user_files
    out, err, _ = dry_run(tmp_path, *keys, *TEMPLATE)
    train = rendered_step(out, "train")
    assert train[train.index("--train-file") + 1] == str(files["train"])
    assert train[train.index("--valid-file") + 1] == str(files["valid"])
    options = json.loads(train[train.index("--data-options") + 1])
    assert options["prompt_template"].startswith("以下は、タスクを記述する命令")
    build = rendered_step(out, "build-model")
    assert build[build.index("--train-file") + 1] == str(files["train"])  # the tiny model's tokenizer learns these rows
    assert not (tmp_path / "work" / "data").exists()  # the synthetic preset was not prepared: the user named files


def test_a_dry_run_without_out_converts_nothing_on_disk(tmp_path, user_files):
    _, keys = user_files
    proc = hpcft("train", f"work_dir={tmp_path / 'work'}", "experiment=nig_elyza_ptuning", *keys, *TEMPLATE,
                 "--dry-run", cwd=tmp_path)
    assert "/data/train.jsonl]" in proc.stdout       # file_names name the files a real submit converts
    assert not list(tmp_path.rglob("data/train.jsonl"))


def test_the_nemo_job_reads_the_same_keys_converted_into_the_run_folder(tmp_path, user_files):
    files, keys = user_files
    out, err, run_dir = dry_run(tmp_path, "experiment=nig_elyza_ptuning", *keys, *TEMPLATE)
    train = rendered_step(out, "train")
    converted = run_dir / "data" / "train.jsonl"
    assert f"model.data.train_ds.file_names=[{converted}]" in train
    assert f"model.data.validation_ds.file_names=[{run_dir / 'data' / 'validation.jsonl'}]" in train
    assert "model.data.train_ds.prompt_template='{input}{output}'" in train
    rows = [json.loads(line) for line in converted.read_text(encoding="utf-8").splitlines()]
    assert rows[0] == {"input": "以下は、タスクを記述する命令と、さらなるコンテキストを提供する入力の組み合わせです。"
                                "依頼を適切に完了させる応答を書きなさい。\n\n### 指示:\n次の説明に当てはまる言葉\n\n"
                                "### 入力:\n説明0\n\n### 応答:\n", "output": "答え0"}
    record = json.loads((run_dir / "run.json").read_text())
    assert record["data"]["files"][str(files["train"])]
    assert record["data"]["converted"][str(converted)]["from"] == str(files["train"])


def test_nemo_rows_reach_nemo_unconverted_with_the_template_key(tmp_path):
    rows = [{"input": f"q{i}", "output": f"a{i}"} for i in range(3)]
    f = jsonl(tmp_path / "n.jsonl", rows)
    out, _, run_dir = dry_run(tmp_path, "experiment=nig_elyza_ptuning", f"model.data.train_ds.file_names=[{f}]",
                              f"model.data.validation_ds.file_names=[{f}]", "template=plain")
    train = rendered_step(out, "train")
    assert f"model.data.train_ds.file_names=[{f}]" in train
    assert "model.data.train_ds.prompt_template='{input}{output}'" in train
    assert not (run_dir / "data").exists()


def test_the_summary_shows_rows_the_marked_example_and_lengths(tmp_path, user_files):
    _, keys = user_files
    _, err, _ = dry_run(tmp_path, *keys, *TEMPLATE)
    assert "hpc-ft: data train: 6 rows in 1 file(s) (alpaca)" in err
    assert "[[LOSS>>答え0<<LOSS]]" in err
    assert "max_seq_length 256: 0 row(s) would be cut" in err


def test_several_train_files_need_one_probability_each(tmp_path, user_files):
    files, keys = user_files
    two = f"model.data.train_ds.file_names=[{files['train']},{files['test']}]"
    proc = hpcft("train", f"work_dir={tmp_path / 'work'}", two, *keys[1:], *TEMPLATE, "--dry-run", cwd=tmp_path, ok=False)
    assert proc.returncode == 2 and "concat_sampling_probabilities" in proc.stderr
    out, _, _ = dry_run(tmp_path, two, *keys[1:], *TEMPLATE,
                        "model.data.train_ds.concat_sampling_probabilities=[0.7,0.3]")
    train = rendered_step(out, "train")
    assert train[train.index("--train-weights") + 1: train.index("--train-weights") + 3] == ["0.7", "0.3"]


def test_template_chat_is_refused_for_nemo_naming_the_key_and_backend(tmp_path, user_files):
    _, keys = user_files
    proc = hpcft("train", f"work_dir={tmp_path / 'work'}", "experiment=nig_elyza_ptuning", *keys, "template=chat", "--dry-run",
                 cwd=tmp_path, ok=False)
    assert proc.returncode == 2
    assert "data.chat_template" in proc.stderr and "nemo backend" in proc.stderr
