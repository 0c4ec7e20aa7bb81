"""NeMo log parser: markers, progress, rank duplicates, incremental == whole, resumable state."""

from __future__ import annotations

import json
import random

import pytest
from track_helpers import FIXTURES

from hpc_ft.track.events import (
    ATTEMPT_MARKER,
    AttemptStarted,
    BestRestored,
    CheckpointRemoved,
    CheckpointSaved,
    EarlyStop,
    EndCause,
    Failure,
    MaxStepsReached,
    PreemptSaved,
    Progress,
    Resumed,
    ValLoss,
    split_attempts,
)
from hpc_ft.track.job_log import JobLogParser, clean_line, log_tail, parse_job_log

BAR = "Epoch 0: :  60%|██████    | {n}/10000 [4:26:54<2:56:09, v_num=0, reduced_train_loss={loss}, global_step={gs}.0, consumed_samples={cs}.0, train_step_timing in s=2.590{val}]"


def bar(n: int, loss: str = "0.0252", val: str | None = None) -> str:
    return "\r" + BAR.format(n=n, loss=loss, gs=n - 1, cs=n * 16, val=f", val_loss={val}" if val else "")


# The tutorial's end of training, as NeMo printed it (4 ranks, TP=4).
TUTORIAL = (
    "\x1b[A"
    + bar(6024, val="0.0917")
    + "[rank: 1] Monitored metric val_loss did not improve in the last 5 records. Best score: 0.074. Signaling Trainer to stop.\n"
    "[rank: 3] Monitored metric val_loss did not improve in the last 5 records. Best score: 0.074. Signaling Trainer to stop.\n"
    "[rank: 0] Monitored metric val_loss did not improve in the last 5 records. Best score: 0.074. Signaling Trainer to stop.\n"
    "[rank: 2] Monitored metric val_loss did not improve in the last 5 records. Best score: 0.074. Signaling Trainer to stop.\n"
    "Epoch 0, global step 6024: 'validation_loss' was not in top 1\n"
    "[NeMo I 2024-06-06 20:32:41 nlp_overrides:480] Removing checkpoint: /home/u/ex01/results/elyza_7b_ptuning/checkpoints/mp_rank_00/"
    "megatron_gpt_peft_ptuning_tuning--validation_loss=0.091-step=5522-consumed_samples=88352.0-last.ckpt\n"
    + bar(6024, val="0.0917")
    + bar(6024, val="0.0917")
    + "\n"
    "Restoring states from the checkpoint path at /home/u/ex01/results/elyza_7b_ptuning/checkpoints/"
    "megatron_gpt_peft_ptuning_tuning--validation_loss=0.073-step=4016-consumed_samples=64256.0.ckpt\n"
    "Restored all states from the checkpoint at /home/u/ex01/results/elyza_7b_ptuning/checkpoints/"
    "megatron_gpt_peft_ptuning_tuning--validation_loss=0.073-step=4016-consumed_samples=64256.0.ckpt\n"
)


def test_tutorial_end_of_training_gives_one_early_stop_and_the_restored_best():
    events = parse_job_log(TUTORIAL)
    assert events == [
        ValLoss(6024, 0.0917),
        Progress(6024, 10000, 0.0252, 0.0917, 2.59, 96384.0, None, 0),
        EarlyStop(6024, 0.074, 5, "val_loss"),
        CheckpointRemoved(
            "/home/u/ex01/results/elyza_7b_ptuning/checkpoints/"
            "megatron_gpt_peft_ptuning_tuning--validation_loss=0.091-step=5522-consumed_samples=88352.0-last.ckpt"
        ),
        BestRestored(
            "/home/u/ex01/results/elyza_7b_ptuning/checkpoints/"
            "megatron_gpt_peft_ptuning_tuning--validation_loss=0.073-step=4016-consumed_samples=64256.0.ckpt"
        ),
    ]


