"""Reconcile: a run whose submitting shell died right after sbatch is found again from Slurm (job name
`hpcft.<name>.<kind>.<run_id>`, script path in `<run_dir>/logs/submitit/`), on Slurm stand-ins."""

from __future__ import annotations

import json

from hpc_ft.submit.rundir import new_run_id, read_run_json, write_run_json
from hpc_ft.submit.reconcile import reconcile
from hpc_ft.track.registry import Registry
from tests.track_cli.helpers import env_with, fake_commands, hpcft, make_run

SACCT = """
if [[ "$*" == *SubmitLine* ]]; then cat "$(dirname "$0")/reconcile.out" 2>/dev/null; exit 0; fi
cat "$(dirname "$0")/sacct.out" 2>/dev/null
"""
SQUEUE = """
if [[ "$*" == *%o* ]]; then cat "$(dirname "$0")/squeue_all.out" 2>/dev/null; exit 0; fi
exit 0
"""


def _slurm(tmp_path):
    return fake_commands(tmp_path / "bin", {"sacct": SACCT, "squeue": SQUEUE, "sinfo": "exit 0",
                                            "scontrol": "exit 1"})


def _script(run_dir):
    return f"sbatch {run_dir}/logs/submitit/.submission_file_0123abcd.sh"


def test_a_job_whose_submitter_died_is_registered_and_written_into_run_json(tmp_path):
    bin_dir = _slurm(tmp_path)
    reg_path = tmp_path / "registry.sqlite"
    orphan = make_run(tmp_path / "exp", None, name="tiny.v2", register=False)  # run.json written, then killed
    rid = orphan["run_id"]
    (bin_dir / "reconcile.out").write_text(
        f"611|hpcft.tiny.v2.train.{rid}|COMPLETED|{_script(orphan['run_dir'])}\n"
        f"612|hpcft.tiny.v2.eval.{rid}|PENDING|{_script(orphan['run_dir'])}\n"
        "613|some-other-job|COMPLETED|sbatch /tmp/x.sh\n")
    (bin_dir / "squeue_all.out").write_text(f"612|hpcft.tiny.v2.eval.{rid}|PENDING|{orphan['run_dir']}/logs/submitit/x.sh\n")
    (bin_dir / "sacct.out").write_text("611|COMPLETED|0:0|00:01:00|x|y|None|hpcft|n1\n"
                                       "612|PENDING|0:0|00:00:00|x|y|Dependency|hpcft|None assigned\n")
    env = env_with(reg_path, bin_dir)
    assert json.loads(hpcft("runs", "--json", env=env).stdout) == []

    proc = hpcft("runs", "--reconcile", "--json", env=env)
    runs = json.loads(proc.stdout)
    assert [r["run_id"] for r in runs] == [rid]
    assert f"registered: run {rid} (train job 611" in proc.stderr
    assert runs[0]["job_id"] == "611" and runs[0]["jobs"]["eval"]["job_id"] == "612"
    rec = read_run_json(orphan["run_dir"])
    assert rec["jobs"] == {"train": "611", "eval": "612"} and rec["job_ids"] == ["611", "612"]
    row = Registry(reg_path).get(rid)
    assert row["job_ids"] == ["611", "612"] and row["name"] == "tiny.v2" and row["config_hash"] == "0123456789abcdef"

    again = hpcft("runs", "--reconcile", env=env)
    assert "every hpc-ft job Slurm knows is registered" in again.stderr


def test_status_of_an_unregistered_run_id_finds_it_in_slurm(tmp_path):
    bin_dir = _slurm(tmp_path)
    orphan = make_run(tmp_path / "exp", None, register=False)
    rid = orphan["run_id"]
    (bin_dir / "reconcile.out").write_text(f"700|hpcft.exp.train.{rid}|RUNNING|{_script(orphan['run_dir'])}\n")
    (bin_dir / "sacct.out").write_text("700|RUNNING|0:0|00:01:00|x|y|None|hpcft|n1\n")
    env = env_with(tmp_path / "registry.sqlite", bin_dir)
    st = json.loads(hpcft("status", rid, "--json", env=env, check=False).stdout)
    assert st["run_id"] == rid and st["job_id"] == "700" and st["state"] == "RUNNING"
    missing = hpcft("status", new_run_id(), env=env, check=False)
    assert missing.returncode != 0 and "not found in the registry" in missing.stderr


