"""Exit codes scripts can use (`status`, `status --wait`, `watch`: 0 only for COMPLETED, one code per way a run
ends, the table in docs/user-guide.md), `watch` ending on a run whose state cannot be decided, dry runs that
leave nothing behind, and "the latest run" meaning the latest run of the current work_dir."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hpc_ft.track.outcome import EXIT_CODES, exit_code_for
from hpc_ft.track.registry import Registry
from tests.track_cli.helpers import REPO, env_with, fake_commands, hf_events, hpcft, make_run

SACCT = 'cat "$(dirname "$0")/sacct.out" 2>/dev/null'
SQUEUE = 'cat "$(dirname "$0")/squeue.out" 2>/dev/null'


def _row(job, state, exit_code="0:0"):
    return "|".join([job, state, exit_code, "00:01:00", "2026-01-01T00:00:00", "Unknown", "None", "hpcft.x", "n1"])


@pytest.fixture
def slurm_bin(tmp_path):
    return fake_commands(tmp_path / "bin", {"sacct": SACCT, "squeue": SQUEUE, "sinfo": "exit 0",
                                            "scontrol": "exit 1"})


ENDINGS = [("COMPLETED", "0:0", True), ("FAILED", "1:0", False), ("CANCELLED", "0:15", False),
           ("TIMEOUT", "0:0", False), ("NODE_FAIL", "0:0", False), ("OUT_OF_MEMORY", "0:125", False),
           ("RUNNING", "0:0", False)]


def test_status_exits_zero_only_for_a_completed_run_and_a_distinct_code_for_each_end(tmp_path, slurm_bin):
    reg_path = tmp_path / "registry.sqlite"
    reg = Registry(reg_path)
    runs = {}
    for i, (state, code, ended) in enumerate(ENDINGS):
        runs[state] = make_run(tmp_path / "exp", reg, jobs={"train": str(700 + i)}, events=hf_events(20 if ended else 7, 20, end=ended))
    (slurm_bin / "sacct.out").write_text("".join(_row(str(700 + i), s, c) + "\n" for i, (s, c, _) in enumerate(ENDINGS)))
    env = env_with(reg_path, slurm_bin)
    seen = {}
    for state, _code, _ended in ENDINGS:
        proc = hpcft("status", runs[state]["run_id"], "--json", env=env, check=False)
        assert json.loads(proc.stdout)["state"] == state, proc.stdout
        seen[state] = proc.returncode
    assert seen["COMPLETED"] == 0
    assert all(seen[s] != 0 and seen[s] != 2 for s in seen if s != "COMPLETED"), seen
    assert len(set(seen.values())) == len(seen), f"one code per way a run ends: {seen}"
    assert seen == {s: exit_code_for(s) for s in seen}
    # --wait returns at once for an ended run, with the same code
    assert hpcft("status", runs["FAILED"]["run_id"], "--wait", env=env, check=False).returncode == seen["FAILED"]
    assert hpcft("status", runs["COMPLETED"]["run_id"], "--wait", env=env, check=False).returncode == 0
    assert hpcft("watch", runs["TIMEOUT"]["run_id"], "--interval", "0.05", env=env, check=False).returncode \
        == seen["TIMEOUT"]


def test_early_stopped_counts_as_completed():
    assert exit_code_for("EARLY_STOPPED") == 0 == exit_code_for("COMPLETED")


def test_the_user_guide_documents_every_exit_code():
    text = (REPO / "docs" / "user-guide.md").read_text(encoding="utf-8")
    section = text[text.index("## Exit codes"):]
    documented = {int(m.group(1)) for m in re.finditer(r"^\|\s*(\d+)\s*\|", section, re.M)}
    assert documented == {code for code, _, _ in EXIT_CODES}
    for code, states, _ in EXIT_CODES:
        line = next(ln for ln in section.splitlines() if re.match(rf"^\|\s*{code}\s*\|", ln))
        assert all(s in line for s in states), (code, line)


def test_watch_ends_with_a_reason_when_no_one_can_say_how_the_run_ends(tmp_path, slurm_bin):
    reg_path = tmp_path / "registry.sqlite"
    run = make_run(tmp_path / "exp", Registry(reg_path), jobs={"train": "5551"}, events=hf_events(7, 20, end=False))
    env = env_with(reg_path, slurm_bin)  # neither sacct nor squeue knows job 5551
    proc = subprocess.run([sys.executable, "-m", "hpc_ft.cli", "watch", run["run_id"], "--interval", "0.05"],
                          capture_output=True, text=True, env=env, cwd=str(REPO), timeout=60)
    assert proc.returncode == 11, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(f"run {run['run_id']}: cannot tell how it ends: state UNKNOWN") and "5551" in last
    wait = subprocess.run([sys.executable, "-m", "hpc_ft.cli", "status", run["run_id"], "--wait"],
                          capture_output=True, text=True, env=env, cwd=str(REPO), timeout=60)
    assert wait.returncode == 11 and "cannot tell how it ends" in wait.stderr


def _train(args, cwd, env):
    return subprocess.run([sys.executable, "-m", "hpc_ft.cli", "train", *args], capture_output=True, text=True,
                          cwd=str(cwd), env=env, timeout=300)


def test_a_dry_run_leaves_no_run_folder_and_no_registry_row_unless_out_is_given(tmp_path):
    work = tmp_path / "work"
    reg_path = tmp_path / "registry.sqlite"
    env = env_with(reg_path)
    proc = _train([f"work_dir={work}", "--dry-run"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH" in proc.stdout and "nothing written" in proc.stderr
    assert not (work / "results").exists(), list(work.rglob("*"))
    sweep = _train(["-m", f"work_dir={work}", "model.micro_batch_size=1,2", "--dry-run"], tmp_path, env)
    assert sweep.returncode == 0, sweep.stderr
    assert not (work / "results").exists(), list(work.rglob("*"))

    out = tmp_path / "rendered"
    proc = _train([f"work_dir={work}", "--dry-run", "--out", str(out), "--json"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(json.loads(proc.stdout)["run_dir"])
    assert run_dir.parent.parent == out and (run_dir / "job.sbatch").is_file() and (run_dir / "run.json").is_file()
    assert not (work / "results").exists()
    assert Registry(reg_path).count() == 0


def test_status_without_a_run_picks_the_latest_run_of_the_current_work_dir(tmp_path, slurm_bin):
    reg_path = tmp_path / "registry.sqlite"
    reg = Registry(reg_path)
    mine = make_run(tmp_path / "a" / "results", reg, jobs={"train": "801"}, events=hf_events(20, 20))
    make_run(tmp_path / "b" / "results", reg, jobs={"train": "802"}, events=hf_events(7, 20, end=False))  # newer
    (slurm_bin / "sacct.out").write_text(_row("801", "COMPLETED") + "\n" + _row("802", "RUNNING") + "\n")
    env = env_with(reg_path, slurm_bin)
    proc = subprocess.run([sys.executable, "-m", "hpc_ft.cli", "status", "--json"], capture_output=True, text=True,
                          env=env, cwd=str(tmp_path / "a"), timeout=60)
    assert json.loads(proc.stdout)["run_id"] == mine["run_id"], proc.stderr
    (tmp_path / "c").mkdir()
    none = subprocess.run([sys.executable, "-m", "hpc_ft.cli", "status"], capture_output=True, text=True, env=env,
                          cwd=str(tmp_path / "c"), timeout=60)
    assert none.returncode == 2 and "no run of this work_dir" in none.stderr
