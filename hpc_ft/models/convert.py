"""Model format conversion: render NeMo's HF<->.nemo converter commands, and merge an HF LoRA adapter.

The NeMo side only renders argv lists; they run inside the NeMo container (scripts live under
/opt/NeMo). Script names and flags are those of NeMo 1.x `scripts/checkpoint_converters/` as in
the 24.03 container (nemo.md section 6). The tutorial's command is

    python /opt/NeMo/scripts/checkpoint_converters/convert_llama_hf_to_nemo.py \\
        --input_name_or_path=<hf dir> --output_path=<model>.nemo --precision=16

Export back to HF: a full .nemo goes straight through `convert_*_nemo_to_hf.py`; a LoRA .nemo
is first merged into the base with `merge.py` (same TP as training, PP=1 only); a p-tuning .nemo
has no weight delta to merge, so there is no HF export for it.

`merge_lora` is the hf backend's counterpart (peft `merge_and_unload`); torch, transformers and
peft are imported inside it only.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from hpc_ft.errors import UserError, did_you_mean

NEMO_ROOT = "/opt/NeMo"
CONVERTER_DIR = "scripts/checkpoint_converters"
MERGE_LORA_SCRIPT = "scripts/nlp_language_modeling/merge_lora_weights/merge.py"
PRECISIONS = ("16", "32", "bf16", "16-mixed", "bf16-mixed")
PTUNING_SCHEMES = ("ptuning", "p_tuning", "p-tuning", "prompt_tuning")
LORA_SCHEMES = ("lora",)
FULL_SCHEMES = (None, "", "none", "full")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt", "chat_template.jinja", "chat_template.json",
)


@dataclass(frozen=True)
class Family:
    """Which NeMo converter scripts serve a model family, and how the export names its HF reference."""

    name: str
    hf_to_nemo: str
    nemo_to_hf: str
    export_style: str  # "llama": --hf_input_path/--hf_output_path; "mistral": --hf_model_name + output dir


FAMILIES = {
    "llama": Family("llama", "convert_llama_hf_to_nemo.py", "convert_llama_nemo_to_hf.py", "llama"),
    # Flags of the mistral scripts read from NeMo main; check `--help` inside an older container.
    "mistral": Family("mistral", "convert_mistral_7b_hf_to_nemo.py", "convert_mistral_7b_nemo_to_hf.py", "mistral"),
}
# config.json `model_type` -> family
MODEL_TYPES = {"llama": "llama", "mistral": "mistral"}


def get_family(name: str) -> Family:
    if name in FAMILIES:
        return FAMILIES[name]
    raise UserError(f"model.family={name!r} has no NeMo converter here; known: {', '.join(FAMILIES)}.{did_you_mean(name, FAMILIES)}")


def detect_family(hf_dir: str | os.PathLike) -> str:
    """Family from `<hf_dir>/config.json` (`model_type`), e.g. ELYZA-japanese-Llama-2-7b -> llama."""
    cfg = Path(hf_dir) / "config.json"
    try:
        model_type = json.loads(cfg.read_text(encoding="utf-8")).get("model_type")
    except FileNotFoundError:
        raise UserError(f"cannot read {cfg} to tell the model family; pass family=llama|mistral (model.family)") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{cfg} is not readable JSON ({exc}); pass the family explicitly") from None
    if model_type in MODEL_TYPES:
        return MODEL_TYPES[model_type]
    raise UserError(
        f"{cfg}: model_type={model_type!r} has no NeMo 1.x converter in hpc-ft (supported: {', '.join(MODEL_TYPES)}); "
        "use the hf backend for this model"
    )


def _check_precision(precision: str) -> str:
    p = str(precision)
    if p not in PRECISIONS:
        raise UserError(f"precision={p!r} is not one of {', '.join(PRECISIONS)} (V100: use 16; bf16 has no tensor-core path on sm70)")
    return p


def _check_hydra_path(key: str, value: str | os.PathLike) -> str:
    text = str(value)
    if not text or re.search(r"[\s,=\[\]{}'\"]", text):
        raise UserError(f"{key}={text!r}: paths passed as Hydra overrides cannot contain spaces, commas, '=', brackets or quotes")
    return text


def _script(nemo_root: str, name: str) -> str:
    return f"{nemo_root.rstrip('/')}/{CONVERTER_DIR}/{name}"


def hf_to_nemo_argv(
    hf_dir: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    family: str | None = None,
    precision: str = "16",
    nemo_root: str = NEMO_ROOT,
    python: str = "python",
) -> list[str]:
    """argv of the HF -> .nemo conversion (run it inside the NeMo container)."""
    fam = get_family(family or detect_family(hf_dir))
    out = str(output_path)
    if not out.endswith(".nemo"):
        raise UserError(f"output_path={out!r}: the converter writes a .nemo file; end the name with .nemo")
    return [
        python,
        _script(nemo_root, fam.hf_to_nemo),
        f"--input_name_or_path={hf_dir}",
        f"--output_path={out}",
        f"--precision={_check_precision(precision)}",
    ]


def merge_lora_nemo_argv(
    base_nemo: str | os.PathLike,
    lora_nemo: str | os.PathLike,
    merged_nemo: str | os.PathLike,
    *,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    precision: str = "16",
    accelerator: str = "gpu",
    nemo_root: str = NEMO_ROOT,
    python: str = "python",
) -> list[str]:
    """argv of NeMo's merge.py: fold a LoRA .nemo into its base (needs TP GPUs, same TP as training)."""
    if int(pipeline_parallel) != 1:
        raise UserError(
            f"model.pipeline_model_parallel_size={pipeline_parallel}: NeMo's merge.py supports only PP=1 "
            "('Only PP=1 supported so far'); train the LoRA with PP=1 to export it"
        )
    tp = int(tensor_parallel)
    if tp < 1:
        raise UserError(f"model.tensor_model_parallel_size={tp} must be >= 1")
    if accelerator not in ("gpu", "cpu"):
        raise UserError(f"accelerator={accelerator!r}: use gpu or cpu")
    return [
        python,
        f"{nemo_root.rstrip('/')}/{MERGE_LORA_SCRIPT}",
        f"trainer.accelerator={accelerator}",
        f"trainer.devices={tp}",
        "trainer.num_nodes=1",
        f"trainer.precision={_check_precision(precision)}",
        f"tensor_model_parallel_size={tp}",
        "pipeline_model_parallel_size=1",
        f"gpt_model_file={_check_hydra_path('gpt_model_file', base_nemo)}",
        f"lora_model_path={_check_hydra_path('lora_model_path', lora_nemo)}",
        f"merged_model_path={_check_hydra_path('merged_model_path', merged_nemo)}",
    ]


