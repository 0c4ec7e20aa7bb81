"""The container runtime seam: argv for singularity / apptainer / none, binds, --nv, environment by name, image checks."""

from __future__ import annotations

import os
import subprocess

import pytest

from hpc_ft.containers.runtime import (
    check_image,
    env_exports,
    env_prefix,
    exec_argv,
    exec_environ,
    format_binds,
    get_runtime,
)
from hpc_ft.errors import UserError

CMD = ["torchrun", "--nproc_per_node=4", "train.py"]


def test_singularity_argv_with_binds_and_nv():
    argv = exec_argv("singularity", "/img/nemo_24.03.sif", ["/data", "/scratch:/work:ro"], ["HF_TOKEN"], command=CMD)
    assert argv == ["singularity", "exec", "--nv", "--bind", "/data,/scratch:/work:ro", "/img/nemo_24.03.sif", *CMD]


def test_apptainer_argv_without_nv_and_with_cleanenv():
    argv = exec_argv("apptainer", "/img/x.sif", {"/data": "/data", "/home/u/ex01": "/ex01"}, nv=False, cleanenv=True, command=CMD)
    assert argv == ["apptainer", "exec", "--cleanenv", "--bind", "/data,/home/u/ex01:/ex01", "/img/x.sif", *CMD]


def test_bind_pairs_as_tuples():
    assert format_binds([("/scratch", "/work"), ("/ro", "/ro", "ro")]) == "/scratch:/work,/ro:/ro:ro"


def test_no_binds_means_no_bind_flag():
    assert exec_argv("singularity", "/img/x.sif", [], command=["true"]) == ["singularity", "exec", "--nv", "/img/x.sif", "true"]


def test_runtime_none_runs_the_command_as_is():
    assert exec_argv("none", None, ["/data"], ["HF_TOKEN"], command=CMD) == CMD
    assert env_exports("none", ["HF_TOKEN"]) == []


def test_container_runtime_needs_an_image():
    with pytest.raises(UserError, match="container.image"):
        exec_argv("singularity", None, command=CMD)


def test_env_prefixes():
    assert env_prefix("singularity") == "SINGULARITYENV_"
    assert env_prefix("apptainer") == "APPTAINERENV_"
    assert env_prefix("none") is None


def test_env_exports_name_the_variable_and_the_shell_fills_the_value():
    lines = env_exports("singularity", ["HF_TOKEN", "WANDB_API_KEY"])
    script = "\n".join(lines) + "\nenv\n"
    assert "abc123" not in script
    out = subprocess.run(["bash", "-c", script], env={"HF_TOKEN": "abc123", "PATH": os.environ["PATH"]},
                         capture_output=True, text=True, check=True).stdout
    assert "SINGULARITYENV_HF_TOKEN=abc123" in out.splitlines()
    assert not any(line.startswith("SINGULARITYENV_WANDB_API_KEY=") for line in out.splitlines())  # unset stays unset


def test_exec_environ_adds_the_prefixed_copies():
    env = exec_environ("apptainer", ["HF_TOKEN", "MISSING"], {"HF_TOKEN": "t", "PATH": "/bin"})
    assert env == {"HF_TOKEN": "t", "PATH": "/bin", "APPTAINERENV_HF_TOKEN": "t"}


@pytest.mark.parametrize("names", [["HF_TOKEN=abc"], ["1BAD"], ["A B"]])
def test_env_names_must_be_names(names):
    with pytest.raises(UserError, match="not valid shell names"):
        exec_argv("singularity", "/img/x.sif", env_names=names)


@pytest.mark.parametrize(
    "bind,match",
    [("/data,/other", "comma"), ("data", "must be"), ("/a:b", "must be"), ("/a:/b:rx", "ro or rw"), ("/a:/b:ro:x", "must be")],
)
def test_bad_binds_name_the_key(bind, match):
    with pytest.raises(UserError, match=match) as info:
        format_binds([bind])
    assert "cluster.binds" in str(info.value)


def test_unknown_runtime_suggests():
    with pytest.raises(UserError, match="Did you mean 'singularity'"):
        get_runtime("singularty")


def test_check_image(tmp_path):
    img = tmp_path / "x.sif"
    img.write_bytes(b"sif")
    assert check_image(img) == img
    assert check_image(tmp_path) == tmp_path  # a sandbox folder is an image too
    with pytest.raises(UserError, match=r"container.image='.*missing.sif' does not exist.*hpc-ft container build"):
        check_image(tmp_path / "missing.sif")
    with pytest.raises(UserError, match="container.image is not set"):
        check_image("")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file, so an unreadable image cannot be made")
def test_check_image_unreadable(tmp_path):
    img = tmp_path / "x.sif"
    img.write_bytes(b"sif")
    img.chmod(0)
    with pytest.raises(UserError, match="not readable"):
        check_image(img)
