"""Bad input: each mistake gets a short message naming the key or file (and a fix), exit code 2, no
traceback, nothing submitted and the registry unchanged. Every case runs the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import pytest

from tests.safety.helpers import hydra_quote, registry_rows, run_cli, slurm_jobs_from, slurm_now, slurm_status

Args = Union[Sequence[str], Callable[[Path], Sequence[str]]]

SMALL_DATA = ["data.synthetic.n_train=40", "data.synthetic.n_valid=8", "data.synthetic.n_test=8", "data.n_valid=8"]
PREFLIGHT_WIRED = True  # hpc_ft/submit/preflight.py calls the planner's TP/PP/batch rules


@dataclass
class Case:
    id: str
    args: Args                       # overrides (after `train`), or a function of the case's folder
    names: Tuple[str, ...]           # what stderr must name: the key, file or value, a fix
    env: Optional[Callable[[Path], Dict[str, str]]] = None  # extra environment of the CLI
    dry_run: bool = False            # the planner cases: --dry-run (a wrongly passing case then submits nothing)
    marks: List = field(default_factory=list)
    flags: Tuple[str, ...] = ()      # more CLI flags (e.g. --force)
    command: Tuple[str, ...] = ("train",)  # another command: its args are given whole (no work_dir, no data keys)


def _q(p: Path) -> str:
    return hydra_quote(str(p))


# ---- inputs on disk -------------------------------------------------------------------------------
def _jglue_row(i: int, **over) -> dict:
    row = {"q_id": i, "question": f"質問{i}？", **{f"choice{k}": f"答え{k}" for k in range(5)}, "label": i % 5}
    row.update(over)
    return row


def _jglue(d: Path, train_lines: List[str]) -> Path:
    """A JGLUE folder: train-v1.1.json as given (JSON lines), a valid valid-v1.1.json."""
    src = d / "jglue"
    src.mkdir()
    (src / "train-v1.1.json").write_text("\n".join(train_lines) + "\n", encoding="utf-8")
    (src / "valid-v1.1.json").write_text("\n".join(json.dumps(_jglue_row(i)) for i in range(5)) + "\n", encoding="utf-8")
    return src


def _good_lines(n: int = 20) -> List[str]:
    return [json.dumps(_jglue_row(i), ensure_ascii=False) for i in range(n)]


def _broken_json(d: Path) -> List[str]:
    lines = _good_lines()
    lines[2] = '{"q_id": 2, "question": "壊れた行", "choice0": '
    return [f"data.source={_q(_jglue(d, lines))}", "data.n_valid=5"]


def _missing_field(d: Path) -> List[str]:
    lines = _good_lines()
    row = _jglue_row(1)
    del row["label"]
    lines[1] = json.dumps(row, ensure_ascii=False)
    return [f"data.source={_q(_jglue(d, lines))}", "data.n_valid=5"]


def _bad_label(d: Path) -> List[str]:
    lines = _good_lines()
    lines[3] = json.dumps(_jglue_row(3, label=7), ensure_ascii=False)
    return [f"data.source={_q(_jglue(d, lines))}", "data.n_valid=5"]


def _not_an_object(d: Path) -> List[str]:
    lines = _good_lines()
    lines[0] = "[1, 2, 3]"
    return [f"data.source={_q(_jglue(d, lines))}", "data.n_valid=5"]


def _empty_source(d: Path) -> List[str]:
    (d / "empty").mkdir()
    return [f"data.source={_q(d / 'empty')}"]


def _image(d: Path, kind: str) -> List[str]:
    if kind == "fifo":
        os.mkfifo(d / "image.sif")
    return ["cluster.container_runtime=singularity", "container=hf", f"container.image={_q(d / 'image.sif')}"]


def _bad_bind(d: Path) -> List[str]:
    (d / "image.sif").write_bytes(b"x")
    return ["cluster.container_runtime=singularity", "container=hf", f"container.image={_q(d / 'image.sif')}",
            "cluster.binds=[relative/path]"]


def _work_dir_is_a_file(d: Path) -> List[str]:
    (d / "a-file").write_text("x")
    return [f"work_dir={_q(d / 'a-file')}"]


def _registry_under_a_file(d: Path) -> Dict[str, str]:
    (d / "a-file").write_text("x")
    return {"HPC_FT_REGISTRY": str(d / "a-file" / "registry.sqlite")}


def _broken_site_template(d: Path) -> Dict[str, str]:
    (d / "site").mkdir()
    (d / "site" / "sbatch.j2").write_text("#!/bin/bash\n{% for x in %}\n")
    return {"HPC_FT_TEMPLATE_DIR": str(d / "site")}


def _no_sbatch_on_path(d: Path) -> Dict[str, str]:
    """Slurm unreachable: a PATH of only a folder with python in it."""
    bin_dir = d / "only-python"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    return {"PATH": str(bin_dir)}


def _controller_down(d: Path) -> Dict[str, str]:
    """Slurm unreachable: an sbatch that cannot contact slurmctld (what a login node prints when it is down)."""
    bin_dir = d / "fake-slurm"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text("#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Unable to contact slurm "
                      "controller (connect failure)' >&2\nexit 1\n")
    sbatch.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


PLAN_FIXTURES = Path(__file__).resolve().parents[1] / "plan" / "fixtures"
RINNA = _q(PLAN_FIXTURES / "rinna-japanese-gpt-neox-3.6b.json")
NEMO_ON_NIG = ["cluster=nig", "backend=nemo", "model=elyza_llama2_7b", "trainer.devices=4", "model.global_batch_size=16",
               "model.micro_batch_size=4"]


SLURM = [pytest.mark.slurm]
PLANNER = [] if PREFLIGHT_WIRED else [pytest.mark.xfail(strict=False, reason="preflight not wired yet")]

CASES = [
    # unknown keys, with a did-you-mean
    Case("unknown-key", ["trainer.max_step=5"], ("trainer.max_step:", "Did you mean 'trainer.max_steps'")),
    Case("unknown-nested-key", ["model.optim.lrr=0.1"], ("model.optim.lrr", "Did you mean 'model.optim.lr'")),
    Case("unknown-added-key", ["+trainer.max_stepz=5"], ("trainer.max_stepz", "trainer.max_steps")),
    Case("unknown-top-level-key", ["+learning_rate=0.1"], ("learning_rate",)),
    Case("map-entry-without-plus", ["cluster.env.FOO=1"], ("cluster.env.FOO", "+cluster.env.FOO=")),
    # wrong types
    Case("type-int", ["trainer.max_steps=abc"], ("trainer.max_steps",)),
    Case("type-float-for-int", ["model.micro_batch_size=1.5"], ("model.micro_batch_size",)),
    Case("type-bool", ["eval=maybe"], ("eval",)),
    Case("type-null-for-int", ["trainer.max_steps=null"], ("trainer.max_steps",)),
    Case("type-list-for-str", ["exp_manager.name=[a,b]"], ("exp_manager.name",)),
    # values out of range or not one of the choices
    Case("range-max-steps", ["trainer.max_steps=0"], ("trainer.max_steps=0", ">= 1")),
    Case("range-lr", ["model.optim.lr=-1"], ("model.optim.lr=-1",)),
    Case("range-val-check", ["trainer.val_check_interval=1.5"], ("trainer.val_check_interval=1.5",)),
    Case("range-devices", ["cluster=slurm_local", "trainer.devices=8"], ("trainer.devices=8", "4 GPUs per node")),
    Case("format-time", ["cluster.time=forever"], ("cluster.time=forever",)),
    Case("format-mem", ["cluster.mem=lots"], ("cluster.mem=lots",)),
    Case("choice-precision", ["trainer.precision=8"], ("trainer.precision=8",)),
    Case("choice-runtime", ["cluster.container_runtime=docker"], ("cluster.container_runtime=docker",)),
    Case("choice-recompute", ["model.activations_checkpoint_granularity=some"],
         ("model.activations_checkpoint_granularity=some",)),
    Case("exp-name-with-slash", ["exp_manager.name=a/b"], ("exp_manager.name=a/b",)),
    Case("secret-name", ["secrets=[not-a-name]"], ("secrets", "not-a-name")),
    Case("secret-in-config", ["+cluster.env.HF_TOKEN=hf_x"], ("cluster.env.HF_TOKEN", "export HF_TOKEN")),
    Case("newline-in-work-dir", lambda d: ["work_dir=" + _q(d / "a\nb")], ("work_dir=",)),
    # unknown groups and options
    Case("unknown-cluster", ["cluster=nigg"], ("cluster=nigg", "Did you mean 'nig'")),
    Case("unknown-model", ["model=llama9000"], ("model=llama9000", "Available:")),
    Case("unknown-peft", ["peft=lorra"], ("peft=lorra", "Did you mean 'lora'")),
    Case("unknown-experiment", ["experiment=nope"], ("experiment=nope",)),
    Case("unknown-group", ["optimizer=adam"], ("optimizer",)),
    # override syntax
    Case("syntax-unclosed-list", ["trainer.max_steps=[1,2"], ("trainer.max_steps=[1,2", "syntax error")),
    Case("syntax-unquoted-shell", ["work_dir=/tmp/a $(x)"], ("work_dir=/tmp/a $(x)", "syntax error")),
    Case("syntax-no-value", ["trainer.max_steps"], ("trainer.max_steps",)),
    # missing files
    Case("missing-hf-model", lambda d: ["model.build=null", f"model.hf_path={_q(d / 'no-model')}"],
         ("model.hf_path=", "no-model", "hpc-ft model fetch")),
    Case("missing-nemo-base", lambda d: ["cluster=nig", "backend=nemo", f"model.restore_from_path={_q(d / 'base.nemo')}"],
         ("model.restore_from_path=", "base.nemo")),
    Case("missing-data-source", lambda d: [f"data.source={_q(d / 'no-jglue')}"], ("data.source=", "no-jglue")),
    Case("data-source-unset", ["data.source=null"], ("data.source",)),
    Case("data-source-without-files", _empty_source, ("empty", "train-v1.1.json")),
    Case("work-dir-is-a-file", _work_dir_is_a_file, ("a-file", "Not a directory")),
    Case("registry-unwritable", [], ("registry", "a-file", "HPC_FT_REGISTRY"), env=_registry_under_a_file),
    Case("site-template-broken", [], ("site/sbatch.j2:2", "HPC_FT_TEMPLATE_DIR"), env=_broken_site_template),
    # malformed data rows: file and line number
    Case("data-row-bad-json", _broken_json, ("train-v1.1.json:3", "not valid JSON")),
    Case("data-row-missing-field", _missing_field, ("train-v1.1.json:2", "label")),
    Case("data-row-bad-label", _bad_label, ("train-v1.1.json:4", "label")),
    Case("data-row-not-object", _not_an_object, ("train-v1.1.json:1", "JSON object")),
    # container image
    Case("image-missing", lambda d: _image(d, "missing"), ("container.image=", "image.sif", "does not exist")),
    Case("image-not-a-file", lambda d: _image(d, "fifo"), ("container.image=", "image.sif")),
    Case("container-bad-bind", _bad_bind, ("cluster.binds", "relative/path")),
    # Slurm unreachable, and what sbatch --test-only refuses
    Case("slurm-no-sbatch", ["cluster=slurm_local"], ("sbatch", "cluster=local"), env=_no_sbatch_on_path),
    Case("slurm-controller-down", ["cluster=slurm_local"], ("Slurm is not reachable", "slurmctld"),
         env=_controller_down),
    Case("slurm-unknown-partition", ["cluster=slurm_local", "cluster.partition=nope"],
         ("cluster.partition", "nope"), marks=SLURM),
    Case("slurm-time-over-limit", ["cluster=slurm_local", "cluster.partition=gpu", "cluster.time=3-00:00:00"],
         ("cluster.time",), marks=SLURM),
    Case("slurm-unknown-option", ["cluster=slurm_local", "+cluster.sbatch_extra.frobnicate=1"],
         ("cluster.sbatch_extra.frobnicate",), marks=SLURM),
    Case("slurm-too-many-gpus", ["cluster=slurm_local", "cluster.gpu.per_node=8", "trainer.devices=8",
                                 "model.global_batch_size=64"],
         ("trainer.devices",), marks=SLURM),
    # the planner's TP/PP/batch rules
    Case("rule-tp-divides-world", ["cluster=slurm_local", "trainer.devices=4", "model.tensor_model_parallel_size=3"],
         ("model.tensor_model_parallel_size",), dry_run=True, marks=PLANNER),
    Case("rule-pp-divides-world", ["cluster=slurm_local", "trainer.devices=4", "model.tensor_model_parallel_size=2",
                                   "model.pipeline_model_parallel_size=3"],
         ("pipeline_model_parallel_size",), dry_run=True, marks=PLANNER),
    Case("rule-gbs-divisible", ["cluster=slurm_local", "trainer.devices=2", "model.micro_batch_size=2",
                                "model.global_batch_size=7"],
         ("model.global_batch_size",), dry_run=True, marks=PLANNER),
    # issue 11, part 4: every check before the queue
    Case("hf-path-typo-is-not-built", lambda d: [f"model.hf_path={_q(d / 'modles' / 'tiny_llama')}"],
         ("model.hf_path=", "modles", "model.build=tiny")),
    Case("qlora-without-gpu", ["peft=qlora"], ("peft=qlora", "GPU", "peft=lora"), dry_run=True),
    Case("mem-per-cpu-without-unit", ["cluster=nig", "cluster.mem_per_cpu=32"],
         ("cluster.mem_per_cpu=32", "megabytes", "cluster.mem_per_cpu=32G")),
    Case("gradient-clip-negative", ["trainer.gradient_clip_val=-1"], ("trainer.gradient_clip_val=-1", ">= 0")),
    Case("max-seq-length-beyond-positions", ["model.data.train_ds.max_seq_length=4096"],
         ("model.data.train_ds.max_seq_length=4096", "max_position_embeddings 256"), dry_run=True),
    Case("syntax-unquoted-space-and-parenthesis", ["exp_manager.name=run (v2)"],
         ("exp_manager.name=run (v2)", "exp_manager.name='run (v2)'")),
    Case("syntax-unquoted-japanese-name", ["exp_manager.name=実験1"], ("exp_manager.name='実験1'",)),
    Case("syntax-unquoted-japanese-path", lambda d: [f"work_dir={d / '実験'}"], ("work_dir='", "実験'")),
    Case("several-values-without-m", ["model.micro_batch_size=4,8"],
         ("model.micro_batch_size=4,8", "use -m to sweep")),
    Case("learning-rate-synonym", ["model.optim.learning_rate=1e-4"],
         ("model.optim.learning_rate", "Did you mean 'model.optim.lr'")),
    Case("force-does-not-override-a-rule", ["cluster=slurm_local", "trainer.devices=4",
                                            "model.tensor_model_parallel_size=3"],
         ("model.tensor_model_parallel_size=3",), dry_run=True, flags=("--force",)),
    Case("runs-unknown-state", [], ("RUNNNING", "RUNNING", "COMPLETED"), command=("runs", "--state", "RUNNNING")),
    # issue 11, part 5: the planner never contradicts itself
    Case("gpu-model-ambiguous", ["cluster=slurm_local", "cluster.gpu.model=A100"],
         ("cluster.gpu.model=A100", "A100-40GB", "A100-80GB"), dry_run=True),
    Case("tp-does-not-divide-heads", [*NEMO_ON_NIG, "model.tensor_model_parallel_size=4", f"model.hf_config={RINNA}"],
         ("model.tensor_model_parallel_size=4", "num_attention_heads 22"), dry_run=True),
    Case("pp-beyond-layers", [*NEMO_ON_NIG, "model.tensor_model_parallel_size=1",
                              "model.pipeline_model_parallel_size=64"],
         ("model.pipeline_model_parallel_size=64", "larger than the model's 32 layers"), dry_run=True),
]


# ---- the job's own data files (model.data.*_ds.file_names): read and rendered before the queue -------------
def _user_data(d: Path, train: Union[str, bytes, None], *extra: str, name: str = "train.jsonl") -> List[str]:
    """Overrides naming a train file with this content (None: not created) and a good validation file."""
    good = '{"input": "質問", "output": "答え"}\n'
    (d / "valid.jsonl").write_text(good * 2, encoding="utf-8")
    path = d / name
    if isinstance(train, bytes):
        path.write_bytes(train)
    elif train is not None:
        path.write_text(train, encoding="utf-8")
    return [f"model.data.train_ds.file_names=[{_q(path)}]",
            f"model.data.validation_ds.file_names=[{_q(d / 'valid.jsonl')}]", *extra]


_GOOD = '{"input": "質問", "output": "答え"}\n'
_CHAT = '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'


def _data_dir_case(d: Path) -> List[str]:
    (d / "train.jsonl").mkdir()
    return _user_data(d, None)


DATA_CASES = [
    Case("data-file-missing", lambda d: _user_data(d, None), ("train.jsonl", "no such file", "file_names")),
    Case("data-file-is-a-directory", _data_dir_case, ("train.jsonl", "is a directory")),
    Case("data-file-empty", lambda d: _user_data(d, "\n"), ("train.jsonl", "empty")),
    Case("data-file-not-utf8", lambda d: _user_data(d, _GOOD.encode() + '{"input": "日本", "output": "x"}\n'.encode("cp932")),
         ("train.jsonl:2", "not UTF-8", "iconv")),
    Case("data-file-bad-json-line", lambda d: _user_data(d, _GOOD * 2 + '{"input": "x", "output": \n'),
         ("train.jsonl:3", "not valid JSON")),
    Case("data-row-without-answer", lambda d: _user_data(d, _GOOD + '{"input": "x"}\n'), ("train.jsonl:2", "'output'")),
    Case("data-template-field-missing", lambda d: _user_data(d, _GOOD, "model.data.train_ds.prompt_template='{instruction} {output}'"),
         ("train.jsonl:1", "{instruction}", "+data.columns.instruction")),
    Case("data-format-unknown", lambda d: _user_data(d, _GOOD, "data.format=alpacca"),
         ("data.format=alpacca", "Did you mean 'alpaca'")),
    Case("data-chat-unknown-role", lambda d: _user_data(d, _CHAT + _CHAT.replace('"user"', '"usr"'), "template=plain"),
         ("train.jsonl:2", "unknown role 'usr'")),
    Case("data-chat-no-assistant", lambda d: _user_data(d, '{"messages": [{"role": "user", "content": "a"}]}\n', "template=plain"),
         ("train.jsonl:1", "no assistant turn")),
    Case("data-columns-missing-column", lambda d: _user_data(d, '{"q": "a", "a": "b"}\n', "+data.columns.input=q",
                                                           "+data.columns.output=answer"),
         ("data.columns.output=answer", "no column 'answer'")),
    Case("data-split-empty-after-filtering", lambda d: _user_data(d, '{"input": "a", "output": ""}\n'),
         ("train.jsonl", "empty after filtering")),
    Case("data-alpaca-instruction-dropped", lambda d: _user_data(d, '{"instruction": "i", "input": "a", "output": "b"}\n',
                                                               "template=plain"),
         ("prompt_template", "'instruction'", "dropped")),
    Case("data-probabilities-per-file", lambda d: _user_data(d, _GOOD, "model.data.train_ds.concat_sampling_probabilities=[0.5,0.5]"),
         ("concat_sampling_probabilities", "one probability per file")),
]
CASES += DATA_CASES


# ---- tasks (classification, NER, preference): rows checked at submit --------------------------------
def _task_files(d: Path, task: str, train: str, valid: str, name: str = "train.jsonl") -> List[str]:
    (d / name).write_text(train, encoding="utf-8")
    (d / ("valid" + Path(name).suffix)).write_text(valid, encoding="utf-8")
    return [f"task={task}", "data.source=null", f"data.train_file={_q(d / name)}",
            f"data.validation_file={_q(d / ('valid' + Path(name).suffix))}", "data.test_file=null"]


def _jl(*rows: dict) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


_CLS = _jl({"text": "良い", "label": "pos"}, {"text": "悪い", "label": "neg"})
_NER = "田中 B-PER\nさん O\n\n東京 B-LOC\nへ O\n"
_PREF_OK = _jl({"prompt": "p", "response_a": "x", "response_b": "y", "label": "a"})

CASES += [
    Case("task-unknown-eval-label", lambda d: _task_files(
        d, "classification", _CLS, _jl({"text": "良い", "label": "pos"}, {"text": "普通", "label": "neutral"})),
        ("valid.jsonl:2", "label 'neutral'", "train split")),
    Case("task-conll-tag-not-iob2", lambda d: _task_files(
        d, "token_classification", "田中 B-PER\nさん PER\n", _NER, "train.conll"),
        ("train.conll:2", "'PER' is not IOB2")),
    Case("task-conll-tag-column-missing", lambda d: _task_files(
        d, "token_classification", "田中 B-PER\nさん\n", _NER, "train.conll"),
        ("train.conll:2", "tag column is missing")),
    Case("task-conll-unknown-entity-type", lambda d: _task_files(
        d, "token_classification", _NER, "大阪 B-GPE\n", "train.conll"),
        ("valid.conll:1", "entity type 'GPE'")),
    Case("task-sentence-too-long-refused", lambda d: _task_files(
        d, "token_classification", "\n".join(f"w{i} O" for i in range(12)) + "\n", _NER, "train.conll")
        + ["model.data.train_ds.max_seq_length=8", "task.overlong=refuse"],
        ("train.conll:1", "12 tokens", "task.overlong=split")),
    Case("task-preference-empty-response", lambda d: _task_files(
        d, "preference", _PREF_OK + _jl({"prompt": "p", "response_a": "", "response_b": "y", "label": "b"}), _PREF_OK),
        ("train.jsonl:2", "response_a is empty")),
    Case("task-on-nemo-backend", ["task=classification", "backend=nemo", "cluster=nig"], ("task=classification", "backend=hf")),
    Case("task-eval-without-a-run", lambda d: ["task=classification", f"work_dir={_q(d / 'work')}"],
         ("task=classification", "--run RUN"), command=("eval",)),
]


# ---- #12 models: a checkpoint folder without config.json, a model_type no family row covers ----------
def _checkpoint(d: Path, config: Optional[dict]) -> List[str]:
    folder = d / "my-checkpoint"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return ["model=hf", f"model.hf_path={_q(folder)}"]


CASES += [
    Case("model-folder-without-config", lambda d: _checkpoint(d, None), ("model.hf_path=", "my-checkpoint", "config.json")),
    Case("model-type-unsupported", lambda d: _checkpoint(d, {"model_type": "t5", "hidden_size": 768}),
         ("model_type='t5'", "Supported:", "llama")),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_is_a_short_clean_error(case: Case, tmp_path: Path):
    here = tmp_path / "case"         # the submitting directory: Slurm records it as the job's WorkDir
    here.mkdir()
    work = tmp_path / "work"
    registry = tmp_path / "case-registry.sqlite"
    overrides = list(case.args(tmp_path) if callable(case.args) else case.args)
    if case.command == ("train",) and not any(o.startswith("work_dir=") for o in overrides):
        overrides.insert(0, f"work_dir={_q(work)}")
    env = {**os.environ, "HPC_FT_REGISTRY": str(registry), **(case.env(tmp_path) if case.env else {})}
    slurm_up = slurm_status()[0]
    since = slurm_now()

    if case.command == ("train",):
        argv = ["train", *overrides, *SMALL_DATA, *(["--dry-run"] if case.dry_run else []), *case.flags]
    else:
        argv = [*case.command, *overrides, *case.flags]
    proc = run_cli(argv, env=env, cwd=here)

    err = proc.stderr
    assert proc.returncode == 2, f"rc={proc.returncode}\nstdout={proc.stdout}\nstderr={err}"
    assert "Traceback" not in err, err
    assert err.startswith("hpc-ft: error:"), err
    assert len(err.strip().splitlines()) <= 4, err
    for name in case.names:
        assert name in err, f"{name!r} not in: {err}"
    assert proc.stdout == ""
    assert registry_rows(registry) == 0
    assert not list(tmp_path.rglob("submitit")), "a job was handed to submitit"
    assert not list(tmp_path.rglob("state")), "a job script ran"
    if slurm_up:
        assert slurm_jobs_from(here, since) == [], "a Slurm job was submitted"