def nemo_to_hf_argv(
    nemo_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    hf_reference_dir: str | os.PathLike,
    family: str | None = None,
    precision: str = "16",
    work_dir: str | os.PathLike | None = None,
    cpu_only: bool = False,
    nemo_root: str = NEMO_ROOT,
    python: str = "python",
) -> list[str]:
    """argv of the .nemo -> HF folder export for a full (or already merged) model.

    `hf_reference_dir` is the original HF model folder: its config and tokenizer shape the output
    (the mistral script would otherwise fetch `mistralai/Mistral-7B-v0.1` from the Hub).
    """
    fam = get_family(family or detect_family(hf_reference_dir))
    out = Path(out_dir)
    p = _check_precision(precision)
    if fam.export_style == "llama":
        # --output_path is a torch .bin of the weights; keep it out of the HF folder it then builds.
        work = Path(work_dir) if work_dir is not None else out.parent / f"{out.name}.export-work"
        argv = [
            python,
            _script(nemo_root, fam.nemo_to_hf),
            f"--input_name_or_path={nemo_path}",
            f"--output_path={work / 'pytorch_model.bin'}",
            f"--hf_input_path={hf_reference_dir}",
            f"--hf_output_path={out}",
            f"--input_tokenizer={hf_reference_dir}",
            f"--hf_output_tokenizer={out}",
            f"--precision={p}",
        ]
        if cpu_only:
            argv.append("--cpu-only")
        return argv
    if cpu_only:
        raise UserError(f"the {fam.name} export script has no --cpu-only flag")
    return [
        python,
        _script(nemo_root, fam.nemo_to_hf),
        f"--input_name_or_path={nemo_path}",
        f"--output_path={out}",
        f"--hf_model_name={hf_reference_dir}",
        f"--precision={p}",
    ]


