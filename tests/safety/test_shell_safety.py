"""Shell safety: every config value reaches the job as the literal value (quotes, $(), backticks, ;,
newlines, non-ASCII), in the rendered script run by bash, by submitit's local executor and by Slurm;
and sbatch reads #SBATCH values (run directory, job name) with spaces, quotes, % and non-ASCII intact."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hpc_ft.backends import hf
from hpc_ft.compose import compose_job
from hpc_ft.render import ShellVar, Step, render_job_script, shell_join, shell_quote
from hpc_ft.render.render import sbatch_options
from tests.safety.helpers import (
    HOSTILE,
    hydra_list,
    hydra_quote,
    make_probes,
    probe_env,
    read_probe,
    registry_rows,
    run_cli,
    run_dirs,
    wait_for_exit_code,
    wait_slurm_jobs,
)


def _no_side_effects(*roots: Path) -> None:
    hits = [p for root in roots for p in root.rglob("PWNED*")]
    assert not hits, f"a value was executed as code: {hits}"


def test_shell_quote_round_trips_every_value_through_bash(tmp_path):
    script = "printf '%s\\0' " + shell_join(HOSTILE) + "\n"
    out = subprocess.run(["bash", "-c", script], capture_output=True, cwd=tmp_path, check=True).stdout
    assert out.split(b"\0")[:-1] == [v.encode() for v in HOSTILE]
    _no_side_effects(tmp_path)


def test_quoted_values_keep_each_statement_on_one_line():
    # sbatch refuses a script holding "\r\n" ("Batch script contains DOS line breaks"); a raw newline
    # inside quotes would also split an `export` line for anything that reads the script line by line.
    for value in HOSTILE:
        quoted = shell_quote(value)
        assert "\n" not in quoted and "\r" not in quoted, (value, quoted)


def test_rendered_script_delivers_argv_env_and_modules_literally(tmp_path):
    """render_job_script + bash: a probe step receives argv and env byte for byte; nothing is executed."""
    bin_dir = make_probes(tmp_path / "bin", ["module"])
    log = tmp_path / "probe.jsonl"
    probe = bin_dir / "probe.py"
    probe.write_text((bin_dir / "module").read_text(), encoding="utf-8")
    modules = ["cuda/12.1 $(touch PWNED_module)", "it's `touch PWNED_tick`; x", "日本 ü"]
    spec = compose_job([f"work_dir={hydra_quote(str(tmp_path / 'work'))}", f"cluster.modules={hydra_list(modules)}"])
    run_dir = tmp_path / "run dir ü 日本 $(touch PWNED_rd) `x` ; 'q' \"dq\" 100%j back\\slash\nnewline"
    (run_dir / "logs").mkdir(parents=True)
    existing = run_dir / "exists $(touch PWNED_skip) 'q'"
    existing.write_text("x")
    env = {f"HPCFT_V{i}": v for i, v in enumerate(HOSTILE)}
    env["HPCFT_DOLLAR_BRACE"] = "${HOME} ${PWNED:-x}"
    steps = [
        Step("argv one", [sys.executable, str(probe), *HOSTILE, ShellVar("HPC_FT_RUN_ID", prefix="--id=", suffix=" 'x'")]),
        Step("skipped", [sys.executable, str(probe), "must-not-run"], skip_if_exists=str(existing)),
        Step("not skipped", [sys.executable, str(probe), "ran"], skip_if_exists=str(run_dir / "absent 'q' $(x)")),
    ]
    script = render_job_script(spec, run_dir=str(run_dir), run_id="r1", steps=steps, sbatch=[], env=env,
                               description="safety\n touch PWNED_description")
    path = tmp_path / "job.sbatch"
    path.write_text(script.text, encoding="utf-8")

    penv = probe_env(bin_dir, log, env_names=sorted(env))
    proc = subprocess.run(["bash", str(path)], env=penv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, (proc.stdout, proc.stderr, (run_dir / "logs" / "job.out").read_text())

    recs = read_probe(log)
    assert [r["argv"] for r in recs if r["prog"] == "module"] == [["load", m] for m in modules]
    runs = [r for r in recs if r["prog"] == "probe.py"]
    assert [r["argv"] for r in runs] == [HOSTILE + ["--id=r1 'x'"], ["ran"]]
    assert runs[0]["env"] == env
    assert runs[0]["cwd"] == str(run_dir)
    assert (run_dir / "state" / "exit_code").read_text().strip() == "0"
    _no_side_effects(tmp_path)


def _hostile_job(tmp_path: Path, cluster: str) -> tuple[list, dict]:
    """Overrides that put hostile text into every key that reaches the shell, and the literal values."""
    base = tmp_path / "w ü 日本 $(touch PWNED_w) `touch PWNED_w2` ; 'q' \"dq\" 100%j%x back\\slash"
    values = {
        "work_dir": str(base),
        "exp_manager.name": "exp name; $(touch PWNED_n) 'q' ü %x",
        "model.hf_path": str(tmp_path / "model dir $(touch PWNED_m) 'q' ü"),
        "data.dir": str(tmp_path / "data dir `touch PWNED_d` ; 'q' 日本"),
        "container.image": str(tmp_path / "image 'q' $(x)" / "hpc-ft hf.sif"),
        "bind": f"{tmp_path}/bind src 'q' $(x):/bind dst ü:ro",
        "env": "line1\nline2\r\n$(touch PWNED_e) `x` 'q' \"d\" \\ 日本 $HOME ;",
        "modules": ["cuda/12.1 $(touch PWNED_mod)", "it's ü"],
    }
    Path(values["container.image"]).parent.mkdir(parents=True)
    Path(values["container.image"]).write_bytes(b"not really an image")
    overrides = [
        f"cluster={cluster}",
        f"work_dir={hydra_quote(values['work_dir'])}",
        f"exp_manager.name={hydra_quote(values['exp_manager.name'])}",
        f"model.hf_path={hydra_quote(values['model.hf_path'])}",
        "model.build=tiny",  # a tiny model is built at a path the user typed only when asked for
        f"data.dir={hydra_quote(values['data.dir'])}",
        "container=hf",
        f"container.image={hydra_quote(values['container.image'])}",
        "cluster.container_runtime=singularity",
        f"cluster.binds={hydra_list([values['bind']])}",
        f"+cluster.env.HPCFT_HOSTILE={hydra_quote(values['env'])}",
        f"cluster.modules={hydra_list(values['modules'])}",
        "data.synthetic.n_train=40", "data.synthetic.n_valid=8", "data.synthetic.n_test=8", "data.n_valid=8",
        "eval=true",
    ]
    return overrides, values


def _check_hostile_run(run_dir: Path, values: dict, recs: list, jobs: int = 1) -> None:
    """The probe `singularity` got exactly the argv the backend meant, and the literal paths typed."""
    assert run_dir.parent.name == values["exp_manager.name"]
    assert str(run_dir).startswith(values["work_dir"] + "/results/")
    spec = OmegaConf.load(run_dir / "config.yaml")
    assert spec.work_dir == values["work_dir"] and spec.cluster.env.HPCFT_HOSTILE == values["env"]
    expected = hf.train_steps(spec, str(run_dir)) + hf.eval_steps(spec, str(run_dir))
    assert [s.name for s in expected] == ["build-model", "train", "eval"]
    assert all(s.argv[0] == "singularity" for s in expected)
    modules = [r["argv"] for r in recs if r["prog"] == "module"]
    assert modules == [["load", m] for m in values["modules"]] * jobs
    calls = [r for r in recs if r["prog"] == "singularity"]
    assert [c["argv"] for c in calls] == [[str(t) for t in s.argv[1:]] for s in expected]
    train = calls[1]["argv"]
    assert train[:4] == ["exec", "--nv", "--bind", values["bind"]]
    assert train[4] == values["container.image"]
    assert train[train.index("--model-dir") + 1] == values["model.hf_path"]
    assert train[train.index("--train-file") + 1] == values["data.dir"] + "/train-v1.1.jsonl"
    assert train[train.index("--output-dir") + 1] == str(run_dir / "checkpoints")
    for c in calls:
        assert c["env"]["HPCFT_HOSTILE"] == values["env"]
        assert c["cwd"] == str(run_dir)
    # On Slurm nothing in the script redirects its output: slurmstepd wrote this file from #SBATCH --output.
    out = (run_dir / "logs" / "job.out").read_text(encoding="utf-8")
    assert "hpc-ft: step train:" in out and "hpc-ft: step eval:" in out


def test_dry_run_script_runs_with_literal_paths(tmp_path):
    """`hpc-ft train --dry-run` with hostile values, then the rendered job.sbatch run by bash (probe steps)."""
    overrides, values = _hostile_job(tmp_path, "local")
    proc = run_cli(["train", *overrides, "--dry-run", "--out", str(Path(values["work_dir"]) / "results")])
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = run_dirs(Path(values["work_dir"]))
    script = (run_dir / "job.sbatch").read_text(encoding="utf-8")
    assert script == proc.stdout
    bin_dir = make_probes(tmp_path / "bin", ["singularity", "module"])
    log = tmp_path / "probe.jsonl"
    env = probe_env(bin_dir, log, env_names=["HPCFT_HOSTILE"])
    job = subprocess.run(["bash", str(run_dir / "job.sbatch")], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert job.returncode == 0, (run_dir / "logs" / "job.out").read_text()
    _check_hostile_run(run_dir, values, read_probe(log))
    _no_side_effects(tmp_path)


def test_local_executor_runs_job_with_literal_values(tmp_path):
    """The same job submitted for real through submitit's local executor."""
    overrides, values = _hostile_job(tmp_path, "local")
    bin_dir = make_probes(tmp_path / "bin", ["singularity", "module"])
    log = tmp_path / "probe.jsonl"
    proc = run_cli(["train", *overrides], env=probe_env(bin_dir, log, env_names=["HPCFT_HOSTILE"]), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = run_dirs(Path(values["work_dir"]))
    assert wait_for_exit_code(run_dir) == "0"
    _check_hostile_run(run_dir, values, read_probe(log))
    assert registry_rows(Path(os.environ["HPC_FT_REGISTRY"])) == 1
    _no_side_effects(tmp_path)


@pytest.mark.slurm
def test_slurm_runs_job_with_literal_values_and_log_path(tmp_path):
    """The same job on the real local Slurm: sbatch --test-only and sbatch accept the #SBATCH lines, the
    job's stdout lands at <run dir>/logs/job.out (spaces, quotes, %, backslash, non-ASCII), the steps
    get the literal values."""
    overrides, values = _hostile_job(tmp_path, "slurm_local")
    bin_dir = make_probes(tmp_path / "bin", ["singularity", "module"])
    log = tmp_path / "probe.jsonl"
    proc = run_cli(["train", *overrides, "--json"], env=probe_env(bin_dir, log, env_names=["HPCFT_HOSTILE"]),
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    jobs = json.loads(proc.stdout)["jobs"]
    assert sorted(jobs) == ["eval", "train"]  # on Slurm, eval is its own job (afterok on train)
    assert wait_slurm_jobs(list(jobs.values())) == {jobs["train"]: "COMPLETED", jobs["eval"]: "COMPLETED"}
    (run_dir,) = run_dirs(Path(values["work_dir"]))
    assert (run_dir / "state" / "exit_code").read_text().strip() == "0"
    _check_hostile_run(run_dir, values, read_probe(log), jobs=2)
    for kind, job_id in jobs.items():
        # the controller's view (accounting fills in the name a little later)
        show = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
        name = re.search(r"JobName=(.*?) UserId=", show).group(1)
        assert name == f"hpcft.{values['exp_manager.name']}.{kind}.{run_dir.name}"
    _no_side_effects(tmp_path)


@pytest.mark.slurm
def test_sbatch_reads_output_path_with_spaces_percent_and_non_ascii(tmp_path):
    """The #SBATCH --output value as rendered: sbatch --test-only accepts it and a real tiny job writes there."""
    spec = compose_job([f"work_dir={hydra_quote(str(tmp_path))}", "cluster=slurm_local"])
    for i, name in enumerate(["sp ace ü 日本", "pct %j %x %%", "q'uote \"dq\" #hash", "back\\slash %j", "semi;$(x)`y`"]):
        out = tmp_path / f"{i} {name}" / "job.out"
        out.parent.mkdir()
        opts = sbatch_options(spec, job_name=f"hpcft safety {name}", output=str(out), nodes=1, gpus_per_node=0)
        script = tmp_path / f"job{i}.sbatch"
        script.write_text("#!/bin/bash\n" + "".join(f"#SBATCH {o}\n" for o in opts) + "echo hello from $SLURM_JOB_ID\n",
                          encoding="utf-8")
        test = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True)
        assert test.returncode == 0, test.stderr
        sub = subprocess.run(["sbatch", "--parsable", "--wait", str(script)], capture_output=True, text=True,
                             timeout=120)
        assert sub.returncode == 0, sub.stderr
        job_id = sub.stdout.strip().split(";")[0]
        assert out.read_text() == f"hello from {job_id}\n", list(tmp_path.rglob("*.out"))


def test_line_break_in_run_directory_is_refused_cleanly(tmp_path):
    """A newline cannot be written on an #SBATCH line: a clear error naming the key, not a traceback."""
    proc = run_cli(["train", f"work_dir={hydra_quote(str(tmp_path / 'a') + chr(10) + 'touch PWNED')}", "--dry-run"])
    assert proc.returncode == 2
    assert proc.stderr.startswith("hpc-ft: error: work_dir=") and "Traceback" not in proc.stderr
    _no_side_effects(tmp_path)


def test_newline_in_header_comment_cannot_start_a_command(tmp_path):
    """Text in the script's comments (run directory, description) is escaped, never a new line of code."""
    spec = compose_job([f"work_dir={hydra_quote(str(tmp_path))}"])
    run_dir = tmp_path / "rd\ntouch PWNED_header\n"
    (run_dir / "logs").mkdir(parents=True)
    script = render_job_script(spec, run_dir=str(run_dir), run_id="r\ntouch PWNED_id", steps=[], sbatch=[], env={},
                               description="d\ntouch PWNED_desc")
    header = [ln for ln in script.text.splitlines() if "touch PWNED" in ln]
    assert header and all(ln.startswith("#") or ln.startswith("export ") for ln in header), header
    path = tmp_path / "job.sbatch"
    path.write_text(script.text, encoding="utf-8")
    subprocess.run(["bash", str(path)], cwd=tmp_path, capture_output=True, timeout=60)
    _no_side_effects(tmp_path)
