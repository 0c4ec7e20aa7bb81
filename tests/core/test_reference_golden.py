"""Golden tests: the reference preset renders the tutorial's train and generate jobs, key for key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.core.sbatch_parse import command_lines, exports, rendered_step, sbatch_options, split_overrides, substitute

REF = Path(__file__).resolve().parent.parent / "fixtures" / "reference"
HOME = "/home/yxxxx-pg"
ARGS = [f"work_dir={HOME}/ex01", f"container.image={HOME}/nemo_24.03.sif"]


def _reference(name):
    text = (REF / name).read_text()
    (argv,) = command_lines(text)
    return text, substitute(argv, exports(text))


def _hpcft(*args, cwd):
    proc = subprocess.run([sys.executable, "-m", "hpc_ft.cli", *args], capture_output=True, text=True, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def fake_home(tmp_path, monkeypatch):
    """The reference paths live under /home/yxxxx-pg; render there only if we may, else skip."""
    base = Path(HOME)
    created = not base.exists()
    try:
        (base / "ex01").mkdir(parents=True, exist_ok=True)
    except PermissionError:
        pytest.skip("cannot create /home/yxxxx-pg for the golden paths")
    yield base
    if created:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def test_train_job_matches_the_reference_key_for_key(fake_home, tmp_path):
    out = _hpcft("train", "experiment=nig_elyza_ptuning", *ARGS, "--dry-run", cwd=tmp_path)
    ref_text, ref_argv = _reference("nig_train.sbatch")
    ours = sbatch_options(out)
    for key, val in sbatch_options(ref_text).items():
        assert ours[key] == val, key
    ref_prefix, ref_values = split_overrides(ref_argv)
    our_prefix, our_values = split_overrides(rendered_step(out, "train"))
    # torchrun runs --standalone (a free rendezvous port): with the default 29500 two jobs sharing a node clash
    assert our_prefix == ref_prefix[:-1] + ["--standalone"] + ref_prefix[-1:]
    # The legitimate difference of the keys: NeMo's exp_dir is the run's own (<run dir>/nemo), not the tutorial's
    # shared ex01/results, so that resume_if_exists never picks up another run's checkpoints.
    run_dir = Path(our_values["exp_manager.exp_dir"]).parent
    assert our_values["exp_manager.exp_dir"] == str(run_dir / "nemo")
    assert run_dir.parent == Path(ref_values["exp_manager.exp_dir"]) / ref_values["exp_manager.name"]
    our_values["exp_manager.exp_dir"] = ref_values["exp_manager.exp_dir"]
    assert our_values == ref_values
    assert list(our_values) == list(ref_values)  # the same order, too


def test_eval_job_matches_the_reference_with_predictions_under_the_run(fake_home, tmp_path):
    # Without --run the eval job has no training run of its own: it names the adapter as the tutorial does.
    peft = f"model.peft.restore_from_path={HOME}/ex01/results/elyza_7b_ptuning/checkpoints/elyza_7b_ptuning.nemo"
    out = _hpcft("eval", "experiment=nig_elyza_ptuning", *ARGS, peft, "--dry-run", "--out", f"{HOME}/ex01/results",
                 cwd=tmp_path)
    ref_text, ref_argv = _reference("nig_generate.sbatch")
    ours = sbatch_options(out)
    for key, val in sbatch_options(ref_text).items():
        assert ours[key] == val, key
    env = exports(out)
    assert env["NVTE_FLASH_ATTN"] == "0" and env["NVTE_FUSED_ATTN"] == "0"
    ref_prefix, ref_values = split_overrides(ref_argv)
    our_prefix, our_values = split_overrides(rendered_step(out, "eval"))
    assert our_prefix == ref_prefix
    prefix_key = "model.data.test_ds.output_file_path_prefix"
    run_dir = Path(our_values.pop(prefix_key)).parent.parent
    ref_values.pop(prefix_key)
    assert (run_dir / "config.yaml").is_file()  # predictions go under the eval run's directory
    assert our_values == ref_values