def test_val_loss_changes_in_the_middle_of_a_progress_stream_are_all_kept():
    text = (
        bar(100)
        + bar(200)
        + bar(200, val="0.512")  # validation finished: same step, new val_loss
        + bar(300, val="0.512")
        + "\r[NeMo I 2024-06-06 x:1] note: val_loss=9.99 is only text\n"  # not a progress update
        + bar(400, val="0.512")
        + bar(400, val="0.43")
        + bar(500, val="0.43")
        + bar(600, val="0.43")
        + bar(600, val="0.512")  # back to an earlier value: still a change
        + bar(700, val="0.512")
    )
    events = parse_job_log(text)
    assert [e for e in events if isinstance(e, ValLoss)] == [ValLoss(200, 0.512), ValLoss(400, 0.43), ValLoss(600, 0.512)]
    assert events[-1].step == 700  # the final progress


def test_early_stop_and_failure_events_carry_the_step_they_happened_at():
    text = bar(10) + bar(11) + "\n" + bar(12) + "\nRuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 15.78 GiB total capacity)\n"
    events = parse_job_log(text)
    progress = [e for e in events if isinstance(e, Progress)]
    failure = next(e for e in events if isinstance(e, Failure))
    assert progress[-1].step == 12
    assert events.index(progress[-1]) < events.index(failure)


@pytest.mark.parametrize(
    "line, expected",
    [
        (
            "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.95 GiB. GPU 0 has a total capacity of 15.77 GiB of which 1.12 GiB is free.",
            EndCause.GPU_OOM,
        ),
        (
            "RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 15.78 GiB total capacity; 14.21 GiB already allocated; 3.75 MiB free; 14.50 GiB reserved in total by PyTorch)",
            EndCause.GPU_OOM,
        ),
        ("[rank0]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.", EndCause.GPU_OOM),
        ("RuntimeError: CUDA error: out of memory", EndCause.GPU_OOM),
        (
            "slurmstepd: error: Detected 1 oom_kill event in StepId=81240.batch. Some of the step tasks have been OOM Killed.",
            EndCause.HOST_OOM,
        ),
        (
            "slurmstepd: error: Detected 2 oom-kill event(s) in step 1234.batch cgroup. Some of your processes may have been killed by the cgroup out-of-memory handler.",
            EndCause.HOST_OOM,
        ),
        ("slurmstepd: error: Job 1234 exceeded memory limit (130000000 > 128000000), being killed", EndCause.HOST_OOM),
        ("srun: error: gpu01: task 0: Out Of Memory", EndCause.HOST_OOM),
        (
            "[E ProcessGroupNCCL.cpp:475] [Rank 2] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600437 milliseconds before timing out.",
            EndCause.NCCL_TIMEOUT,
        ),
        (
            "torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1691, unhandled system error, NCCL version 2.19.3",
            EndCause.NCCL_ERROR,
        ),
        ("ncclUnhandledCudaError: Call to CUDA function failed.", EndCause.NCCL_ERROR),
        ("torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ", EndCause.ERROR),
        ("Error executing job with overrides: ['trainer.devices=4']", EndCause.CONFIG_ERROR),
        ("Could not override 'model.optim.lrr'.", EndCause.CONFIG_ERROR),
        ("omegaconf.errors.ConfigAttributeError: Key 'lrr' is not in struct", EndCause.CONFIG_ERROR),
        ("slurmstepd: error: *** JOB 81260 ON gpu02 CANCELLED AT 2024-06-07T12:00:05 DUE TO TIME LIMIT ***", EndCause.TIMEOUT),
        ("slurmstepd: error: *** JOB 81261 ON gpu02 CANCELLED AT 2024-06-07T12:00:05 DUE TO PREEMPTION ***", EndCause.PREEMPTED),
        ("slurmstepd: error: *** JOB 81262 ON gpu02 CANCELLED AT 2024-06-07T12:00:05 DUE TO NODE FAILURE ***", EndCause.NODE_FAIL),
        ("slurmstepd: error: *** JOB 81263 ON gpu02 CANCELLED AT 2024-06-07T12:00:05 ***", EndCause.CANCELLED),
        ("srun: error: Node failure on gpu03", EndCause.NODE_FAIL),
        ("Time limit reached. Elapsed time is 4:00:00. Signaling Trainer to stop.", EndCause.TIMEOUT),
        ("`Trainer.fit` stopped: `max_time=0:04:00:00` reached.", EndCause.TIMEOUT),
    ],
)
def test_failure_markers(line, expected):
    events = parse_job_log(f"{line}\n")
    assert [e.cause for e in events if isinstance(e, Failure)] == [expected]


