"""The hf backend's layout facts shared by its SFT and task steps: LoRA target names, PEFT schemes, step counts, a run's paths."""

from __future__ import annotations

import os
from typing import Dict, List

from omegaconf import DictConfig

# NeMo's LoRA target names -> the Llama/Mistral module names in transformers. Other names pass through.
LORA_TARGETS = {
    "attention_qkv": ["q_proj", "k_proj", "v_proj"],
    "attention_dense": ["o_proj"],
    "mlp_fc1": ["gate_proj", "up_proj"],
    "mlp_fc2": ["down_proj"],
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
    "all": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
PEFT_SCHEMES = {"lora": "lora", "qlora": "qlora", "none": "none"}


def lora_targets(names) -> List[str]:
    out: List[str] = []
    for n in names:
        for t in LORA_TARGETS.get(n, [n]):
            if t not in out:
                out.append(t)
    return out


def eval_interval(spec: DictConfig, max_steps: int) -> int:
    v = spec.trainer.val_check_interval
    if isinstance(v, float):
        return max(1, round(v * max_steps))
    return int(v)


def max_steps(spec: DictConfig) -> int:
    return int(spec.sweep.steps or spec.trainer.max_steps)


def paths(run_dir: str) -> Dict[str, str]:
    return {
        "checkpoints": os.path.join(run_dir, "checkpoints"),
        "events": os.path.join(run_dir, "events.jsonl"),
        "predictions": os.path.join(run_dir, "predictions", "test_predictions.jsonl"),
        "base_predictions": os.path.join(run_dir, "predictions", "base_predictions.jsonl"),
    }
