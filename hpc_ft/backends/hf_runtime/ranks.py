"""Per-rank report lines of a distributed run: where each rank ran, whether it writes checkpoints, and what it ended with.

With several ranks every rank prints two lines (rank 0 alone writes events):
    [rank 1/2] host node2, local rank 0, checkpoint writer: no
    [rank 1/2] host node2 end at step 12: train loss 2.345678 (last logged), trainable weights sha1 3f2a…
The logged train loss is Trainer's mean over the ranks and the weights are updated from all-reduced
gradients, so both agree across ranks exactly when the ranks really exchanged data; a rank that trained
alone shows its own loss and a different weights digest. The digest is taken after the last optimizer
step, before load_best_model_at_end reloads a checkpoint from disk (which would make it agree anyway).
"""

from __future__ import annotations

import hashlib
import os
import socket

from transformers import TrainerCallback

from hpc_ft.backends.hf_runtime.events import say


def weights_digest(model) -> str:
    """sha1 over the trainable parameters' bytes, in parameter order."""
    digest = hashlib.sha1()
    for name, param in model.named_parameters():
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class RankReport(TrainerCallback):
    """Prints the start and end line of this rank (see the module docstring)."""

    def __init__(self, world_size: int):
        self.prefix = f"[rank {os.environ.get('RANK', '0')}/{world_size}] host {socket.gethostname()}"
        self.loss = None
        self.digest = None
        self.step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        say(f"{self.prefix}, local rank {os.environ.get('LOCAL_RANK', '0')}, "
            f"checkpoint writer: {'yes' if args.should_save else 'no'}")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.digest = weights_digest(model)
            self.step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])

    def on_train_end(self, args, state, control, **kwargs):
        loss = f"{self.loss:.6f}" if self.loss is not None else "n/a"
        say(f"{self.prefix} end at step {self.step}: train loss {loss} (last logged), "
            f"trainable weights sha1 {self.digest or 'n/a'}")
