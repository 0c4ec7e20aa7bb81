"""The optimizer and learning-rate schedule of an hf training run, built the way NeMo's `model.optim` keys say.

`model.optim.name` takes NeMo's names (fused_adam and adamw: AdamW with decoupled weight decay; adam:
Adam with L2 weight decay; sgd: SGD with momentum 0). Weight decay skips biases and norm weights, as
Megatron's parameter groups do. `model.optim.sched.name`: CosineAnnealing (cosine from lr to min_lr
after a linear warm-up over warmup_steps), linear (linear decay from lr to min_lr after the warm-up)
or constant (lr after the warm-up). torch is imported inside the builders only.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

from hpc_ft.errors import UserError, did_you_mean

#: model.optim.name -> the torch optimizer the hf backend builds
OPTIMIZERS = {"fused_adam": "adamw", "adamw": "adamw", "adam": "adam", "sgd": "sgd"}
#: model.optim.sched.name -> the schedule shape (NeMo's names first, then the short ones)
SCHEDULES = {"CosineAnnealing": "cosine", "cosine": "cosine", "WarmupAnnealing": "linear", "linear": "linear",
             "constant": "constant", "ConstantLR": "constant"}


def check_optimizer(name: str, key: str = "--optim") -> str:
    if name not in OPTIMIZERS:
        raise UserError(f"{key}={name}: not one of {', '.join(OPTIMIZERS)}.{did_you_mean(name, OPTIMIZERS)}")
    return OPTIMIZERS[name]


def check_schedule(name: str, key: str = "--lr-scheduler") -> str:
    if name not in SCHEDULES:
        raise UserError(f"{key}={name}: not one of {', '.join(SCHEDULES)}.{did_you_mean(name, SCHEDULES)}")
    return SCHEDULES[name]


def lr_factor(shape: str, max_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """The multiplier of the peak lr at each optimizer step (LambdaLR's function)."""
    decay_steps = max(1, max_steps - warmup_steps)

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / decay_steps)
        if shape == "cosine":
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if shape == "linear":
            return min_ratio + (1 - min_ratio) * (1 - progress)
        return 1.0

    return factor


def parameter_groups(named_parameters: Iterable, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups: matrices with weight decay, biases and norm weights without."""
    decay, no_decay = [], []
    for _, param in named_parameters:
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model, args):
    """The torch optimizer for `args.optim`, `args.lr`, `args.weight_decay`, `args.betas`."""
    import torch

    kind = check_optimizer(args.optim)
    groups = parameter_groups(model.named_parameters(), args.weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=0.0)
    betas = tuple(args.betas)
    if kind == "adam":
        return torch.optim.Adam(groups, lr=args.lr, betas=betas)
    return torch.optim.AdamW(groups, lr=args.lr, betas=betas)


def build_scheduler(optimizer, args, max_steps: int):
    """LambdaLR for `args.lr_scheduler` over `max_steps`, with `args.warmup_steps` and `args.min_lr`."""
    import torch

    shape = check_schedule(args.lr_scheduler)
    factor = lr_factor(shape, max_steps, args.warmup_steps, args.min_lr / args.lr)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
