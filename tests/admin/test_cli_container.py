"""`hpc-ft container convert|build|verify|list|lint` through the real CLI."""

from __future__ import annotations

import hashlib
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "containers" / "images.lock"
SECRET = "ngc-secret-value-1234"
PAYLOAD = b"a fake SIF: bytes are bytes\n" * 500


def _empty_path(tmp_path) -> Path:
    """A PATH holding nothing: no singularity, no apptainer (the CLI itself runs by absolute interpreter path)."""
    d = tmp_path / "emptybin"
    d.mkdir(exist_ok=True)
    return d


def _tiny_lock(tmp_path, size=None, sha=None, produced_by=None) -> Path:
    folder = tmp_path / "recipes"
    folder.mkdir(exist_ok=True)
    lock = folder / "images.lock"
    lock.write_text(yaml.safe_dump({"version": 1, "images": {"tiny": {
        "recipe": "tiny.def", "source": "docker://docker.io/library/ubuntu:22.04", "sif": "tiny.sif",
        "size_bytes": size, "sha256": sha, "produced_by": produced_by}}}))
    return lock


def _tiny_image(tmp_path, data=PAYLOAD) -> Path:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    (images / "tiny.sif").write_bytes(data)
    return images


def _fake_runtime(bindir: Path, test_exit: int = 0) -> None:
    """A stand-in `singularity`: `test IMAGE` exits test_exit; `pull|build ... X.sif ...` writes X.sif."""
    script = bindir / "singularity"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "if sys.argv[1] == 'test':\n"
        f"    print('fake %test ran on', sys.argv[-1]); sys.exit({test_exit})\n"
        "sif = [a for a in sys.argv if a.endswith('.sif')][0]\n"
        "open(sif, 'wb').write(b'SIF from ' + sys.argv[1].encode())\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


# ----------------------------------------------------------------------------- convert


