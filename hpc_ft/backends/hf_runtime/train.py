"""Fine-tune a causal LM on instruction jsonl with transformers Trainer (+ peft LoRA): events, early stopping, best adapter, resume, preemption.

Run as `python -m hpc_ft.backends.hf_runtime.train ...` or under
`torchrun --nproc_per_node=N -m hpc_ft.backends.hf_runtime.train ...` (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

from hpc_ft.data.spec import add_data_arguments
from hpc_ft.backends.hf_runtime import batching
from hpc_ft.backends.hf_runtime.checkpoints import (BEST_DIR, CHECKPOINT_RE, END_RECORD, latest_checkpoint,
                                                    read_end_record)
from hpc_ft.errors import UserError, did_you_mean

#: --monitor-metric (NeMo's metric name) -> the Trainer's metric
MONITORED = {"val_loss": "eval_loss", "validation_exact_string_match": "eval_exact_string_match"}
PRECISIONS = {"32": "32", "fp32": "32", "16": "16", "fp16": "16", "16-mixed": "16", "bf16": "bf16", "bf16-mixed": "bf16"}


def build_parser(monitor_choices: list | None = None) -> argparse.ArgumentParser:
    """The SFT runtime's arguments; `monitor_choices` widens --monitor (a task's own metrics: val_f1, ...)."""
    p = argparse.ArgumentParser(
        prog="python -m hpc_ft.backends.hf_runtime.train",
        description="Supervised fine-tuning (loss on the answer only) with LoRA/QLoRA/full parameters.",
    )
    p.add_argument("--model-dir", required=True, help="base model folder (config.json, weights, tokenizer)")
    add_data_arguments(p, ("train", "validation"))  # --train-file, --valid-file, --train-weights, --data-options
    p.add_argument("--output-dir", required=True, help="checkpoint-N folders, best/, trainer_state.json go here")
    p.add_argument("--events", default=None, help="events file (JSON lines, appended)")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--eval-steps", type=int, default=50, help="validate, and save a checkpoint, every N steps")
    p.add_argument("--patience", type=int, default=3, help="early stopping: evaluations without improvement; 0 = off")
    p.add_argument("--min-delta", type=float, default=0.001, help="early stopping: smallest val_loss drop that counts")
    p.add_argument("--micro-batch-size", type=int, default=4, help="examples per device per forward pass")
    p.add_argument("--global-batch-size", type=int, default=16, help="examples per optimizer step over all ranks")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--optim", default="adamw", help="fused_adam/adamw (AdamW), adam, sgd (NeMo's model.optim.name)")
    p.add_argument("--betas", default="0.9,0.999", help="Adam betas, b1,b2")
    p.add_argument("--weight-decay", type=float, default=0.0, help="on matrices; biases and norm weights get none")
    p.add_argument("--lr-scheduler", default="linear", help="CosineAnnealing/cosine, linear/WarmupAnnealing, constant")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up from 0 to --lr")
    p.add_argument("--min-lr", type=float, default=0.0, help="where the cosine or linear decay ends")
    p.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this; 0 = no clipping")
    p.add_argument("--max-epochs", type=int, default=-1, help="stop after this many passes over the data; -1 = no limit")
    p.add_argument("--save-top-k", type=int, default=1,
                   help="keep the k best checkpoints by --monitor (and the latest, to resume); -1 = keep all")
    # not --monitor: torch.distributed.run, which parses the whole command line first, reads it as an
    # ambiguous prefix of its own --monitor-interval and stops every multi-process job
    p.add_argument("--monitor-metric", dest="monitor", default="val_loss", choices=monitor_choices or sorted(MONITORED),
                   help="metric for early stopping and best")
    p.add_argument("--val-metric", default="loss", choices=["loss", "exact_string_match"],
                   help="exact_string_match: also generate answers to the validation prompts and score them")
    p.add_argument("--val-tokens-to-generate", type=int, default=10, help="with --val-metric exact_string_match")
    p.add_argument("--mode", default="min", choices=["min", "max"], help="min: lower --monitor is better")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute each layer in backward")
    p.add_argument("--tensorboard-dir", default=None, help="write TensorBoard event files here")
    p.add_argument("--num-workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--peft", default="lora", choices=["lora", "qlora", "none"])
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--lora-targets", default="q_proj,v_proj", help="comma-separated module names, or all-linear")
    p.add_argument("--precision", default="32", help="32, bf16, or 16 (16 needs a GPU)")
    p.add_argument("--max-seq-length", type=int, default=512)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--resume", default="auto", choices=["auto", "never"])
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads per process")
    p.add_argument("--log-every", type=int, default=5, help="a train event every N steps")
    batching.add_arguments(p)
    return p


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_args(args: argparse.Namespace, world_size: int, has_cuda: bool) -> argparse.Namespace:
    """Refuse bad values with one-line UserErrors; fills args.precision (normalized) and args.grad_accum."""
    positive = ("max_steps", "eval_steps", "micro_batch_size", "global_batch_size", "lora_r", "max_seq_length",
                "log_every")
    for name in positive:
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}={getattr(args, name)}: must be at least 1.")
    if args.patience < 0 or args.min_delta < 0:
        raise UserError(f"--patience={args.patience} --min-delta={args.min_delta}: must not be negative.")
    if args.lr <= 0:
        raise UserError(f"--lr={args.lr}: must be positive, e.g. 1e-4 for LoRA.")
    if not 0 <= args.lora_dropout < 1:
        raise UserError(f"--lora-dropout={args.lora_dropout}: must be in [0, 1).")
    check_optim_args(args)
    if args.num_workers < 0:
        raise UserError(f"--num-workers={args.num_workers}: must not be negative (0 loads data in the training process).")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads={args.threads}: must be at least 1 (or leave it out).")
    per_step = args.micro_batch_size * world_size
    if args.global_batch_size % per_step:
        raise UserError(
            f"--global-batch-size={args.global_batch_size} is not a multiple of --micro-batch-size "
            f"({args.micro_batch_size}) x {world_size} rank(s) = {per_step}; use e.g. "
            f"{max(per_step, args.global_batch_size // per_step * per_step)} or change the micro batch."
        )
    args.grad_accum = args.global_batch_size // per_step
    if args.precision not in PRECISIONS:
        raise UserError(f"--precision={args.precision}: use 32, bf16 or 16.{did_you_mean(args.precision, PRECISIONS)}")
    args.precision = PRECISIONS[args.precision]
    if args.precision == "16" and not has_cuda:
        raise UserError("--precision=16: fp16 mixed precision needs a CUDA GPU; on CPU use --precision 32 or bf16.")
    if args.precision == "bf16" and has_cuda:
        import torch

        if not torch.cuda.is_bf16_supported():
            raise UserError("--precision=bf16: this GPU has no bfloat16 (e.g. V100); use --precision 16 or 32.")
    if args.peft == "qlora" and not has_cuda:
        raise UserError("--peft=qlora: 4-bit loading (bitsandbytes) needs a CUDA GPU; on CPU use --peft lora.")
    if not (Path(args.model_dir) / "config.json").is_file():
        raise UserError(f"--model-dir {args.model_dir}: no config.json there; fetch or build the model first.")
    return args


def check_optim_args(args: argparse.Namespace) -> None:
    """Optimizer, schedule, epochs and checkpoint-keeping values; fills args.betas as two floats."""
    from hpc_ft.backends.hf_runtime.optim import check_optimizer, check_schedule

    check_optimizer(args.optim)
    check_schedule(args.lr_scheduler)
    try:
        betas = tuple(float(b) for b in str(args.betas).split(","))
    except ValueError:
        betas = ()
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise UserError(f"--betas={args.betas}: give two numbers in [0, 1), e.g. 0.9,0.999.")
    args.betas = betas
    if args.weight_decay < 0 or args.min_lr < 0 or args.grad_clip < 0 or args.warmup_steps < 0:
        raise UserError(f"--weight-decay={args.weight_decay} --min-lr={args.min_lr} --grad-clip={args.grad_clip} "
                        f"--warmup-steps={args.warmup_steps}: must not be negative.")
    if args.min_lr > args.lr:
        raise UserError(f"--min-lr={args.min_lr} is above --lr={args.lr}; the decay ends at min_lr, so lower it.")
    if args.max_epochs == 0 or args.max_epochs < -1:
        raise UserError(f"--max-epochs={args.max_epochs}: use a positive number of epochs, or -1 for no limit.")
    if args.monitor == "validation_exact_string_match" and args.val_metric != "exact_string_match":
        raise UserError("--monitor=validation_exact_string_match needs --val-metric exact_string_match.")
    if args.val_tokens_to_generate < 1:
        raise UserError(f"--val-tokens-to-generate={args.val_tokens_to_generate}: must be at least 1.")
    if args.save_top_k == 0 or args.save_top_k < -1:
        raise UserError(f"--save-top-k={args.save_top_k}: keep at least 1 checkpoint (the best), or -1 for all.")


def lora_targets(model, spec: str) -> list[str] | str:
    """The --lora-targets list, checked against the model's module names."""
    if spec.strip() == "all-linear":
        return "all-linear"
    targets = [t.strip() for t in spec.split(",") if t.strip()]
    import torch

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                     if isinstance(module, torch.nn.Linear) and name != "lm_head"})
    for target in targets:
        if target not in names:
            raise UserError(
                f"--lora-targets: '{target}' names no module of this model (its linear layers: "
                f"{', '.join(linear)}).{did_you_mean(target, names)} Fix the list."
            )
    if not targets:
        raise UserError("--lora-targets is empty; give e.g. q_proj,v_proj or all-linear.")
    return targets


