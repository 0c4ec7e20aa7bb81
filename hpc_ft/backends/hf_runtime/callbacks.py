"""Trainer callbacks of train.py: progress events (train/eval/checkpoint) and the save-and-stop on SIGUSR1/SIGTERM."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Callable

from transformers import TrainerCallback

from hpc_ft.backends.hf_runtime.events import EventLog, say

PREEMPT_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


def all_reduce_number(value: float, op: str, world_size: int) -> float:
    """Sum or max of a number over the ranks; the number itself when training in one process."""
    if world_size <= 1:
        return value
    import torch
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return float(tensor.item())


HEADLINE_SCORES = ("val_accuracy", "val_f1", "val_precision", "val_recall", "val_log_loss")
_NOT_SCORES = ("eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch")


def task_scores(metrics: dict) -> dict:
    """The Trainer's eval_<name> metrics other than the loss and the timings, as val_<name> (rounded)."""
    return {"val_" + k[5:]: round(float(v), 6) for k, v in metrics.items()
            if k.startswith("eval_") and k not in _NOT_SCORES and isinstance(v, (int, float))}


class ProgressEvents(TrainerCallback):
    """Writes train/eval/checkpoint events and prints a line for each.

    step_time_s is the wall time per optimizer step since the last train event, with the time spent
    in evaluation and checkpoint saving left out; tokens_per_s counts real (non-padding) tokens over
    all ranks in that time. `tokens_counted()` is the collator's running count of tokens it produced.
    """

    def __init__(self, events: EventLog, tokens_counted: Callable[[], int], world_size: int, is_main: bool):
        self.events = events
        self.tokens_counted = tokens_counted
        self.world_size = world_size
        self.is_main = is_main
        self._clock = time.perf_counter()
        self._busy_s = 0.0
        self._steps = 0
        self._tokens_base = 0
        self._tokens_at_step_end = 0

    def _restart_clock(self) -> None:
        self._clock = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self._restart_clock()
        self._tokens_base = self._tokens_at_step_end = self.tokens_counted()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self._busy_s += now - self._clock
        self._steps += 1
        self._clock = now
        self._tokens_at_step_end = self.tokens_counted()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        tokens = all_reduce_number(float(self.tokens_counted() - self._tokens_base), "sum", self.world_size)
        step_time = self._busy_s / max(self._steps, 1)
        tokens_per_s = tokens / self._busy_s if self._busy_s > 0 else 0.0
        self._busy_s, self._steps, self._tokens_base = 0.0, 0, self.tokens_counted()
        lr = float(logs.get("learning_rate", 0.0))
        self.events.write(
            "train", step=state.global_step, max_steps=state.max_steps, loss=round(float(logs["loss"]), 6),
            lr=lr, step_time_s=round(step_time, 5), tokens_per_s=round(tokens_per_s, 1),
        )
        if self.is_main:
            say(f"[train] step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f} lr {lr:.2e} "
                f"{step_time:.3f} s/step {tokens_per_s:,.0f} tok/s")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        # tokens the collator produced for evaluation batches are not training throughput
        self._tokens_base += self.tokens_counted() - self._tokens_at_step_end
        self._tokens_at_step_end = self.tokens_counted()
        if metrics and "eval_loss" in metrics:
            val_loss = float(metrics["eval_loss"])
            scores = task_scores(metrics)  # a task's own metrics (val_f1, val_accuracy, ...), when it has them
            self.events.write("eval", step=state.global_step, val_loss=round(val_loss, 6), **scores)
            if self.is_main:
                best = state.best_metric
                if scores:
                    shown = " ".join(f"{k} {v:.4f}" for k, v in scores.items() if k in HEADLINE_SCORES)
                    say(f"[eval] step {state.global_step} val_loss {val_loss:.4f} {shown}")
                else:
                    best_text = f" (best so far {best:.4f})" if best is not None and best <= val_loss else " (new best)"
                    say(f"[eval] step {state.global_step} val_loss {val_loss:.4f}{best_text}")
        self._restart_clock()

    def on_save(self, args, state, control, **kwargs):
        path = (Path(args.output_dir) / f"checkpoint-{state.global_step}").resolve()
        self.events.write("checkpoint", step=state.global_step, path=str(path))
        if self.is_main:
            say(f"[checkpoint] step {state.global_step} -> {path}")
        self._restart_clock()


class PreemptionCallback(TrainerCallback):
    """On SIGUSR1/SIGTERM: finish the current optimizer step, save a checkpoint, stop training.

    With several ranks the flag is max-reduced at every step end, so all ranks stop at the same step
    even when the signal reached only some of them.
    """

    def __init__(self, world_size: int):
        self.world_size = world_size
        self.requested = False
        self.signal_name: str | None = None
        self.stopped_at: int | None = None

    def install(self) -> dict:
        """Take over the signals (main thread only); returns the previous handlers for `restore`."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, self._on_signal) for sig in PREEMPT_SIGNALS}

    @staticmethod
    def restore(previous: dict) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum, frame) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def on_step_end(self, args, state, control, **kwargs):
        requested = self.requested
        if self.world_size > 1:
            requested = all_reduce_number(float(requested), "max", self.world_size) > 0
        if requested and self.stopped_at is None:
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
            say(f"[preempt] {self.signal_name or 'signal on another rank'}: saving at step {state.global_step} and stopping")
        return control
