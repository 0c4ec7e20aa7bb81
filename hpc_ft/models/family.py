"""Which model family a job trains: `model_type` in the checkpoint's config.json, else `model.family`.

One answer for everything that depends on the family: the planner's architecture row, the hf
backend's LoRA module names, the NeMo converter script and the tiny model the job may build.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from hpc_ft.errors import UserError, did_you_mean
from hpc_ft.plan.arch import FAMILIES


def checkpoint_config(spec: Any) -> Optional[str]:
    """The config.json that describes the checkpoint: model.hf_config, else <model.hf_path>/config.json if present."""
    m = spec.model
    if m.hf_config:
        return str(m.hf_config)
    if m.hf_path and os.path.isfile(os.path.join(str(m.hf_path), "config.json")):
        return os.path.join(str(m.hf_path), "config.json")
    return None


def read_model_type(config_path: str) -> str:
    """`model_type` of a config.json; refused (one line, a fix) when it is missing or not a supported family."""
    try:
        with open(config_path, encoding="utf-8") as fh:
            cfg = json.load(fh)
    except FileNotFoundError:
        raise UserError(f"{config_path}: no such file. Point model.hf_path at a Hugging Face checkpoint folder.") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{config_path}: not readable JSON ({exc}). Use the config.json shipped with the checkpoint.") from None
    model_type = cfg.get("model_type") if isinstance(cfg, dict) else None
    if not model_type:
        raise UserError(f"{config_path}: no 'model_type' key. Use the config.json shipped with the checkpoint.")
    return check_family(str(model_type), f"{config_path}: model_type")


def check_family(name: str, key: str = "model.family") -> str:
    if name not in FAMILIES:
        raise UserError(
            f"{key}={name!r} is not a supported model family.{did_you_mean(name, FAMILIES)} "
            f"Supported: {', '.join(FAMILIES)}; use a checkpoint of one of these."
        )
    return name


def job_family(spec: Any) -> str:
    """The family of the job's model. config.json decides; `model.family` names it only where there is
    no config.json yet (a tiny model the job builds, a model not fetched yet) and must agree otherwise."""
    m = spec.model
    config = checkpoint_config(spec)
    if config is not None:
        found = read_model_type(config)
        if m.family and m.family != found:
            raise UserError(
                f"model.family={m.family} but {config} says model_type={found}. "
                f"Drop model.family (model.family=null: config.json decides) or set model.family={found}."
            )
        return found
    if m.family:
        return check_family(str(m.family))
    raise UserError(
        f"model.family is not set and {m.hf_path}/config.json does not exist. Point model.hf_path at a "
        "Hugging Face checkpoint folder (config.json, weights, tokenizer) or fetch it first (hpc-ft model fetch)."
    )
