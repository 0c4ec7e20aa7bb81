"""Rendering and running image builds: argv, dry-run text, Slurm script; secrets stay out of everything rendered."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hpc_ft.containers.build import plan_build, render_commands, render_job_script, run_build
from hpc_ft.containers.lock import ImageEntry, ImageLock, load_lock
from hpc_ft.errors import UserError

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "containers" / "images.lock"
SECRET = "secret-value"


@pytest.fixture
def ngc_key(monkeypatch):
    monkeypatch.setenv("NGC_API_KEY", SECRET)


def _all_renderings(images_dir):
    out = []
    for name in load_lock(LOCK).images:
        for method in ("build", "pull"):
            for runtime in ("singularity", "apptainer"):
                plan = plan_build(name, LOCK, images_dir, method=method, runtime=runtime, tmpdir=images_dir / "tmp")
                out.append(render_commands(plan))
                out.append(render_job_script(plan, partition="gpu"))
                out.append(repr(plan))
    return out


def test_no_rendering_contains_the_token_value(ngc_key, tmp_path):
    texts = _all_renderings(tmp_path)
    assert texts
    for text in texts:
        assert SECRET not in text


def test_ngc_credentials_are_referenced_by_name(ngc_key, tmp_path):
    plan = plan_build("nemo-24.03", LOCK, tmp_path, method="pull")
    text = render_commands(plan)
    assert "export SINGULARITY_DOCKER_USERNAME='$oauthtoken'" in text
    assert 'export SINGULARITY_DOCKER_PASSWORD="${NGC_API_KEY}"' in text
    assert plan.steps == [["singularity", "pull", str(tmp_path.resolve() / "nemo_24.03.sif"), "docker://nvcr.io/nvidia/nemo:24.03"]]


def test_apptainer_uses_its_own_variable_prefix(ngc_key, tmp_path):
    text = render_commands(plan_build("nemo-24.03", LOCK, tmp_path, runtime="apptainer", method="pull", tmpdir=tmp_path / "t"))
    assert "APPTAINER_DOCKER_PASSWORD" in text and "APPTAINER_TMPDIR" in text
    assert "SINGULARITY_" not in text


def test_prompt_login_is_the_tutorials_docker_login_and_has_no_env_lines(tmp_path):
    plan = plan_build("nemo-24.03", LOCK, tmp_path, method="pull", login="prompt")
    assert plan.steps[0][:3] == ["singularity", "pull", "--docker-login"]
    assert plan.steps[0][-1] == "docker://nvcr.io/nvidia/nemo:24.03"
    assert plan.env_lines == []
    with pytest.raises(UserError, match="cannot answer --docker-login"):
        render_job_script(plan)


def test_docker_hub_base_needs_no_ngc_credentials(tmp_path):
    plan = plan_build("hf", LOCK, tmp_path)
    assert not any("NGC_API_KEY" in line for line in plan.env_lines)


def test_hf_build_makes_the_wheel_first_and_runs_from_the_repository_root(tmp_path):
    plan = plan_build("hf", LOCK, tmp_path, python="python3")
    assert plan.method == "build" and plan.needs_wheel
    assert plan.workdir == REPO
    assert plan.steps[0] == ["python3", "-m", "pip", "wheel", "--no-deps", "--wheel-dir", "dist", "."]
    assert plan.steps[1] == ["singularity", "build", "--fakeroot", str(tmp_path.resolve() / "hpc-ft-hf_0.1.0.sif"), "containers/hf.def"]


def test_nemo_build_uses_the_definition_file(ngc_key, tmp_path):
    plan = plan_build("nemo-24.03", LOCK, tmp_path, force=True)
    assert plan.steps == [["singularity", "build", "--fakeroot", "--force", str(tmp_path.resolve() / "nemo_24.03.sif"), "nemo-24.03.def"]]
    assert plan.workdir == REPO / "containers"


def test_job_script_is_valid_bash_and_holds_the_sbatch_header(ngc_key, tmp_path):
    plan = plan_build("nemo-24.03", LOCK, tmp_path, method="pull")
    script = render_job_script(plan, partition="gpu", account="proj1", time="02:00:00", mem="32G", cpus=4)
    assert script.startswith("#!/bin/bash\n#SBATCH --job-name=hpc-ft-build-nemo-24.03\n")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=proj1", "#SBATCH --time=02:00:00", "#SBATCH --mem=32G"):
        assert line in script
    assert "set -x" not in script
    path = tmp_path / "job.sh"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_job_script_refuses_shell_characters_in_sbatch_values(tmp_path):
    plan = plan_build("hf", LOCK, tmp_path)
    with pytest.raises(UserError, match="partition"):
        render_job_script(plan, partition="gpu; rm -rf /")


def test_site_template_directory_wins(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "container_build.sbatch.j2").write_text("#!/bin/bash\n# site template for {{ plan.name }}\n")
    plan = plan_build("hf", LOCK, tmp_path)
    assert render_job_script(plan, template_dirs=[site]) == "#!/bin/bash\n# site template for hf\n"


def test_build_template_lives_with_the_job_templates_and_the_site_directory_overrides_it(tmp_path, monkeypatch):
    from hpc_ft.render.render import template_dirs

    shipped = [d for d in template_dirs() if (d / "container_build.sbatch.j2").is_file()]
    assert shipped and shipped[0] == REPO / "templates"
    assert not (REPO / "hpc_ft" / "containers" / "build_image.sbatch.j2").exists()
    site = tmp_path / "site"
    site.mkdir()
    (site / "container_build.sbatch.j2").write_text("#!/bin/bash\n# site build job for {{ plan.name }} ({{ time }})\n")
    monkeypatch.setenv("HPC_FT_TEMPLATE_DIR", str(site))
    plan = plan_build("hf", LOCK, tmp_path)
    assert render_job_script(plan, time="01:00:00") == "#!/bin/bash\n# site build job for hf (01:00:00)\n"
    monkeypatch.delenv("HPC_FT_TEMPLATE_DIR")
    assert render_job_script(plan).startswith("#!/bin/bash\n#SBATCH --job-name=hpc-ft-build-hf\n")


def test_job_script_loads_the_site_modules_before_building(tmp_path):
    plan = plan_build("hf", LOCK, tmp_path)
    script = render_job_script(plan, modules=["singularity/3.11"], setup=["export SINGULARITY_CACHEDIR=/scratch/c"])
    body = script.split("set -euo pipefail\n", 1)[1]
    assert body.startswith("module load singularity/3.11\nexport SINGULARITY_CACHEDIR=/scratch/c\n")
    assert body.index("module load") < body.index("singularity build")


def test_lock_source_must_agree_with_the_recipe(tmp_path):
    lock = load_lock(LOCK)
    entry = lock.images["nemo-24.03"]
    lock.images["nemo-24.03"] = ImageEntry(**{**entry.__dict__, "source": "docker://nvcr.io/nvidia/nemo:24.05"})
    with pytest.raises(UserError, match="make them agree"):
        plan_build("nemo-24.03", lock, tmp_path)


def test_unknown_image_name_suggests_the_close_one(tmp_path):
    with pytest.raises(UserError, match="Did you mean 'nemo-24.03'"):
        plan_build("nemo-24.3", LOCK, tmp_path)


# ------------------------------------------------------------------ running


def _fake_runtime(bindir: Path, name: str = "singularity", exit_code: int = 0) -> Path:
    """A stand-in runtime that records argv and the registry variables, then creates the image file."""
    record = bindir / f"{name}.json"
    script = bindir / name
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"rec = {{'argv': sys.argv[1:], 'user': os.environ.get('SINGULARITY_DOCKER_USERNAME'),"
        f" 'password': os.environ.get('SINGULARITY_DOCKER_PASSWORD')}}\n"
        f"open({str(record)!r}, 'w').write(json.dumps(rec))\n"
        "sif = [a for a in sys.argv if a.endswith('.sif')][0]\n"
        "open(sif, 'wb').write(b'SIF')\n"
        f"sys.exit({exit_code})\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return record


@pytest.fixture
def empty_path(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", str(bindir))
    return bindir


def test_run_build_refuses_when_the_runtime_is_missing(empty_path, ngc_key, tmp_path):
    plan = plan_build("nemo-24.03", LOCK, tmp_path / "images", method="pull")
    with pytest.raises(UserError, match="'singularity' is not installed"):
        run_build(plan)


def test_run_build_passes_the_key_through_the_environment_only(empty_path, ngc_key, tmp_path):
    record = _fake_runtime(empty_path)
    plan = plan_build("nemo-24.03", LOCK, tmp_path / "images", method="pull")
    assert run_build(plan) == 0
    seen = json.loads(record.read_text())
    assert seen["user"] == "$oauthtoken"
    assert seen["password"] == SECRET
    assert SECRET not in " ".join(seen["argv"])
    assert (tmp_path / "images" / "nemo_24.03.sif").read_bytes() == b"SIF"


def test_run_build_needs_the_ngc_key(empty_path, monkeypatch, tmp_path):
    _fake_runtime(empty_path)
    monkeypatch.delenv("NGC_API_KEY", raising=False)
    plan = plan_build("nemo-24.03", LOCK, tmp_path / "images", method="pull")
    with pytest.raises(UserError, match="NGC_API_KEY is not set"):
        run_build(plan)


def test_run_build_refuses_to_overwrite_and_reports_failures(empty_path, ngc_key, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "nemo_24.03.sif").write_bytes(b"old")
    _fake_runtime(empty_path, exit_code=3)
    with pytest.raises(UserError, match="already exists"):
        run_build(plan_build("nemo-24.03", LOCK, images, method="pull"))
    assert run_build(plan_build("nemo-24.03", LOCK, images, method="pull", force=True)) == 3


def test_rendered_pull_script_runs_with_the_fake_runtime(empty_path, ngc_key, tmp_path):
    record = _fake_runtime(empty_path)
    plan = plan_build("nemo-24.03", LOCK, tmp_path / "images", method="pull")
    (tmp_path / "images").mkdir()
    script = tmp_path / "pull.sh"
    script.write_text(render_job_script(plan))
    env = {"PATH": f"{empty_path}:/usr/bin:/bin", "NGC_API_KEY": SECRET}
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(record.read_text())["password"] == SECRET
    assert "sha256: " in proc.stdout
    # without the key the script stops before calling the runtime, naming the variable
    (tmp_path / "images" / "nemo_24.03.sif").unlink()
    record.unlink()
    proc = subprocess.run(["bash", str(script)], env={"PATH": env["PATH"]}, capture_output=True, text=True)
    assert proc.returncode != 0 and "NGC_API_KEY is not set" in proc.stderr
    assert not record.exists()


def test_a_pull_only_image_has_no_build_method(tmp_path):
    lock = ImageLock(path=tmp_path / "images.lock", images={"base": ImageEntry("base", "docker://nvcr.io/nvidia/nemo:24.03", "base.sif")})
    assert plan_build("base", lock, tmp_path).method == "pull"
    with pytest.raises(UserError, match="has no recipe"):
        plan_build("base", lock, tmp_path, method="build")
