"""Fine-tune a causal LM on instruction jsonl with transformers Trainer (+ peft LoRA): events, early stopping, best adapter, resume, preemption.

Run as `python -m hpc_ft.backends.hf_runtime.train ...` or under
`torchrun --nproc_per_node=N -m hpc_ft.backends.hf_runtime.train ...` (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from hpc_ft.data.spec import add_data_arguments
from hpc_ft.backends.hf_runtime import batching
from hpc_ft.errors import UserError, did_you_mean

PRECISIONS = {"32": "32", "fp32": "32", "16": "16", "fp16": "16", "16-mixed": "16", "bf16": "bf16", "bf16-mixed": "bf16"}


def build_parser() -> argparse.ArgumentParser:
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
    p.add_argument("--lr-scheduler", default="linear", choices=["linear", "cosine", "constant", "constant_with_warmup"])
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--peft", default="lora", choices=["lora", "qlora", "none"])
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--lora-targets", default="q_proj,v_proj", help="comma-separated module names, or all-linear")
    p.add_argument("--precision", default="32", help="32, bf16, or 16 (16 needs a GPU)")
    p.add_argument("--max-seq-length", type=int, default=512)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--save-total-limit", type=int, default=2)
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
                "save_total_limit", "log_every")
    for name in positive:
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}={getattr(args, name)}: must be at least 1.")
    if args.patience < 0 or args.min_delta < 0:
        raise UserError(f"--patience={args.patience} --min-delta={args.min_delta}: must not be negative.")
    if args.lr <= 0:
        raise UserError(f"--lr={args.lr}: must be positive, e.g. 1e-4 for LoRA.")
    if not 0 <= args.lora_dropout < 1:
        raise UserError(f"--lora-dropout={args.lora_dropout}: must be in [0, 1).")
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


def lora_targets(model, spec: str) -> list[str] | str:
    """The --lora-targets list, checked against the model's module names."""
    if spec.strip() == "all-linear":
        return "all-linear"
    targets = [t.strip() for t in spec.split(",") if t.strip()]
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for target in targets:
        if target not in names:
            linear = sorted(n for n in names if n.endswith("_proj"))
            raise UserError(
                f"--lora-targets: '{target}' names no module of this model (it has "
                f"{', '.join(linear) or 'no *_proj modules'}).{did_you_mean(target, names)} Fix the list."
            )
    if not targets:
        raise UserError("--lora-targets is empty; give e.g. q_proj,v_proj or all-linear.")
    return targets


def load_model(args, has_cuda: bool):
    import torch
    from transformers import AutoModelForCausalLM

    # A frozen base may sit in half precision on a GPU (peft keeps the adapter weights in fp32);
    # full fine-tuning and everything on CPU keep fp32 weights and let autocast do the rest.
    dtype = torch.float32
    if has_cuda and args.peft != "none" and args.precision != "32":
        dtype = torch.bfloat16 if args.precision == "bf16" else torch.float16
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
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, **load_kwargs)
    if args.peft == "none":
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if args.peft == "qlora":
        model = prepare_model_for_kbit_training(model)
    config = LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        target_modules=lora_targets(model, args.lora_targets), task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def training_arguments(args, has_cuda: bool, world_size: int):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(Path(args.output_dir).resolve()),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.micro_batch_size,
        per_device_eval_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,
        lr_scheduler_type=args.lr_scheduler,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        max_grad_norm=args.grad_clip,
        logging_strategy="steps",
        logging_steps=args.log_every,
        eval_strategy="steps",
        eval_steps=args.eval_steps,
        save_strategy="steps",
        save_steps=args.eval_steps,
        save_total_limit=args.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        seed=args.seed,
        bf16=args.precision == "bf16",
        fp16=args.precision == "16",
        use_cpu=not has_cuda,
        ddp_backend=("gloo" if not has_cuda else "nccl") if world_size > 1 else None,
        ddp_find_unused_parameters=False if world_size > 1 else None,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=True,
    )


def resume_point(args, log) -> tuple[Path | None, dict | None]:
    """(checkpoint to resume from, end record when the run already finished and there is nothing to do)."""
    from hpc_ft.backends.hf_runtime.checkpoints import latest_checkpoint, read_end_record

    if args.resume == "never":
        return None, None
    end = read_end_record(args.output_dir)
    if end and (end.get("reason") == "early_stop" or (end.get("reason") == "max_steps" and end.get("step", 0) >= args.max_steps)):
        return None, end
    latest = latest_checkpoint(args.output_dir)
    if latest is not None:
        log(f"[resume] from {latest}")
    return latest, None


def run(args: argparse.Namespace) -> int:
    """Train as the arguments say; a failure leaves an `error` event before it propagates."""
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
        if args.threads:
            torch.set_num_threads(args.threads)
        return _train(args, world_size, is_main, has_cuda, preemption, events, log)
    except Exception as exc:
        events.write("error", type=type(exc).__name__, message=str(exc)[:2000])
        raise
    finally:
        preemption.restore(previous_handlers)