@pytest.mark.parametrize(
    "line",
    [
        "gpu02:2841:2903 [0] misc/ibvwrap.cc:104 NCCL WARN Failed to open libibverbs.so[.1]",
        "[NeMo W 2024-06-06 15:21:41 nemo_logging:349] It is recommended to use `self.log('val_loss', ..., sync_dist=True)`",
        "Epoch 0, global step 6024: 'validation_loss' was not in top 1",
        "Restored all states from the checkpoint at /x/checkpoints/a--validation_loss=0.1-step=1.ckpt",
    ],
)
def test_harmless_lines_give_no_event(line):
    assert parse_job_log(f"{line}\n") == []


def test_hydra_error_after_training_started_is_a_runtime_error_not_a_config_error():
    before = parse_job_log("Error executing job with overrides: []\n")
    after = parse_job_log(bar(5) + "\nError executing job with overrides: []\n")
    assert [e.cause for e in before if isinstance(e, Failure)] == [EndCause.CONFIG_ERROR]
    assert [e.cause for e in after if isinstance(e, Failure)] == [EndCause.ERROR]


def test_fit_loop_and_callback_markers():
    text = (
        bar(1000)
        + "\n`Trainer.fit` stopped: `max_steps=1000` reached.\n"
        + "`Trainer.fit` stopped: `max_epochs=3` reached.\n"
        + "Monitored metric val_loss = nan is not finite. Previous best value was 0.512. Signaling Trainer to stop.\n"
        + "[NeMo I 2024-06-08 01:37:31 preemption:68] Received SIGTERM, saving checkpoint and exiting\n"
        + "Epoch 0, global step 400: 'validation_loss' reached 0.98330 (best 0.98330), saving model to "
        + "'/r/checkpoints/p--validation_loss=0.983-step=400-consumed_samples=3200.0.ckpt' as top 1\n"
        + "Epoch 0, global step 500: saving model to '/r/checkpoints/mp_rank_01/p--step=500.ckpt'\n"
        + "[NeMo I 2024-06-07 21:05:09 exp_manager:450] Resuming training from checkpoint: /r/checkpoints/p--validation_loss=0.622-step=1500-consumed_samples=12000.0-last.ckpt\n"
    )
    kinds = [e for e in parse_job_log(text) if not isinstance(e, Progress)]
    assert kinds == [
        MaxStepsReached(1000),
        MaxStepsReached(None, 3),
        EarlyStop(1000, 0.512, None, "val_loss", non_finite=True),
        PreemptSaved(1000),
        CheckpointSaved("/r/checkpoints/p--validation_loss=0.983-step=400-consumed_samples=3200.0.ckpt", 400, 0.9833, "validation_loss"),
        CheckpointSaved("/r/checkpoints/p--step=500.ckpt", 500),
        Resumed("/r/checkpoints/p--validation_loss=0.622-step=1500-consumed_samples=12000.0-last.ckpt"),
    ]