def base_weight_dtype(args):
    """A frozen base sits in the 16-bit type trainer.precision asks for (peft keeps the adapters in fp32);
    full fine-tuning keeps fp32 master weights and lets autocast do the rest. (plan.memory.hf_weight_dtype agrees.)"""
    import torch

    if args.peft == "none" or args.precision == "32":
        return torch.float32
    return torch.bfloat16 if args.precision == "bf16" else torch.float16


def load_model(args, has_cuda: bool):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = base_weight_dtype(args)
    load_kwargs = {"dtype": dtype}
    if args.peft == "qlora":
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise UserError("--peft=qlora needs the bitsandbytes package on the node; install it or use --peft lora.") from None
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if args.precision == "bf16" else torch.float16
        load_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
        load_kwargs["dtype"] = compute
    if args.packed_sequence and not has_cuda:
        # packs on CPU: one causal sdpa per packed row (hf_runtime.packed_attention) rather than the whole
        # sequence under a block-diagonal mask
        from hpc_ft.backends.hf_runtime.packed_attention import register

        load_kwargs["attn_implementation"] = register()
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, **load_kwargs)
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(model, args.peft)
    if args.peft == "none":
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if args.peft == "qlora":
        model = prepare_model_for_kbit_training(model)
    # the adapter's initial weights come from model.seed: two runs of one job train the same adapter
    # (the Trainer seeds only after the model is built)
    import transformers

    transformers.set_seed(args.seed)
    config = LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        target_modules=lora_targets(model, args.lora_targets), task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def enable_gradient_checkpointing(model, peft: str) -> None:
    """Recompute activations in the backward pass (NeMo's activations_checkpoint_granularity=full)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5's name; 4.x has only the old one
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if peft != "none":
        model.enable_input_require_grads()  # a frozen embedding gives the checkpointed layers no grad to carry


def trainer_metric(monitor: str) -> str:
    """The Trainer's name of a monitored metric: NeMo's names through MONITORED, a task's val_<name> as eval_<name>."""
    return MONITORED.get(monitor, "eval_" + monitor.removeprefix("val_"))


