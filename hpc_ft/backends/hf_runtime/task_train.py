"""Fine-tune a classification, NER or preference head (full or LoRA + the head) with transformers Trainer; early stopping and the best checkpoint follow the task's metric.

Shares train.py's argument checks, TrainingArguments, resume and process-group teardown, and the
callbacks (events, preemption) and checkpoint helpers of the SFT runtime. Run as
`python -m hpc_ft.backends.hf_runtime.task_train --task classification ...`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hpc_ft.backends.hf_runtime import train as sft
from hpc_ft.errors import UserError

TASKS = ("classification", "token_classification", "preference")
#: what a task's early stopping and best checkpoint may follow (the eval's scores, as val_<name>)
TASK_MONITORS = ["val_loss", "val_accuracy", "val_f1", "val_precision", "val_recall", "val_log_loss"]
PEFT_TASK_TYPES = {"classification": "SEQ_CLS", "preference": "SEQ_CLS", "token_classification": "TOKEN_CLS"}


def build_parser() -> argparse.ArgumentParser:
    p = sft.build_parser(monitor_choices=TASK_MONITORS)  # a task monitors its own metrics (val_f1, ...)
    p.prog = "python -m hpc_ft.backends.hf_runtime.task_train"
    p.description = "Fine-tune a sequence/token classification head (full or LoRA + head) on prepared task rows."
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--labels-file", required=True, help="labels.json written at submit (the label names, in id order)")
    p.add_argument("--overlong", default="truncate", choices=["truncate", "split", "refuse"])
    return p


def auto_class(task: str):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    return AutoModelForTokenClassification if task == "token_classification" else AutoModelForSequenceClassification


def load_task_model(model_dir: str, task: str, labels: list[str], peft: str, lora: dict | None, seed: int):
    """The base with a freshly initialised head (seeded: the untuned model of the eval is this same one), with LoRA
    on the chosen modules and the head trained in full when peft is lora."""
    import transformers

    transformers.set_seed(seed)
    model = auto_class(task).from_pretrained(
        model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)})
    if model.config.pad_token_id is None and getattr(model.config, "eos_token_id", None) is not None:
        model.config.pad_token_id = model.config.eos_token_id
    if peft == "none" or lora is None:
        return model
    from peft import LoraConfig, get_peft_model

    targets = lora["targets"]
    targets = "all-linear" if targets == "all-linear" else sft.lora_targets(model, targets)
    config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], target_modules=targets,
                        task_type=PEFT_TASK_TYPES[task])
    return get_peft_model(model, config)


def run(args: argparse.Namespace) -> int:
    return sft.run_training(args, _train, _check)


def _check(args: argparse.Namespace) -> None:
    if args.peft == "qlora":
        raise UserError("--peft=qlora: not offered for classification heads; use --peft lora or none.")


def encode(args, tokenizer, labels: list[str], path: str, argument: str):
    from hpc_ft.backends.hf_runtime.task_data import ENCODERS, read_rows

    rows = read_rows(path, argument)
    return ENCODERS[args.task](tokenizer, rows, labels, args.max_seq_length, args.overlong)


def _train(args, world_size: int, is_main: bool, has_cuda: bool, preemption, events, log) -> int:
    from transformers import AutoTokenizer, EarlyStoppingCallback, PrinterCallback, Trainer
    from transformers.utils import logging as hf_logging

    from hpc_ft.backends.hf_runtime.callbacks import KeepTopK, ProgressEvents
    from hpc_ft.backends.hf_runtime.optim import build_optimizer, build_scheduler
    from hpc_ft.backends.hf_runtime.task_data import collator, read_labels
    from hpc_ft.backends.hf_runtime.task_metrics import compute_metrics_for

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # "Some weights were newly initialized" is the point here, not a warning
    output_dir = Path(args.output_dir).expanduser().resolve()
    args.output_dir = str(output_dir)
    resume_from, finished = sft.resume_point(args, log)
    if finished is not None:
        log(f"[resume] {output_dir} already finished ({finished.get('reason')} at step {finished.get('step')}); nothing to do")
        return 0

    labels = read_labels(args.labels_file)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    train = encode(args, tokenizer, labels, args.train_file, "--train-file")
    valid = encode(args, tokenizer, labels, args.valid_file, "--valid-file")
    for name, split in (("train", train), ("valid", valid)):
        if split.truncated:
            how = "split into word-aligned pieces" if args.task == "token_classification" else "truncated"
            log(f"[data] {name}: {split.truncated} row(s) longer than --max-seq-length={args.max_seq_length} {how}")

    lora = None if args.peft == "none" else {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout,
                                              "targets": args.lora_targets}
    model = load_task_model(args.model_dir, args.task, labels, args.peft, lora, args.seed)
    if args.gradient_checkpointing:
        sft.enable_gradient_checkpointing(model, args.peft)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    collate_batch = collator(args.task, tokenizer)
    tokens_counted = [0]

    def collate(features):
        tokens_counted[0] += sum(len(f["input_ids"]) for f in features)
        return collate_batch(features)

    max_steps, epoch_limit = sft.step_budget(args, len(train.examples), world_size)
    targs = sft.training_arguments(args, has_cuda, world_size, max_steps)  # the best model by the task's metric
    targs.label_names = ["labels"]
    callbacks = [ProgressEvents(events, lambda: tokens_counted[0], world_size, is_main), preemption]
    if args.save_top_k != -1:  # exp_manager.checkpoint_callback_params.save_top_k, by the task's own metric
        callbacks.append(KeepTopK(args.save_top_k, sft.trainer_metric(args.monitor), args.mode == "max", is_main))
    if args.tensorboard_dir and is_main:
        callbacks.append(sft.tensorboard_callback(args.tensorboard_dir))
    early = None
    if args.patience:
        early = EarlyStoppingCallback(early_stopping_patience=args.patience, early_stopping_threshold=args.min_delta)
        callbacks.insert(0, early)
    optimizer = build_optimizer(model, args)
    trainer = Trainer(model=model, args=targs, train_dataset=train.examples, eval_dataset=valid.examples,
                      data_collator=collate, processing_class=tokenizer, callbacks=callbacks,
                      optimizers=(optimizer, build_scheduler(optimizer, args, max_steps)),
                      compute_metrics=compute_metrics_for(args.task, labels))
    trainer.remove_callback(PrinterCallback)

    events.write("start", max_steps=max_steps, max_epochs=args.max_epochs, world_size=world_size, task=args.task,
                 monitor=args.monitor, optim=args.optim, lr=args.lr, lr_scheduler=args.lr_scheduler,
                 warmup_steps=args.warmup_steps, min_lr=args.min_lr, weight_decay=args.weight_decay,
                 betas=list(args.betas), grad_clip=args.grad_clip, gradient_checkpointing=args.gradient_checkpointing,
                 mode=args.mode, resumed_from=str(resume_from) if resume_from else None,
                 micro_batch_size=args.micro_batch_size, global_batch_size=args.global_batch_size,
                 grad_accum=args.grad_accum, peft=args.peft, trainable_params=trainable, total_params=total,
                 n_train=len(train.examples), n_valid=len(valid.examples), labels=labels, output_dir=str(output_dir))
    log(f"[start] {args.task} ({args.peft}) on {args.model_dir}: {trainable:,} of {total:,} parameters trainable; "
        f"{len(labels)} labels; {len(train.examples)} train / {len(valid.examples)} valid examples; "
        f"monitor {args.monitor} ({args.mode}); max_steps {max_steps}{f' ({args.max_epochs} epochs)' if epoch_limit else ''}, "
        f"eval every {args.eval_steps}")

    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    # the label names travel with the model
    return sft.finish_training(trainer, args, started, early, epoch_limit, preemption, events, log, world_size,
                               is_main, keep_with_best=[(args.labels_file, "labels.json")])


def main(argv: list[str] | None = None) -> int:
    return sft.run_main("task_train", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