def test_a_run_directory_that_cannot_be_found_is_reported_not_invented(tmp_path):
    bin_dir = _slurm(tmp_path)
    rid = new_run_id()
    (bin_dir / "reconcile.out").write_text(f"800|hpcft.exp.train.{rid}|FAILED|sbatch {tmp_path}/gone/logs/submitit/s.sh\n")
    env = env_with(tmp_path / "registry.sqlite", bin_dir)
    proc = hpcft("runs", "--reconcile", "--json", env=env)
    assert json.loads(proc.stdout) == []
    assert f"not found: run {rid} (train job 800, FAILED)" in proc.stderr


def test_a_sweep_whose_submitter_died_is_registered_with_its_points(tmp_path, monkeypatch):
    bin_dir = _slurm(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    sid = new_run_id()
    sweep_dir = tmp_path / "exp" / "tiny" / f"sweep-{sid}"
    for task in (0, 1):
        d = sweep_dir / str(task)
        (d / "logs").mkdir(parents=True)
        write_run_json(d, {"run_id": f"{sid}_{task}", "name": "tiny", "run_dir": str(d), "backend": "hf",
                           "cluster": "slurm_local", "executor": "slurm", "config_hash": "h", "jobs": {},
                           "job_ids": [], "sweep_id": sid, "point": task, "task": task})
    (sweep_dir / "sweep.json").write_text(json.dumps({"sweep_id": sid, "name": "tiny", "points": 3,
                                                      "array_job_id": None}))
    script = f"sbatch {sweep_dir}/logs/submitit/.submission_file_1.sh"
    (bin_dir / "reconcile.out").write_text(f"900_0|hpcft.tiny.sweep.{sid}|COMPLETED|{script}\n"
                                           f"900_1|hpcft.tiny.sweep.{sid}|RUNNING|{script}\n")
    reg = Registry(tmp_path / "registry.sqlite")
    found = reconcile(reg)
    assert sorted((r.run_id, r.job_id, r.action) for r in found) == [
        (f"{sid}_0", "900_0", "registered"), (f"{sid}_1", "900_1", "registered")]
    assert reg.get_sweep(sid)["job_id"] == "900"
    assert [r["point"] for r in reg.list(sweep_id=sid)] == [0, 1]
    assert json.loads((sweep_dir / "sweep.json").read_text())["array_job_id"] == "900"
    assert read_run_json(sweep_dir / "1")["jobs"] == {"train": "900_1"}
    assert reconcile(reg) == []


def test_runs_recorded_by_a_submitter_that_lived_are_left_to_their_own_registry(tmp_path):
    bin_dir = _slurm(tmp_path)
    # submitted with another $HPC_FT_REGISTRY: run.json has the job id, this registry has no row
    other = make_run(tmp_path / "exp", None, jobs={"train": "950"}, register=False)
    # run.json names the registry that owns it
    owned = make_run(tmp_path / "exp", None, register=False)
    rec = read_run_json(owned["run_dir"])
    rec["registry"] = str(tmp_path / "another.sqlite")
    write_run_json(owned["run_dir"], rec)
    (bin_dir / "reconcile.out").write_text(
        f"950|hpcft.exp.train.{other['run_id']}|COMPLETED|{_script(other['run_dir'])}\n"
        f"951|hpcft.exp.train.{owned['run_id']}|COMPLETED|{_script(owned['run_dir'])}\n")
    env = env_with(tmp_path / "registry.sqlite", bin_dir)
    proc = hpcft("runs", "--reconcile", "--json", env=env)
    assert json.loads(proc.stdout) == []
    assert read_run_json(owned["run_dir"])["jobs"] == {}, "run.json of a run owned elsewhere is not touched"