def training_arguments(args, has_cuda: bool, world_size: int, max_steps: int):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(Path(args.output_dir).resolve()),
        max_steps=max_steps,
        per_device_train_batch_size=args.micro_batch_size,
        per_device_eval_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,  # the optimizer and schedule themselves come from hf_runtime.optim
        max_grad_norm=args.grad_clip,
        logging_strategy="steps",
        logging_steps=args.log_every,
        eval_strategy="steps",
        eval_steps=args.eval_steps,
        save_strategy="steps",
        save_steps=args.eval_steps,
        save_total_limit=None,  # KeepTopK prunes: the k best by the monitored metric, and the latest
        load_best_model_at_end=True,
        metric_for_best_model=trainer_metric(args.monitor),
        greater_is_better=args.mode == "max",
        seed=args.seed,
        bf16=args.precision == "bf16",
        fp16=args.precision == "16",
        use_cpu=not has_cuda,
        ddp_backend=("gloo" if not has_cuda else "nccl") if world_size > 1 else None,
        ddp_find_unused_parameters=False if world_size > 1 else None,
        dataloader_num_workers=args.num_workers,
        remove_unused_columns=False,
        report_to="none",  # TensorBoard: the callback that _train adds with its own writer
        disable_tqdm=True,
    )


def tensorboard_callback(log_dir: str):
    """transformers' TensorBoard reporting (train/loss, eval/loss, train/learning_rate, ...) through torch's
    SummaryWriter into `log_dir`, whatever this transformers version does with its logging dir."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    Path(log_dir).mkdir(parents=True, exist_ok=True)
    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=log_dir))


def steps_per_epoch(n_rows: int, world_size: int, micro_batch_size: int, grad_accum: int) -> int:
    """Optimizer steps in one pass over `n_rows` (each rank reads ceil(n/world) rows in micro batches)."""
    batches = math.ceil(math.ceil(n_rows / world_size) / micro_batch_size)
    return max(1, math.ceil(batches / grad_accum))


def step_budget(args, n_rows: int, world_size: int) -> tuple[int, int | None]:
    """(steps to train, the epoch limit's steps when --max-epochs binds first, else None)."""
    if args.max_epochs == -1:
        return args.max_steps, None
    by_epochs = args.max_epochs * steps_per_epoch(n_rows, world_size, args.micro_batch_size, args.grad_accum)
    return (by_epochs, by_epochs) if by_epochs < args.max_steps else (args.max_steps, None)


def resume_point(args, log) -> tuple[Path | None, dict | None]:
    """(checkpoint to resume from, end record when the run already finished and there is nothing to do)."""
    if args.resume == "never":
        return None, None
    end = read_end_record(args.output_dir)
    if end and (end.get("reason") in ("early_stop", "max_epochs")
                or (end.get("reason") == "max_steps" and end.get("step", 0) >= args.max_steps)):
        return None, end
    latest = latest_checkpoint(args.output_dir)
    if latest is not None:
        log(f"[resume] from {latest}")
    return latest, None


def run(args: argparse.Namespace) -> int:
    """Train as the arguments say; a failure leaves an `error` event before it propagates."""
    return run_training(args, _train)


def run_training(args: argparse.Namespace, train, check=None) -> int:
    """SFT's and a task's start: this rank's place, the event log, the preemption handler, the arguments checked
    (`check(args)` adds the program's own checks), then `train(args, world_size, is_main, has_cuda, preemption,
    events, log)`; a failure leaves an `error` event before it propagates."""
    from hpc_ft.backends.hf_runtime.callbacks import PreemptionCallback
    from hpc_ft.backends.hf_runtime.events import EventLog, say

    world_size = world_size_from_env()
    is_main = int(os.environ.get("RANK", "0")) == 0
    events = EventLog(args.events, enabled=is_main)
    log = say if is_main else (lambda message: None)
    preemption = PreemptionCallback(world_size)
    previous_handlers = preemption.install()
    try:
        import torch

        has_cuda = torch.cuda.is_available()
        check_args(args, world_size, has_cuda)
        if check is not None:
            check(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        return train(args, world_size, is_main, has_cuda, preemption, events, log)
    except Exception as exc:
        events.write("error", type=type(exc).__name__, message=str(exc)[:2000])
        raise
    finally:
        preemption.restore(previous_handlers)


def _train(args, world_size: int, is_main: bool, has_cuda: bool, preemption, events, log) -> int:
    from transformers import AutoTokenizer, EarlyStoppingCallback, PrinterCallback, Trainer
    from transformers.utils import logging as hf_logging

    from hpc_ft.backends.hf_runtime.callbacks import GeneratingValidation, KeepTopK, ProgressEvents
    from hpc_ft.backends.hf_runtime.optim import build_optimizer, build_scheduler
    from hpc_ft.backends.hf_runtime.sft_data import AnswerOnlyCollator, load_rendered, load_splits
    from hpc_ft.data.spec import DataOptions

    hf_logging.disable_progress_bar()  # progress bars garble Slurm logs; our lines report progress
    output_dir = Path(args.output_dir).expanduser().resolve()
    args.output_dir = str(output_dir)

    resume_from, finished = resume_point(args, log)
    if finished is not None:
        log(f"[resume] {output_dir} already finished ({finished.get('reason')} at step {finished.get('step')}); nothing to do")
        return 0

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # packing/grouping and the tokenized-data cache (batching.py, token_cache.py)
    started_data = time.perf_counter()
    train, valid, from_cache = batching.encode_splits(args, tokenizer, load_splits, log)
    data_seconds = time.perf_counter() - started_data

    started_model = time.perf_counter()
    model = load_model(args, has_cuda)
    model_seconds = time.perf_counter() - started_model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    batches = batching.train_batching(train.examples, args, tokenizer.pad_token_id,
                                      AnswerOnlyCollator(tokenizer.pad_token_id),
                                      getattr(model.config, "_attn_implementation", None))
    collator = batches.collate
    tokens_counted = [0]

    def collate(features):
        tokens_counted[0] += sum(len(f["input_ids"]) for f in features)
        return collator(features)

    max_steps, epoch_limit = step_budget(args, len(batches.train_dataset), world_size)
    callbacks = [ProgressEvents(events, lambda: tokens_counted[0], world_size, is_main), preemption,
                 batching.first_step_event(events, lambda: tokens_counted[0], data_seconds=data_seconds,
                                           model_seconds=model_seconds, tokenized_from_cache=from_cache)]
    if args.save_top_k != -1:
        callbacks.append(KeepTopK(args.save_top_k, trainer_metric(args.monitor), args.mode == "max", is_main))
    if args.tensorboard_dir and is_main:
        callbacks.append(tensorboard_callback(args.tensorboard_dir))
    if world_size > 1:  # each rank says where it ran and what it ended with (multi-node checks read it)
        from hpc_ft.backends.hf_runtime.ranks import RankReport

        callbacks.append(RankReport(world_size))
    early = None
    if args.patience:
        early = EarlyStoppingCallback(early_stopping_patience=args.patience, early_stopping_threshold=args.min_delta)
        callbacks.insert(0, early)
    if args.val_metric == "exact_string_match":  # first: early stopping and the best checkpoint read its metric
        rendered = [r for part in load_rendered(args.valid_file, DataOptions.from_json(args.data_options), tokenizer,
                                                "--valid-file") for r in part]
        callbacks.insert(0, GeneratingValidation(tokenizer, rendered, args.val_tokens_to_generate,
                                                 args.micro_batch_size))
    optimizer = build_optimizer(model, args)
    targs = training_arguments(args, has_cuda, world_size, max_steps)
    for option, value in batches.trainer_options.items():
        setattr(targs, option, value)
    trainer = Trainer(
        model=model,
        args=targs,
        optimizers=(optimizer, build_scheduler(optimizer, args, max_steps)),
        train_dataset=batches.train_dataset,
        eval_dataset=valid.examples,
        data_collator=collate,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)

    events.write("start", max_steps=max_steps, max_epochs=args.max_epochs, world_size=world_size,
                 resumed_from=str(resume_from) if resume_from else None, micro_batch_size=args.micro_batch_size,
                 global_batch_size=args.global_batch_size, grad_accum=args.grad_accum, peft=args.peft,
                 trainable_params=trainable, total_params=total, n_train=len(train.examples),
                 n_valid=len(valid.examples), output_dir=str(output_dir), optim=args.optim, lr=args.lr,
                 lr_scheduler=args.lr_scheduler, warmup_steps=args.warmup_steps, min_lr=args.min_lr,
                 weight_decay=args.weight_decay, betas=list(args.betas), grad_clip=args.grad_clip,
                 base_dtype=str(model.get_input_embeddings().weight.dtype).replace("torch.", ""),
                 gradient_checkpointing=args.gradient_checkpointing)
    log(f"[start] {args.peft} on {args.model_dir}: {trainable:,} of {total:,} parameters trainable; "
        f"{len(train.examples)} train / {len(valid.examples)} valid rows; world {world_size}, "
        f"mbs {args.micro_batch_size} x accum {args.grad_accum} = gbs {args.global_batch_size}; "
        f"max_steps {max_steps}{f' ({args.max_epochs} epochs)' if epoch_limit else ''}, eval every {args.eval_steps}")
    log(f"[batching] {batches.description}")

    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    return finish_training(trainer, args, started, early, epoch_limit, preemption, events, log, world_size, is_main)


def finish_training(trainer, args, started: float, early, epoch_limit, preemption, events, log, world_size: int,
                    is_main: bool, keep_with_best=None) -> int:
    """The end of a training run, SFT's and a task's: why it ended, the best model saved as best/ (with
    `keep_with_best`'s (file, name) pairs copied beside it), the early_stop/preempt_saved/end events and end.json, then every
    rank leaves together. `monitor`/`best_metric` are what early stopping followed; `best_val_loss` is the
    validation loss at the best checkpoint (the same value when the monitor is the loss)."""
    from hpc_ft.backends.hf_runtime.callbacks import all_reduce_number
    from hpc_ft.backends.hf_runtime.events import peak_rss_mb

    output_dir = Path(args.output_dir)
    state = trainer.state
    best_checkpoint = str(Path(state.best_model_checkpoint).resolve()) if state.best_model_checkpoint else None
    best_metric = state.best_metric
    best_val_loss = best_metric if args.monitor == "val_loss" else _loss_at(state, best_checkpoint)
    if preemption.stopped_at is not None:
        reason = "preempted"
    elif early is not None and early.early_stopping_patience_counter >= args.patience:
        reason = "early_stop"
    elif epoch_limit is not None:
        reason = "max_epochs"
    else:
        reason = "max_steps"

    best_dir = None
    if reason != "preempted":
        best_dir = output_dir / BEST_DIR
        trainer.save_model(str(best_dir))  # load_best_model_at_end: the model now holds the best weights
        if is_main:
            for source, name in keep_with_best or []:
                shutil.copyfile(source, best_dir / name)
    trainer.save_state()

    rss = all_reduce_number(peak_rss_mb(), "sum", world_size)
    monitored = {} if args.monitor == "val_loss" else {"monitor": args.monitor, "best_metric": best_metric}
    best_text = f"{best_metric:.4f}" if best_metric is not None else "n/a"
    if reason == "early_stop":
        events.write("early_stop", step=state.global_step, best_val_loss=best_val_loss, **monitored,
                     best_checkpoint=best_checkpoint, patience=args.patience)
        log(f"[early stop] step {state.global_step}: {args.monitor} did not improve by > {args.min_delta} "
            f"in {args.patience} evaluations; best {best_text} at {best_checkpoint}")
    if reason == "preempted":
        saved = output_dir / f"checkpoint-{state.global_step}"
        events.write("preempt_saved", step=state.global_step, checkpoint=str(saved), signal=preemption.signal_name)
        log(f"[preempt] checkpoint saved at {saved}; exiting 0 so the job script can requeue")
    end = events.write("end", reason=reason, step=state.global_step, best_val_loss=best_val_loss, **monitored,
                       best_checkpoint=best_checkpoint, best_dir=str(best_dir) if best_dir else None,
                       peak_rss_mb=round(rss, 1), train_seconds=round(time.perf_counter() - started, 2))
    if is_main:
        (output_dir / END_RECORD).write_text(json.dumps(end, indent=2) + "\n", encoding="utf-8")
    log(f"[end] {reason} at step {state.global_step}; best {args.monitor} {best_text} ({best_checkpoint}); "
        f"peak RSS {rss:.0f} MB")
    close_process_group()
    return 0


def _loss_at(state, checkpoint: str | None) -> float | None:
    """The validation loss logged at the best checkpoint's step (the best of the monitored metric, not of the loss)."""
    match = CHECKPOINT_RE.match(Path(checkpoint).name) if checkpoint else None
    if match is None:
        return None
    step = int(match[1])
    for entry in state.log_history:
        if entry.get("step") == step and "eval_loss" in entry:
            return float(entry["eval_loss"])
    return None


def close_process_group() -> None:
    """End a multi-rank run: wait for every rank, then leave the process at once (exit code 0).

    Neither tearing the gloo group down nor leaving it to the interpreter's shutdown is safe: freeing the
    last reference to ProcessGroupGloo (from DDP's Reducer, when the trainer goes) joins its worker threads
    while holding the GIL, and a worker that is still freeing the barrier's tensors waits for the GIL: a
    deadlock seen as a rank that never exits (py-spy: ~ProcessGroupGloo -> std::thread::join). Everything
    the run writes is written and closed by now; only the output streams need a flush."""
    import logging

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def run_main(prog: str, parser: argparse.ArgumentParser, run_args, argv: list[str] | None) -> int:
    """A node program's entry: parse, run, and turn a UserError into one line and exit code 2."""
    args = parser.parse_args(argv)
    try:
        return run_args(args)
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
        return 2


def main(argv: list[str] | None = None) -> int:
    return run_main("train", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
