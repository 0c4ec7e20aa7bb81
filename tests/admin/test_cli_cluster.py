"""`hpc-ft cluster check|list` through the real CLI; the Slurm checks run against the local Slurm."""

from __future__ import annotations

import json

import pytest

from hpc_ft.commands.cluster import gpu_count, parse_partitions, parse_scontrol


def _checks(proc) -> dict:
    data = json.loads(proc.stdout)
    return {c["name"]: c for c in data["checks"]}


# ----------------------------------------------------------------------------- parsing Slurm's answers


def test_sinfo_and_scontrol_answers_are_parsed():
    assert parse_partitions("debug*\ngpu\n") == (["debug", "gpu"], "debug")
    assert parse_partitions("a\nb\n") == (["a", "b"], None)
    info = parse_scontrol("PartitionName=gpu AllowGroups=ALL MaxTime=2-00:00:00 State=UP Nodes=gn[01-04]")
    assert info["MaxTime"] == "2-00:00:00" and info["State"] == "UP" and info["Nodes"] == "gn[01-04]"
    assert gpu_count("gpu:4") == 4
    assert gpu_count("gpu:v100:4(S:0-1)") == 4
    assert gpu_count("gpu:a100:2,gpu:v100:2") == 4
    assert gpu_count("(null)") == 0 and gpu_count("mps:100") == 0


# ----------------------------------------------------------------------------- against the local Slurm


@pytest.mark.slurm
def test_the_local_profile_passes_every_check(cli, local_slurm):
    proc = cli("cluster", "check", "cluster=slurm_local")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for line in ("[ok  ] partition  cluster.partition=debug (State=UP", "[ok  ] gpus       --gres=gpu:4: node",
                 "[ok  ] test-only  sbatch --test-only accepted", "[ok  ] node-python", "[ok  ] node-torch",
                 "[skip] container", "all checks passed"):
        assert line in proc.stdout
    checks = _checks(cli("cluster", "check", "cluster=slurm_local", "--no-probe", "--json"))
    assert {name: c["status"] for name, c in checks.items()} == {
        "commands": "ok", "reachable": "ok", "partition": "ok", "time": "ok", "gpus": "ok", "test-only": "ok",
        "node-env": "skip", "container": "skip", "modules": "skip"}


@pytest.mark.slurm
def test_a_partition_that_does_not_exist_fails_the_check(cli, local_slurm):
    proc = cli("cluster", "check", "cluster=slurm_local", "cluster.partition=gpux")
    assert proc.returncode == 1
    assert "[FAIL] partition  cluster.partition=gpux: no partition 'gpux' on this cluster. Did you mean 'gpu'?" in proc.stdout
    assert "[FAIL] test-only" in proc.stdout and "invalid partition" in proc.stdout


@pytest.mark.slurm
def test_time_over_the_partition_limit_and_too_many_gpus_fail(cli, local_slurm):
    proc = cli("cluster", "check", "cluster=slurm_local", "cluster.partition=gpu", "cluster.time=3-00:00:00",
               "cluster.gpu.per_node=8", "--json")
    assert proc.returncode == 1
    checks = _checks(proc)
    assert checks["time"]["status"] == "fail" and "MaxTime=2-00:00:00" in checks["time"]["detail"]
    assert "cluster.time=2-00:00:00 or less" in checks["time"]["detail"]
    assert checks["gpus"]["status"] == "fail" and "has 4 GPUs" in checks["gpus"]["detail"]
    assert checks["test-only"]["status"] == "fail"


@pytest.mark.slurm
def test_the_default_partition_is_checked_when_none_is_set_and_gpus_per_node_syntax(cli, local_slurm):
    proc = cli("cluster", "check", "cluster=slurm_local", "cluster.partition=null", "cluster.gpu.request=gpus-per-node",
               "cluster.gpu.per_node=2", "--json")
    assert proc.returncode == 0, proc.stdout
    checks = _checks(proc)
    assert "the default partition 'debug'" in checks["partition"]["detail"]
    assert checks["gpus"]["detail"].startswith("--gpus-per-node=2")


# ----------------------------------------------------------------------------- without Slurm