def _train(args, world_size: int, is_main: bool, has_cuda: bool, preemption, events, log) -> int:
    from transformers import AutoTokenizer, EarlyStoppingCallback, PrinterCallback, Trainer
    from transformers.utils import logging as hf_logging

    from hpc_ft.backends.hf_runtime.callbacks import ProgressEvents, all_reduce_number
    from hpc_ft.backends.hf_runtime.checkpoints import BEST_DIR, END_RECORD
    from hpc_ft.backends.hf_runtime.events import peak_rss_mb
    from hpc_ft.backends.hf_runtime.sft_data import AnswerOnlyCollator, load_splits

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

    callbacks = [ProgressEvents(events, lambda: tokens_counted[0], world_size, is_main), preemption,
                 batching.first_step_event(events, lambda: tokens_counted[0], data_seconds=data_seconds,
                                           model_seconds=model_seconds, tokenized_from_cache=from_cache)]
    if world_size > 1:  # each rank says where it ran and what it ended with (multi-node checks read it)
        from hpc_ft.backends.hf_runtime.ranks import RankReport

        callbacks.append(RankReport(world_size))
    early = None
    if args.patience:
        early = EarlyStoppingCallback(early_stopping_patience=args.patience, early_stopping_threshold=args.min_delta)
        callbacks.insert(0, early)
    targs = training_arguments(args, has_cuda, world_size)
    for option, value in batches.trainer_options.items():
        setattr(targs, option, value)
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=batches.train_dataset,
        eval_dataset=valid.examples,
        data_collator=collate,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)

    events.write("start", max_steps=args.max_steps, world_size=world_size,
                 resumed_from=str(resume_from) if resume_from else None, micro_batch_size=args.micro_batch_size,
                 global_batch_size=args.global_batch_size, grad_accum=args.grad_accum, peft=args.peft,
                 trainable_params=trainable, total_params=total, n_train=len(train.examples),
                 n_valid=len(valid.examples), output_dir=str(output_dir))
    log(f"[start] {args.peft} on {args.model_dir}: {trainable:,} of {total:,} parameters trainable; "
        f"{len(train.examples)} train / {len(valid.examples)} valid rows; world {world_size}, "
        f"mbs {args.micro_batch_size} x accum {args.grad_accum} = gbs {args.global_batch_size}; "
        f"max_steps {args.max_steps}, eval every {args.eval_steps}")
    log(f"[batching] {batches.description}")

    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    state = trainer.state
    best_checkpoint = str(Path(state.best_model_checkpoint).resolve()) if state.best_model_checkpoint else None
    best_val_loss = state.best_metric
    if preemption.stopped_at is not None:
        reason = "preempted"
    elif early is not None and early.early_stopping_patience_counter >= args.patience:
        reason = "early_stop"
    else:
        reason = "max_steps"

    best_dir = None
    if reason != "preempted":
        best_dir = output_dir / BEST_DIR
        trainer.save_model(str(best_dir))  # load_best_model_at_end: the model now holds the best weights
    trainer.save_state()

    rss = all_reduce_number(peak_rss_mb(), "sum", world_size)
    if reason == "early_stop":
        events.write("early_stop", step=state.global_step, best_val_loss=best_val_loss, best_checkpoint=best_checkpoint)
        log(f"[early stop] step {state.global_step}: val_loss did not improve by > {args.min_delta} "
            f"in {args.patience} evaluations; best {best_val_loss:.4f} at {best_checkpoint}")
    if reason == "preempted":
        saved = output_dir / f"checkpoint-{state.global_step}"
        events.write("preempt_saved", step=state.global_step, checkpoint=str(saved), signal=preemption.signal_name)
        log(f"[preempt] checkpoint saved at {saved}; exiting 0 so the job script can requeue")
    end = events.write("end", reason=reason, step=state.global_step, best_val_loss=best_val_loss,
                       best_checkpoint=best_checkpoint, best_dir=str(best_dir) if best_dir else None,
                       peak_rss_mb=round(rss, 1), train_seconds=round(time.perf_counter() - started, 2))
    if is_main:
        (output_dir / END_RECORD).write_text(json.dumps(end, indent=2) + "\n", encoding="utf-8")
    best_text = f"{best_val_loss:.4f}" if best_val_loss is not None else "n/a"
    log(f"[end] {reason} at step {state.global_step}; best val_loss {best_text} ({best_checkpoint}); "
        f"peak RSS {rss:.0f} MB")
    close_process_group()
    return 0


def close_process_group() -> None:
    """Tear down torch.distributed before exit: a gloo group left to the interpreter's shutdown can abort a rank
    ("terminate called without an active exception"), which torchrun reports as a failed job."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UserError as exc:
        print(f"train: error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