def test_restoring_before_the_end_of_fit_is_a_resume_after_it_the_best():
    resume = "Restoring states from the checkpoint path at /r/checkpoints/p--validation_loss=0.5-step=10-consumed_samples=80.0-last.ckpt\n"
    best = "Restoring states from the checkpoint path at /r/checkpoints/p--validation_loss=0.4-step=8-consumed_samples=64.0.ckpt\n"
    events = parse_job_log(resume + bar(20) + "\n`Trainer.fit` stopped: `max_steps=20` reached.\n" + best)
    assert isinstance(events[0], Resumed)
    assert isinstance(events[-1], BestRestored)


def test_ansi_codes_and_rank_prefixes_are_removed_from_failure_lines():
    events = parse_job_log("\x1b[31m[rank3]: torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.\x1b[0m\n")
    assert events == [Failure(EndCause.GPU_OOM, "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.")]
    assert clean_line("0: [rank: 1] Monitored metric") == "Monitored metric"


def test_newer_nemo_progress_format_without_brackets():
    events = parse_job_log("\rEpoch 0: 1200/5000, v_num=3, reduced_train_loss=0.731, global_step=1199.0, consumed_samples=9600.0, val_loss=0.8\n")
    assert Progress(1200, 5000, 0.731, 0.8, None, 9600.0, None, 0) in events


def test_one_start_up_gives_one_attempt_and_a_restart_gives_another():
    start = (
        f"{ATTEMPT_MARKER} 1 start job=1 restart=0\n"
        "[2024-06-06 16:05:03,118] torch.distributed.run: [WARNING] Setting OMP_NUM_THREADS environment variable for each process to be 1 in default\n"
        "[NeMo I 2024-06-06 16:05:12 megatron_gpt_finetuning:56] \n    \n    ************** Experiment configuration ***********\n"
        "Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/4\n"
        "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/4\n"
    )
    one = parse_job_log(start + bar(10) + "\n")
    assert sum(isinstance(e, AttemptStarted) for e in one) == 1
    two = parse_job_log(start + bar(10) + "\n" + start.replace("restart=0", "restart=1") + bar(12) + "\n")
    attempts = split_attempts(two)
    assert len(attempts) == 2
    assert [e.step for e in attempts[0] if isinstance(e, Progress)] == [10]
    assert [e.step for e in attempts[1] if isinstance(e, Progress)] == [12]


def test_progress_is_sampled_through_a_long_log():
    text = "".join(bar(n, loss=f"{1 / n:.3g}") for n in range(1, 3001)) + "\n"
    events = parse_job_log(text, sample_bytes=16384)
    steps = [e.step for e in events if isinstance(e, Progress)]
    assert len(steps) >= len(text.encode()) // 16384
    assert steps == sorted(steps) and steps[-1] == 3000
    assert parse_job_log(text, sample_bytes=0) == [events[-1]]


def test_progress_property_sees_the_update_still_waiting_for_its_terminator():
    parser = JobLogParser()
    parser.feed((bar(5) + bar(6)).encode())
    assert parser.progress.step == 6


def _all_fixture_logs():
    return sorted(p for p in FIXTURES.glob("nemo_*/job.*"))


def _synthetic_log() -> bytes:
    rng = random.Random(3)
    parts = []
    val = None
    for n in range(1, 2500):
        parts.append(bar(n, loss=f"{rng.random():.3g}", val=val))
        if n % 200 == 0:
            val = f"{rng.random():.3g}"
            parts.append("\rValidation DataLoader 0: 100%|██████████| 70/70 [00:09<00:00,  7.14it/s]\x1b[A")
            parts.append(bar(n, val=val))
            parts.append(f"[rank: 1] Monitored metric val_loss did not improve in the last {n // 200} records. Best score: 0.074. Signaling Trainer to stop.\n")
            parts.append(f"Epoch 0, global step {n}: 'validation_loss' reached {float(val):.5f} (best 0.1), saving model to '/c/p--validation_loss={float(val):.3f}-step={n}.ckpt' as top 1\n")
        if n % 777 == 0:
            parts.append("\nslurmstepd: error: *** JOB 1 ON n CANCELLED AT 2024-06-07T12:00:05 DUE TO TIME LIMIT ***\n")
    return "".join(parts).encode()


