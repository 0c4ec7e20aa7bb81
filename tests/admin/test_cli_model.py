"""`hpc-ft model fetch|convert|export` through the real CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO_ID = "tiny-org/tiny-llama"
COMMIT = "c0ffee" + "0" * 34
FILES = {
    "config.json": json.dumps({"model_type": "llama", "hidden_size": 64}).encode(),
    "tokenizer_config.json": b'{"model_max_length": 128}',
    "model.safetensors": b"not really weights",
}
TOKEN = "hf_secret_token_value"
ELYZA = ["model=elyza_llama2_7b", "cluster=nig", "container=nemo_24.03", "backend=nemo"]


@pytest.fixture
def hub(tmp_path, hub_snapshot):
    home = tmp_path / "hf_home"
    hub_snapshot(home / "hub", REPO_ID, COMMIT, FILES, ref="main")
    return {"HF_HOME": home, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": None, "HUGGINGFACE_HUB_CACHE": None,
            "TRANSFORMERS_OFFLINE": None, "HF_TOKEN": TOKEN}


# ----------------------------------------------------------------------------- fetch


def test_fetch_puts_the_pinned_snapshot_into_model_hf_path(cli, hub, work_dir):
    proc = cli("model", "fetch", "model=elyza_llama2_7b", f"model.repo_id={REPO_ID}", f"model.revision={COMMIT}",
               f"work_dir={work_dir}", env=hub)
    assert proc.returncode == 0, proc.stderr
    target = work_dir / "models" / "ELYZA-japanese-Llama-2-7b"
    for rel, data in FILES.items():
        assert (target / rel).read_bytes() == data and not (target / rel).is_symlink()
    assert f"{REPO_ID} at commit {COMMIT}: 3 files in {target}" in proc.stdout
    assert "hpc-ft model convert" in proc.stdout  # the next step for the nemo model
    assert TOKEN not in proc.stdout + proc.stderr


def test_fetch_refuses_a_branch_and_accepts_it_with_allow_unpinned(cli, hub, work_dir):
    args = ["model", "fetch", "model=elyza_llama2_7b", f"model.repo_id={REPO_ID}", "model.revision=main",
            f"work_dir={work_dir}"]
    refused = cli(*args, env=hub)
    assert refused.returncode == 2
    assert "model.revision='main'" in refused.stderr and "model.revision=<40-hex commit>" in refused.stderr
    assert not (work_dir / "models").exists()
    allowed = cli(*args, "--allow-unpinned", "--json", env=hub)
    assert allowed.returncode == 0, allowed.stderr
    data = json.loads(allowed.stdout)
    assert data["commit"] == COMMIT and sorted(data["files"]) == sorted(FILES)


def test_fetch_of_the_shipped_elyza_config_asks_for_a_pin(cli, hub, work_dir):
    proc = cli("model", "fetch", "model=elyza_llama2_7b", f"work_dir={work_dir}", env=hub)
    assert proc.returncode == 2 and "model.revision is not set for elyza/ELYZA-japanese-Llama-2-7b" in proc.stderr


def test_fetch_of_a_commit_missing_from_the_offline_cache_names_what_is_there(cli, hub, work_dir):
    proc = cli("model", "fetch", f"model.repo_id={REPO_ID}", "model=elyza_llama2_7b", "model.revision=" + "1" * 40,
               f"work_dir={work_dir}", env=hub)
    assert proc.returncode == 2 and "HF_HUB_OFFLINE=1" in proc.stderr and COMMIT in proc.stderr


def test_fetch_of_a_locally_built_model_has_nothing_to_fetch(cli, hub, work_dir):
    proc = cli("model", "fetch", "model=tiny_llama", env=hub)
    assert proc.returncode == 2 and "nothing to fetch" in proc.stderr and "model.build=tiny" in proc.stderr


# ----------------------------------------------------------------------------- convert


CONVERT_LINE = re.compile(
    r"^hpcft_step convert singularity exec (?P<image>\S+) python "
    r"/opt/NeMo/scripts/checkpoint_converters/convert_llama_hf_to_nemo.py "
    r"--input_name_or_path=(?P<hf>\S+) --output_path=(?P<out>\S+\.nemo) --precision=16 \|\| hpcft_end \$\?$",
    re.M,
)


@pytest.mark.parametrize("groups", [ELYZA, ["experiment=nig_elyza_ptuning"]], ids=["groups", "experiment"])
def test_convert_dry_run_renders_the_tutorials_converter_in_the_container(cli, work_dir, groups):
    proc = cli("model", "convert", *groups, f"work_dir={work_dir}", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    m = CONVERT_LINE.search(proc.stdout)
    assert m, proc.stdout[-2000:]
    hf = work_dir / "models" / "ELYZA-japanese-Llama-2-7b"
    assert m["image"] == str(work_dir / "nemo_24.03.sif")
    assert m["hf"] == str(hf) and m["out"] == str(hf / "ELYZA-japanese-Llama-2-7b.nemo")
    assert "--gres=gpu" not in proc.stdout  # the converter runs on the CPU
    assert "no config.json there; fetch the model first" in proc.stderr  # said, but a dry run still renders
    assert "dry run: rendered" in proc.stderr
    run_dirs = list((work_dir / "results").glob("*/*/convert.sbatch"))
    assert len(run_dirs) == 1 and run_dirs[0].read_text() == proc.stdout


def test_convert_refuses_to_submit_without_the_hf_model(cli, work_dir):
    proc = cli("model", "convert", *ELYZA, f"work_dir={work_dir}")
    assert proc.returncode == 2 and "fetch the model first" in proc.stderr


def test_convert_of_a_model_without_a_nemo_target_is_refused(cli, work_dir):
    proc = cli("model", "convert", "model=tiny_llama", f"work_dir={work_dir}", "--dry-run")
    assert proc.returncode == 2 and "model.restore_from_path is not set" in proc.stderr


# ----------------------------------------------------------------------------- export (nemo)


def _run_dir(work_dir: Path, overrides: list[str], cache: Path, monkeypatch) -> Path:
    """A run directory as `hpc-ft train` leaves it: config.yaml (the resolved spec) and checkpoints/."""
    from omegaconf import OmegaConf

    from hpc_ft.compose import compose_job

    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    spec = compose_job(overrides + [f"work_dir={work_dir}"])
    run = work_dir / "results" / "run1"
    (run / "checkpoints").mkdir(parents=True)
    OmegaConf.save(spec, run / "config.yaml")
    return run


def test_export_of_a_nemo_lora_run_renders_merge_then_hf_export(cli, work_dir, tmp_path, monkeypatch):
    run = _run_dir(work_dir, ELYZA + ["peft=lora", "model.tensor_model_parallel_size=4"], tmp_path / "c", monkeypatch)
    out = tmp_path / "hf-out"
    proc = cli("model", "export", run, "-o", out, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("hpcft_step ")]
    assert [ln.split()[1] for ln in lines] == ["merge", "export"]
    assert "singularity exec --nv" in lines[0] and "merge_lora_weights/merge.py" in lines[0]
    assert "tensor_model_parallel_size=4" in lines[0] and "trainer.devices=4" in lines[0]
    # the run's own adapter: NeMo's exp_dir is <run dir>/nemo (never a checkpoints folder shared by runs of one name)
    assert "lora_model_path=" + str(run / "nemo" / "elyza_llama2_7b_lora" / "checkpoints" / "elyza_llama2_7b_lora.nemo") in lines[0]
    assert "convert_llama_nemo_to_hf.py" in lines[1] and f"--hf_output_path={out}" in lines[1]
    assert "#SBATCH --gres=gpu:4" in proc.stdout
    assert (run / "export.sbatch").read_text() == proc.stdout  # the job joins the run's directory


def test_export_of_a_ptuning_run_is_refused_with_the_reason(cli, work_dir, tmp_path, monkeypatch):
    run = _run_dir(work_dir, ["experiment=nig_elyza_ptuning"], tmp_path / "c", monkeypatch)
    proc = cli("model", "export", run, "-o", tmp_path / "out", "--dry-run")
    assert proc.returncode == 2 and "p-tuning has no Hugging Face export" in proc.stderr


def test_export_of_a_nemo_file_with_overrides(cli, work_dir, tmp_path):
    base, lora = tmp_path / "base.nemo", tmp_path / "lora.nemo"
    proc = cli("model", "export", "--nemo", base, "--lora", lora, "-o", tmp_path / "out", "--dry-run", *ELYZA,
               f"work_dir={work_dir}")
    assert proc.returncode == 0, proc.stderr
    assert f"gpt_model_file={base}" in proc.stdout and f"lora_model_path={lora}" in proc.stdout
    full = cli("model", "export", "--nemo", base, "-o", tmp_path / "out", "--dry-run", *ELYZA, f"work_dir={work_dir}")
    assert full.returncode == 0 and "merge.py" not in full.stdout and f"--input_name_or_path={base}" in full.stdout
    missing = cli("model", "export", "--nemo", base, "-o", tmp_path / "out", *ELYZA, f"work_dir={work_dir}")
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_export_refuses_a_non_empty_output(cli, work_dir, tmp_path, monkeypatch):
    run = _run_dir(work_dir, ELYZA + ["peft=lora"], tmp_path / "c", monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    proc = cli("model", "export", run, "-o", out)
    assert proc.returncode == 2 and "exists and is not empty" in proc.stderr


# ----------------------------------------------------------------------------- export (hf)


def test_export_of_an_hf_run_without_checkpoints_says_so(cli, work_dir, tmp_path, monkeypatch):
    run = _run_dir(work_dir, [], tmp_path / "c", monkeypatch)
    proc = cli("model", "export", run, "-o", tmp_path / "out")
    assert proc.returncode == 2 and "no trained checkpoint" in proc.stderr


@pytest.mark.hf
def test_export_of_an_hf_run_merges_its_best_adapter(cli, work_dir, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")

    base_dir = tmp_path / "base"
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    transformers.LlamaForCausalLM(cfg).save_pretrained(base_dir)
    run = _run_dir(work_dir, [f"model.hf_path={base_dir}"], tmp_path / "c", monkeypatch)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    ckpts = run / "checkpoints"
    for step, seed in ((10, 1), (20, 2)):  # two checkpoints with different adapters; the best is step 10
        torch.manual_seed(seed)
        model = peft.get_peft_model(transformers.LlamaForCausalLM.from_pretrained(base_dir), lora)
        model.save_pretrained(ckpts / f"checkpoint-{step}")
        (ckpts / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (ckpts / "trainer_state.json").write_text(json.dumps({"best_model_checkpoint": str(ckpts / "checkpoint-10")}))

    out = tmp_path / "merged"
    dry = cli("model", "export", run, "-o", out, "--dry-run")
    assert dry.returncode == 0 and f"would merge the LoRA adapter {ckpts / 'checkpoint-10'}" in dry.stdout
    assert not out.exists()
    proc = cli("model", "export", run, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()

    ids = torch.tensor([[1, 5, 9, 13]])
    merged = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    best = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base_dir),
                                          ckpts / "checkpoint-10").eval()
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, best(input_ids=ids).logits, atol=1e-5)