def test_convert_prints_a_definition_and_writes_one_only_once_without_force(cli, tmp_path):
    proc = cli("container", "convert", REPO / "containers" / "Dockerfile.hf")
    assert proc.returncode == 0, proc.stderr
    assert "Bootstrap: docker" in proc.stdout and "From: pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime" in proc.stdout

    out = tmp_path / "hf-converted.def"
    proc = cli("container", "convert", REPO / "containers" / "Dockerfile.hf", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().startswith("# Converted from Dockerfile.hf")
    again = cli("container", "convert", REPO / "containers" / "Dockerfile.hf", "-o", out)
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr
    assert cli("container", "convert", REPO / "containers" / "Dockerfile.hf", "-o", out, "--force").returncode == 0


def test_convert_of_a_missing_file_is_a_user_error(cli, tmp_path):
    proc = cli("container", "convert", tmp_path / "Dockerfile.nope")
    assert proc.returncode == 2 and proc.stderr.startswith("hpc-ft: error:") and "does not exist" in proc.stderr


# ----------------------------------------------------------------------------- build


def test_build_dry_run_names_the_ngc_key_and_never_prints_it(cli, tmp_path):
    env = {"NGC_API_KEY": SECRET}
    for extra in ([], ["--method", "pull"], ["--runtime", "apptainer"]):
        proc = cli("container", "build", "nemo-24.03", "--dry-run", "--images-dir", tmp_path / "img", *extra, env=env)
        assert proc.returncode == 0, proc.stderr
        assert SECRET not in proc.stdout + proc.stderr
        prefix = "APPTAINER" if "apptainer" in extra else "SINGULARITY"
        assert f'export {prefix}_DOCKER_PASSWORD="${{NGC_API_KEY}}"' in proc.stdout
    pull = cli("container", "build", "nemo-24.03", "--dry-run", "--method", "pull", "--runtime", "singularity",
               "--images-dir", tmp_path / "img", env=env)
    assert f"singularity pull {tmp_path.resolve() / 'img' / 'nemo_24.03.sif'} docker://nvcr.io/nvidia/nemo:24.03" in pull.stdout
    assert not (tmp_path / "img").exists()  # a dry run creates nothing


def test_build_dry_run_as_a_slurm_job_uses_the_cluster_profile(cli, tmp_path):
    proc = cli("container", "build", "nemo-24.03", "--dry-run", "--runtime", "singularity", "--images-dir", tmp_path,
               "--slurm", "cluster=slurm_local", "cluster.account=proj1", "cluster.modules=[singularity/3.11]",
               env={"NGC_API_KEY": SECRET})
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    assert SECRET not in script + proc.stderr
    for line in ("#SBATCH --partition=debug", "#SBATCH --account=proj1", "module load singularity/3.11",
                 'export SINGULARITY_DOCKER_PASSWORD="${NGC_API_KEY}"', "hpc-ft container verify nemo-24.03"):
        assert line in script
    path = tmp_path / "job.sh"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_build_for_slurm_needs_a_slurm_profile(cli, tmp_path):
    proc = cli("container", "build", "hf", "--dry-run", "--images-dir", tmp_path, "--slurm", "cluster=local")
    assert proc.returncode == 2 and "needs a Slurm profile" in proc.stderr


def test_real_build_without_the_runtime_is_a_clear_user_error(cli, tmp_path):
    proc = cli("container", "build", "nemo-24.03", "--method", "pull", "--images-dir", tmp_path / "img",
               env={"PATH": _empty_path(tmp_path), "NGC_API_KEY": SECRET})
    assert proc.returncode == 2
    assert "hpc-ft: error: 'singularity' is not installed on this machine" in proc.stderr
    assert "Traceback" not in proc.stderr and SECRET not in proc.stderr


def test_real_pull_with_a_stand_in_runtime_then_record(cli, tmp_path):
    bindir = _empty_path(tmp_path)
    _fake_runtime(bindir)
    lock = tmp_path / "images.lock"
    shutil.copy(LOCK, lock)
    images = tmp_path / "img"
    proc = cli("container", "build", "hf", "--method", "pull", "--lock", lock, "--images-dir", images,
               env={"PATH": bindir})
    assert proc.returncode == 0, proc.stderr
    assert (images / "hpc-ft-hf_0.1.0.sif").read_bytes() == b"SIF from pull"
    assert f"--record --lock {lock}" in proc.stdout
    rec = cli("container", "verify", "hf", "--lock", lock, "--images-dir", images, "--record", "--produced-by", "pull",
              env={"PATH": bindir})
    assert rec.returncode == 0, rec.stdout + rec.stderr
    entry = yaml.safe_load(lock.read_text())["images"]["hf"]
    assert entry["sha256"] == hashlib.sha256(b"SIF from pull").hexdigest() and entry["produced_by"] == "pull"
    assert yaml.safe_load(LOCK.read_text())["images"]["hf"]["sha256"] is None  # the shipped lock is untouched


@pytest.mark.slurm
def test_build_job_submitted_to_local_slurm_makes_the_image(cli, tmp_path, local_slurm):
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    _fake_runtime(bindir)
    images = tmp_path / "img"
    path = f"{bindir}:/usr/local/bin:/usr/bin:/bin"
    proc = cli("container", "build", "hf", "--method", "pull", "--images-dir", images, "--time", "00:05:00",
               "--cpus", "1", "--mem", "500M", "--slurm", "cluster=slurm_local", env={"PATH": path})
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.split("build job ", 1)[1].split()[0]
    deadline = time.time() + 120
    state = ""
    while time.time() < deadline:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"], capture_output=True, text=True).stdout
        state = out.strip().splitlines()[0] if out.strip() else ""
        if state and state not in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING"):
            break
        time.sleep(1)
    log = images / f"build-hf-{job_id}.out"
    assert state == "COMPLETED", (state, log.read_text() if log.exists() else "no log")
    assert (images / "hpc-ft-hf_0.1.0.sif").read_bytes() == b"SIF from pull"
    text = log.read_text()
    assert f"sha256: {hashlib.sha256(b'SIF from pull').hexdigest()}" in text
    assert "hpc-ft container verify hf --images-dir" in text


# ----------------------------------------------------------------------------- verify


def test_verify_passes_on_a_matching_image_and_skips_test_honestly(cli, tmp_path):
    lock = _tiny_lock(tmp_path, len(PAYLOAD), hashlib.sha256(PAYLOAD).hexdigest(), "build")
    images = _tiny_image(tmp_path)
    proc = cli("container", "verify", "tiny", "--lock", lock, "--images-dir", images, env={"PATH": _empty_path(tmp_path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "[ok  ] exists" in out and "[ok  ] size" in out and "[ok  ] sha256" in out
    assert "[skip] test    skipped: singularity not installed" in out
    assert out.strip().endswith("tiny: OK")


def test_verify_fails_on_a_changed_image(cli, tmp_path):
    lock = _tiny_lock(tmp_path, len(PAYLOAD), hashlib.sha256(PAYLOAD).hexdigest(), "build")
    images = _tiny_image(tmp_path, PAYLOAD[:-1] + b"X")
    proc = cli("container", "verify", "tiny", "--lock", lock, "--images-dir", images, "--no-test")
    assert proc.returncode == 1
    assert "[FAIL] sha256" in proc.stdout and "[skip] test    not requested" in proc.stdout


def test_verify_of_a_missing_image_fails(cli, tmp_path):
    lock = _tiny_lock(tmp_path)
    proc = cli("container", "verify", "tiny", "--lock", lock, "--images-dir", tmp_path / "nowhere", "--no-test")
    assert proc.returncode == 1 and "[FAIL] exists" in proc.stdout and "hpc-ft container build tiny" in proc.stdout


def test_verify_record_fills_the_lock_then_verifies(cli, tmp_path):
    lock = _tiny_lock(tmp_path)
    images = _tiny_image(tmp_path)
    before = cli("container", "verify", "tiny", "--lock", lock, "--images-dir", images, "--no-test")
    assert before.returncode == 0 and "[skip] sha256  unset in the lock" in before.stdout
    rec = cli("container", "verify", "tiny", "--lock", lock, "--images-dir", images, "--no-test", "--record")
    assert rec.returncode == 0, rec.stdout + rec.stderr
    entry = yaml.safe_load(lock.read_text())["images"]["tiny"]
    assert entry == {"recipe": "tiny.def", "source": "docker://docker.io/library/ubuntu:22.04", "sif": "tiny.sif",
                     "size_bytes": len(PAYLOAD), "sha256": hashlib.sha256(PAYLOAD).hexdigest(), "produced_by": "build"}
    after = cli("container", "verify", "tiny", "--lock", lock, "--images-dir", images, "--no-test")
    assert after.returncode == 0 and "[ok  ] sha256" in after.stdout


def test_verify_runs_the_image_test_and_a_failing_test_blocks_recording(cli, tmp_path):
    lock = _tiny_lock(tmp_path)
    images = _tiny_image(tmp_path)
    bindir = _empty_path(tmp_path)
    _fake_runtime(bindir, test_exit=0)
    ok = cli("container", "verify", "tiny", "--lock", lock, "--images-dir", images, env={"PATH": bindir})
    assert ok.returncode == 0 and "[ok  ] test" in ok.stdout and "fake %test ran on" in ok.stdout
    _fake_runtime(bindir, test_exit=3)
    bad = cli("container", "verify", "tiny", "--lock", lock, "--images-dir", images, "--record", env={"PATH": bindir})
    assert bad.returncode == 1 and "[FAIL] test" in bad.stdout and "not recorded" in bad.stdout
    assert yaml.safe_load(lock.read_text())["images"]["tiny"]["sha256"] is None


def test_verify_record_into_an_unwritable_lock_says_to_pass_lock(tmp_path, monkeypatch, capsys):
    # in-process, so that the write can fail even for root (an installed lock in site-packages is read-only)
    from hpc_ft import cli as cli_mod
    from hpc_ft.containers import verify as verify_mod

    def read_only(lock, path=None):
        raise PermissionError(13, "Permission denied", str(lock.path))

    monkeypatch.setattr(verify_mod, "write_lock", read_only)
    lock = _tiny_lock(tmp_path)
    images = _tiny_image(tmp_path)
    rc = cli_mod.main(["container", "verify", "tiny", "--lock", str(lock), "--images-dir", str(images), "--no-test", "--record"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot write" in err and "pass --lock FILE" in err
    assert yaml.safe_load(lock.read_text())["images"]["tiny"]["sha256"] is None


# ----------------------------------------------------------------------------- list, lint


def test_list_shows_every_lock_entry_and_its_status(cli, tmp_path):
    proc = cli("container", "list", "--images-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("hf", "nemo-24.03", "nemo-25.09"):
        assert name in proc.stdout
    assert "unset (not built or recorded yet)" in proc.stdout and "Dockerfile.hf" in proc.stdout


def test_list_and_verify_honour_the_containers_dir_variable(cli, tmp_path):
    lock = _tiny_lock(tmp_path, len(PAYLOAD), hashlib.sha256(PAYLOAD).hexdigest(), "pull")
    images = _tiny_image(tmp_path)
    env = {"HPC_FT_CONTAINERS_DIR": lock.parent}
    proc = cli("container", "list", "--images-dir", images, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    import json

    data = json.loads(proc.stdout)
    assert data["lock"] == str(lock) and [r["name"] for r in data["images"]] == ["tiny"]
    assert data["images"][0]["present"] is True
    assert cli("container", "verify", "tiny", "--images-dir", images, "--no-test", env=env).returncode == 0


def test_lint_passes_on_the_shipped_recipes(cli):
    proc = cli("container", "lint")
    assert proc.returncode == 0, proc.stdout
    assert "nemo-24.03.def: ok" in proc.stdout and "all 4 recipes are clean" in proc.stdout


def test_lint_fails_on_a_bad_recipe(cli, tmp_path):
    folder = tmp_path / "recipes"
    folder.mkdir()
    shutil.copy(REPO / "containers" / "hf.def", folder / "hf.def")
    (folder / "bad.def").write_text("Bootstrap: docker\nFrom: ubuntu:latest\n\n%post\n    echo hi\n")
    proc = cli("container", "lint", "--dir", folder)
    assert proc.returncode == 1
    assert "hf.def: ok" in proc.stdout
    assert "[pinned-tag]" in proc.stdout and "[labels]" in proc.stdout and "[test]" in proc.stdout
    assert "1 of 2 recipes have problems" in proc.stdout
    via_env = cli("container", "lint", env={"HPC_FT_CONTAINERS_DIR": folder})
    assert via_env.returncode == 1 and "bad.def" in via_env.stdout