@pytest.mark.parametrize("source", _all_fixture_logs() + ["synthetic"], ids=lambda p: p if isinstance(p, str) else f"{p.parent.name}/{p.name}")
def test_incremental_feed_equals_whole_parse_for_any_chunk_boundaries(source):
    data = _synthetic_log() if source == "synthetic" else source.read_bytes()
    sample = 4096  # small, so sampling boundaries fall inside chunks too
    parser = JobLogParser(sample_bytes=sample)
    whole = parser.feed(data) + parser.finish()
    assert whole, "the log gave no events"
    rng = random.Random(hash(str(source)) & 0xFFFF)
    for _ in range(25):
        cuts = sorted(rng.sample(range(1, len(data)), k=min(len(data) - 1, rng.randint(1, 40))))
        if rng.random() < 0.3:  # also tiny chunks around a cut
            c = rng.randrange(1, len(data) - 8)
            cuts = sorted(set(cuts) | {c, c + 1, c + 2, c + 5})
        parser = JobLogParser(sample_bytes=sample)
        events = []
        prev = 0
        for cut in cuts + [len(data)]:
            events += parser.feed(data[prev:cut])
            prev = cut
        events += parser.finish()
        assert events == whole


def test_state_saved_mid_stream_resumes_to_the_same_events():
    data = _synthetic_log()
    parser = JobLogParser(sample_bytes=4096)
    whole = parser.feed(data) + parser.finish()
    first = JobLogParser(sample_bytes=4096)
    mid = len(data) // 2 + 13
    events = first.feed(data[:mid])
    state = json.loads(json.dumps(first.snapshot()))
    resumed = JobLogParser.from_snapshot(state)
    assert resumed.offset == mid
    events += resumed.feed(data[resumed.offset :]) + resumed.finish()
    assert events == whole


def test_feed_file_reads_only_new_bytes_and_restarts_on_a_replaced_file(tmp_path):
    log = tmp_path / "job.err"
    log.write_text(bar(1) + bar(2) + "\n")
    parser = JobLogParser()
    parser.feed_file(log)
    assert parser.offset == log.stat().st_size and parser.progress.step == 2
    with open(log, "a") as f:
        f.write(bar(3) + "\nRuntimeError: CUDA out of memory. Tried to allocate 2 MiB\n")
    new = parser.feed_file(log)
    assert [type(e) for e in new] == [Progress, Failure]
    log.write_text(bar(1) + "\n")  # Slurm restarted the output file
    parser.feed_file(log)
    assert parser.offset == log.stat().st_size and parser.progress.step == 1


def test_log_tail_shows_the_last_redraw_of_each_line_without_ansi(tmp_path):
    log = tmp_path / "job.err"
    log.write_text("start\n" + bar(1) + bar(2) + "\x1b[A" + bar(3) + "\n\x1b[31mboom\x1b[0m\n\n")
    assert log_tail(log, lines=2) == BAR.format(n=3, loss="0.0252", gs=2, cs=48, val="") + "\nboom"
    assert log_tail(tmp_path / "missing.txt") == ""


def test_path_and_text_sources_parse_the_same(tmp_path):
    log = tmp_path / "job.err"
    log.write_text(TUTORIAL)
    assert parse_job_log(log) == parse_job_log(str(log)) == parse_job_log(TUTORIAL) == parse_job_log(TUTORIAL.encode())


def test_a_sample_just_after_an_update_starts_takes_that_update():
    text = (bar(1) + bar(2) + bar(3) + "\n").encode()
    start_of_2 = text.index(b"Epoch", text.index(b"Epoch") + 1)
    for delta in (1, 3, 5, 6):
        steps = [e.step for e in parse_job_log(text, sample_bytes=start_of_2 + delta) if isinstance(e, Progress)]
        assert steps[0] == 2, delta