def export_commands(
    nemo_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    hf_reference_dir: str | os.PathLike,
    peft_scheme: str | None = None,
    peft_path: str | os.PathLike | None = None,
    family: str | None = None,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    precision: str = "16",
    merged_path: str | os.PathLike | None = None,
    accelerator: str = "gpu",
    cpu_only: bool = False,
    nemo_root: str = NEMO_ROOT,
    python: str = "python",
) -> list[list[str]]:
    """The commands that turn a NeMo result into an HF model folder, in order.

    `nemo_path` is the model .nemo (full fine-tune), or the *base* .nemo when `peft_scheme` is
    set, with the PEFT .nemo in `peft_path`. LoRA: merge.py first, then the HF export of the merged
    model. p-tuning: refused, it has no HF export.
    """
    scheme = (peft_scheme or "").strip().lower() or None
    if scheme in FULL_SCHEMES:
        return [nemo_to_hf_argv(nemo_path, out_dir, hf_reference_dir=hf_reference_dir, family=family,
                                precision=precision, cpu_only=cpu_only, nemo_root=nemo_root, python=python)]
    if scheme in PTUNING_SCHEMES:
        raise UserError(
            f"model.peft.peft_scheme={peft_scheme}: p-tuning has no Hugging Face export. It trains a prompt encoder "
            "(virtual tokens), not a weight delta, so there is nothing to merge into the base weights. Keep the base .nemo "
            "and the p-tuning .nemo and run inference with megatron_gpt_generate.py "
            "(model.restore_from_path=<base .nemo> model.peft.restore_from_path=<p-tuning .nemo>); use LoRA if you need an HF model"
        )
    if scheme not in LORA_SCHEMES:
        raise UserError(
            f"model.peft.peft_scheme={peft_scheme}: only LoRA adapters can be merged for export with NeMo 1.x merge.py "
            f"(supported: lora; no export: {', '.join(PTUNING_SCHEMES[:1])})"
        )
    if peft_path is None:
        raise UserError("exporting a LoRA run needs the LoRA .nemo (the PEFT checkpoint) as well as the base .nemo")
    merged = Path(merged_path) if merged_path is not None else Path(out_dir).parent / f"{Path(out_dir).name}-merged.nemo"
    merge = merge_lora_nemo_argv(nemo_path, peft_path, merged, tensor_parallel=tensor_parallel,
                                 pipeline_parallel=pipeline_parallel, precision=precision, accelerator=accelerator,
                                 nemo_root=nemo_root, python=python)
    export = nemo_to_hf_argv(merged, out_dir, hf_reference_dir=hf_reference_dir, family=family, precision=precision,
                             cpu_only=cpu_only, nemo_root=nemo_root, python=python)
    return [merge, export]


def commands_text(commands: Sequence[Sequence[str]]) -> str:
    """Shell text of argv lists, one command per line (each argument quoted)."""
    return "".join(" ".join(shlex.quote(str(a)) for a in argv) + "\n" for argv in commands)


# ----------------------------------------------------------------------------- hf backend


def merge_lora(
    base_dir: str | os.PathLike,
    adapter_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: str = "auto",
    overwrite: bool = False,
    auto_class: str = "AutoModelForCausalLM",
    model_kwargs: dict | None = None,
) -> Path:
    """Merge a peft LoRA adapter into its base model and save a plain HF model folder (safetensors).

    ``auto_class``/``model_kwargs``: how the base is loaded, e.g. AutoModelForSequenceClassification with
    num_labels/id2label for a classification run (its trained head comes from the adapter's modules_to_save).

    The tokenizer files are copied from the adapter folder when it has them (training may have
    added tokens), otherwise from the base. Prompt-learning adapters (p-tuning, prompt tuning)
    have no weights to merge and are refused.
    """
    base, adapter, out = Path(base_dir), Path(adapter_dir), Path(out_dir)
    if not (base / "config.json").is_file():
        raise UserError(f"base model folder {base} has no config.json")
    adapter_cfg_path = adapter / "adapter_config.json"
    if not adapter_cfg_path.is_file():
        raise UserError(f"adapter folder {adapter} has no adapter_config.json (expected a peft save_pretrained folder)")
    adapter_cfg = json.loads(adapter_cfg_path.read_text(encoding="utf-8"))
    peft_type = str(adapter_cfg.get("peft_type", "")).upper()
    if peft_type in ("P_TUNING", "PROMPT_TUNING", "PREFIX_TUNING"):
        raise UserError(f"{adapter} is a {peft_type} adapter: virtual tokens, no weight delta to merge; load it with PeftModel for inference instead")
    if peft_type not in ("LORA", ""):
        raise UserError(f"{adapter} is a {peft_type} adapter; merge_lora handles LoRA adapters")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out} exists and is not empty; choose another folder or pass overwrite")
        shutil.rmtree(out)

    import torch
    import transformers
    from peft import PeftModel

    kwargs: dict = {"local_files_only": True, **(model_kwargs or {})}
    if dtype != "auto":
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise UserError(f"dtype={dtype!r} is not a torch dtype (float16, bfloat16, float32, or auto)")
    else:
        torch_dtype = "auto"
    major = int(transformers.__version__.split(".")[0])
    kwargs["dtype" if major >= 5 else "torch_dtype"] = torch_dtype
    model = getattr(transformers, auto_class).from_pretrained(str(base), **kwargs)
    peft_model = PeftModel.from_pretrained(model, str(adapter))
    merged = peft_model.merge_and_unload()

    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    merged.save_pretrained(str(partial), safe_serialization=True)
    tokenizer_src = adapter if any((adapter / f).is_file() for f in TOKENIZER_FILES) else base
    for name in TOKENIZER_FILES:
        if (tokenizer_src / name).is_file():
            shutil.copy2(tokenizer_src / name, partial / name)
    if out.exists():
        out.rmdir()
    os.replace(partial, out)
    return out