def test_slurm_missing_from_path_fails_the_slurm_checks(cli, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = cli("cluster", "check", "cluster=slurm_local", "--json", env={"PATH": empty})
    assert proc.returncode == 1
    checks = _checks(proc)
    assert checks["commands"]["status"] == "fail" and "sbatch" in checks["commands"]["detail"]
    assert "test-only" not in checks


def test_container_image_is_checked_when_a_runtime_is_used(cli, tmp_path):
    missing = cli("cluster", "check", "cluster=local", "cluster.container_runtime=singularity",
                  f"container.image={tmp_path / 'nemo.sif'}", "--json")
    assert missing.returncode == 1
    checks = _checks(missing)
    assert checks["slurm"]["status"] == "skip"
    assert checks["image"]["status"] == "fail" and "does not exist" in checks["image"]["detail"]
    (tmp_path / "nemo.sif").write_bytes(b"SIF")
    present = cli("cluster", "check", "cluster=local", "cluster.container_runtime=singularity",
                  f"container.image={tmp_path / 'nemo.sif'}", "--json")
    assert present.returncode == 0, present.stdout
    assert _checks(present)["image"]["status"] == "ok"


def test_modules_are_checked_with_the_module_command(cli, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    # a login shell defines `module`; this one knows exactly one module
    (home / ".bash_profile").write_text(
        'module() { if [ "$1" = is-avail ] && [ "$2" = "cuda/12.1" ]; then return 0; fi; return 1; }\n')
    env = {"HOME": home}
    ok = cli("cluster", "check", "cluster=local", "cluster.modules=[cuda/12.1]", "--json", env=env)
    assert ok.returncode == 0, ok.stdout
    assert _checks(ok)["modules"]["status"] == "ok"
    bad = cli("cluster", "check", "cluster=local", "cluster.modules=[cuda/12.1,singularity/9]", "--json", env=env)
    assert bad.returncode == 1
    assert _checks(bad)["modules"]["detail"].startswith("not available to `module load`: singularity/9")
    (home / ".bash_profile").write_text("true\n")
    none = cli("cluster", "check", "cluster=local", "cluster.modules=[cuda/12.1]", "--json", env=env)
    assert none.returncode == 1 and "`module` command is not available" in _checks(none)["modules"]["detail"]


def test_bad_input_exits_2(cli):
    proc = cli("cluster", "check", "cluster=slurm_local", "cluster.time=soon")
    assert proc.returncode == 2 and "cluster.time=soon: not a Slurm time limit" in proc.stderr
    proc = cli("cluster", "check", "cluster=nigg")
    assert proc.returncode == 2 and "Did you mean 'nig'" in proc.stderr


# ----------------------------------------------------------------------------- profiles


def _user_conf(tmp_path):
    conf = tmp_path / "userconf"
    (conf / "cluster").mkdir(parents=True)
    (conf / "cluster" / "nig.yaml").write_text(
        "name: nig\nexecutor: slurm\npartition: mylab-v100\naccount: lab42\ntime: '2-00:00:00'\n"
        "gpu:\n  model: V100-16GB\n  per_node: 4\n  request: gres\ncontainer_runtime: singularity\n"
        "modules: [singularity]\n")
    (conf / "cluster" / "mysite.yaml").write_text(
        "name: mysite\nexecutor: slurm\npartition: a100\ngpu:\n  model: A100-80GB\n  per_node: 8\n  request: gpus-per-node\n")
    return conf


def test_list_shows_shipped_and_user_profiles_and_who_wins(cli, tmp_path):
    shipped = cli("cluster", "list", "--json")
    assert shipped.returncode == 0
    assert {r["name"]: r["source"] for r in json.loads(shipped.stdout)} == {
        "local": "shipped", "nig": "shipped", "slurm_local": "shipped", "slurm_local2": "shipped"}
    conf = _user_conf(tmp_path)
    proc = cli("cluster", "list", "--json", env={"HPC_FT_CONF_DIR": conf})
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == {"local", "nig", "slurm_local", "slurm_local2", "mysite"}
    assert rows["nig"]["source"] == "user" and rows["nig"]["overrides_shipped"] is True
    assert rows["nig"]["partition"] == "mylab-v100" and rows["nig"]["path"] == str(conf / "cluster" / "nig.yaml")
    assert rows["mysite"]["overrides_shipped"] is False and rows["mysite"]["gpu"] == "8x A100-80GB (gpus-per-node)"
    text = cli("cluster", "list", env={"HPC_FT_CONF_DIR": conf})
    assert "(replaces the shipped one)" in text.stdout


def test_a_user_profile_replaces_the_shipped_one_of_the_same_name(cli, tmp_path, monkeypatch, work_dir):
    from hpc_ft.compose import compose_job

    conf = _user_conf(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert compose_job(["cluster=nig"]).cluster.partition is None  # shipped
    monkeypatch.setenv("HPC_FT_CONF_DIR", str(conf))
    spec = compose_job(["cluster=nig"])
    assert (spec.cluster.partition, spec.cluster.account, list(spec.cluster.modules)) == ("mylab-v100", "lab42", ["singularity"])
    assert compose_job(["cluster=mysite"]).cluster.gpu.per_node == 8
    # and what a job is rendered with: the user's partition and account
    proc = cli("train", "cluster=nig", f"work_dir={work_dir}", "--dry-run", env={"HPC_FT_CONF_DIR": conf})
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --partition=mylab-v100" in proc.stdout and "#SBATCH --account=lab42" in proc.stdout


@pytest.mark.slurm
def test_check_reports_the_user_profile_against_slurm(cli, tmp_path, local_slurm):
    conf = _user_conf(tmp_path)
    proc = cli("cluster", "check", "cluster=nig", "--json", env={"HPC_FT_CONF_DIR": conf})
    assert proc.returncode == 1
    assert "no partition 'mylab-v100'" in _checks(proc)["partition"]["detail"]

