"""RunState from run directories built around the fixture logs (one test per end case)."""

from __future__ import annotations

import json

import pytest
from track_helpers import make_hf_run, make_nemo_run, nemo_ckpt_name

from hpc_ft.track.events import EndCause
from hpc_ft.track.run_state import RunState, state_from_run_dir

PTUNING = "megatron_gpt_peft_ptuning_tuning"
LORA = "megatron_gpt_peft_lora_tuning"


def ckdir(run, name):
    return run.resolve() / "nemo" / name / "checkpoints"


# ---- nemo ---------------------------------------------------------------------------------


def early_stopped_run(tmp_path, final_nemo=True):
    best = nemo_ckpt_name(PTUNING, 0.07349, 4016, 16)
    last = nemo_ckpt_name(PTUNING, 0.0917, 6024, 16, last=True)
    crashed = nemo_ckpt_name(PTUNING, 0.070, 5020, 16)  # better value, but only two ranks wrote it
    run = make_nemo_run(tmp_path, "nemo_early_stopped_tp4", "elyza_7b_ptuning", 4, [best, last], final_nemo, partial={crashed: [0, 1]})
    return run, best, last


def test_early_stopped_tutorial_run_tp4(tmp_path):
    run, best, last = early_stopped_run(tmp_path)
    (run / "predictions").mkdir()
    (run / "predictions" / "elyza_7b_ptuning_test_jcommonsenseqa-v1.1_inputs_preds_labels.jsonl").write_text(
        "".join(json.dumps({"input": f"q{i}", "pred": "マグロ" if i % 4 else "サバ", "label": "マグロ"}) + "\n" for i in range(8))
    )
    state = state_from_run_dir(run, "nemo", "COMPLETED", 0, job_id="81234")
    ck = ckdir(run, "elyza_7b_ptuning")
    assert state.end_cause == EndCause.EARLY_STOPPED
    assert state.early_stopped is True
    assert state.step == 6024 and state.max_steps == 10000
    assert state.best_val_loss == pytest.approx(0.07349)
    assert state.best_checkpoint == str(ck / best)
    assert state.last_checkpoint == str(ck / last)
    assert state.final_artifact == str(ck / "elyza_7b_ptuning.nemo")
    assert state.val_loss == pytest.approx(0.0917) and state.train_loss == pytest.approx(0.0589)
    assert state.step_time_s == pytest.approx(2.59)
    assert state.requeues == 0 and state.attempts == 1 and not state.requeueable
    assert state.accuracy == pytest.approx(0.75) and state.base_accuracy is None
    assert state.run_id == "run" and state.job_id == "81234" and state.state == "COMPLETED"
    assert any("step=5020" in note for note in state.notes)
    assert "Restored all states" in state.log_tail
    assert RunState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_early_stopped_without_slurm_information_still_reads_as_early_stopped(tmp_path):
    run, _, _ = early_stopped_run(tmp_path)
    assert state_from_run_dir(run, "nemo").end_cause == EndCause.EARLY_STOPPED


def test_without_the_final_nemo_an_exit_0_is_not_a_completion(tmp_path):
    run, _, _ = early_stopped_run(tmp_path, final_nemo=False)
    state = state_from_run_dir(run, "nemo", "COMPLETED", 0)
    assert state.end_cause == EndCause.ERROR
    assert "artifact" in state.end_reason
    assert state.early_stopped is True  # the log still says so


def test_max_steps_completed(tmp_path):
    best = nemo_ckpt_name(LORA, 0.9102, 600, 8)
    last = nemo_ckpt_name(LORA, 0.9251, 1000, 8, last=True)
    run = make_nemo_run(tmp_path, "nemo_max_steps", "llama2_lora_qa", 2, [best, last])
    state = state_from_run_dir(run, "nemo", "COMPLETED", 0)
    ck = ckdir(run, "llama2_lora_qa")
    assert state.end_cause == EndCause.COMPLETED
    assert (state.step, state.max_steps) == (1000, 1000)
    assert state.best_val_loss == pytest.approx(0.9102)
    assert state.best_checkpoint == str(ck / best)
    assert state.last_checkpoint == str(ck / last)
    assert state.early_stopped is False


@pytest.mark.parametrize("slurm_state", ["FAILED", None])
def test_gpu_oom(tmp_path, slurm_state):
    run = make_nemo_run(tmp_path, "nemo_gpu_oom", "elyza_7b_lora_mbs8", 4, [], final_nemo=False)
    state = state_from_run_dir(run, "nemo", slurm_state, 1)
    assert state.end_cause == EndCause.GPU_OOM
    assert state.step == 3
    assert state.best_val_loss is None and state.best_checkpoint is None and state.last_checkpoint is None
    assert state.early_stopped is False and not state.requeueable
    assert "Tried to allocate 1.95 GiB" in state.end_reason


def test_gpu_oom_older_torch_message_in_a_single_merged_log(tmp_path):
    run = make_nemo_run(tmp_path, "nemo_gpu_oom_old_torch_merged", "llama2_7b_tp1", 1, [], final_nemo=False)
    assert not (run / "logs" / "job.err").exists()
    state = state_from_run_dir(run, "nemo", "FAILED", 1)
    assert state.end_cause == EndCause.GPU_OOM  # not CONFIG_ERROR, although Hydra reported it before training
    assert state.step is None and state.best_checkpoint is None and state.early_stopped is False


@pytest.mark.parametrize("slurm_state", ["OUT_OF_MEMORY", "FAILED"])
def test_host_oom_kill(tmp_path, slurm_state):
    run = make_nemo_run(tmp_path, "nemo_host_oom", "elyza_7b_ptuning_bigdata", 4, [], final_nemo=False)
    state = state_from_run_dir(run, "nemo", slurm_state, None)
    assert state.end_cause == EndCause.HOST_OOM
    assert state.step == 250 and state.best_val_loss is None and state.best_checkpoint is None
    assert state.early_stopped is False
    assert "oom_kill" in state.end_reason


def test_nccl_watchdog_timeout(tmp_path):
    run = make_nemo_run(tmp_path, "nemo_nccl_timeout", "elyza_7b_lora_2node", 4, [], final_nemo=False)
    state = state_from_run_dir(run, "nemo", "FAILED", 1)
    assert state.end_cause == EndCause.NCCL_TIMEOUT
    assert state.step == 1757 and state.best_val_loss is None and state.best_checkpoint is None
    assert state.early_stopped is False and not state.requeueable


def test_child_failed_error_reports_the_underlying_exception(tmp_path):
    run = make_nemo_run(tmp_path, "nemo_child_failed", "llama2_lora_longctx", 2, [], final_nemo=False)
    state = state_from_run_dir(run, "nemo", "FAILED", 1)
    assert state.end_cause == EndCause.ERROR
    assert "IndexError: index 4096 is out of bounds" in state.end_reason
    assert state.step == 800 and state.best_val_loss is None and state.best_checkpoint is None
    assert state.early_stopped is False


@pytest.mark.parametrize("slurm_state", [None, "COMPLETED"])
def test_preempted_sigterm_saved_then_exit_0(tmp_path, slurm_state):
    best = nemo_ckpt_name(LORA, 0.512, 2000, 8)
    last = nemo_ckpt_name(LORA, 0.512, 2300, 8, last=True)
    run = make_nemo_run(tmp_path, "nemo_preempted", "llama2_lora_preempt", 2, [best, last], final_nemo=False)
    state = state_from_run_dir(run, "nemo", slurm_state, 0)
    ck = ckdir(run, "llama2_lora_preempt")
    assert state.end_cause == EndCause.PREEMPTED and state.requeueable
    assert state.step == 2300
    assert state.best_val_loss == pytest.approx(0.512)
    assert state.best_checkpoint == str(ck / best)
    assert state.last_checkpoint == str(ck / last)  # what the requeued job resumes from
    assert state.early_stopped is False
    assert "step 2300" in state.end_reason


@pytest.mark.parametrize("slurm_state", ["TIMEOUT", "CANCELLED", None])
def test_slurm_time_limit(tmp_path, slurm_state):
    best = nemo_ckpt_name(LORA, 0.5857, 3000, 8)
    last = nemo_ckpt_name(LORA, 0.5857, 3000, 8, last=True)
    run = make_nemo_run(tmp_path, "nemo_time_limit", "llama2_lora_long", 2, [best, last], final_nemo=False)
    state = state_from_run_dir(run, "nemo", slurm_state, None)
    ck = ckdir(run, "llama2_lora_long")
    assert state.end_cause == EndCause.TIMEOUT and state.requeueable  # the NCCL error after the kill is noise
    assert state.step == 3000
    assert state.best_val_loss == pytest.approx(0.5857)
    assert state.best_checkpoint == str(ck / best) and state.last_checkpoint == str(ck / last)
    assert state.early_stopped is False


@pytest.mark.parametrize("slurm_state, code", [("CANCELLED", None), (None, 0)])
def test_cancelled_by_the_user(tmp_path, slurm_state, code):
    run = make_nemo_run(tmp_path, "nemo_cancelled", "llama2_lora_cancel", 1, [], final_nemo=False)
    state = state_from_run_dir(run, "nemo", slurm_state, code)
    assert state.end_cause == EndCause.CANCELLED and not state.requeueable
    assert state.step == 400 and state.best_val_loss is None and state.best_checkpoint is None
    assert state.early_stopped is False


def test_hydra_config_error(tmp_path):
    run = make_nemo_run(tmp_path, "nemo_config_error", "llama2_lora_nomodel", 2, [], final_nemo=False)
    state = state_from_run_dir(run, "nemo", "FAILED", 1)
    assert state.end_cause == EndCause.CONFIG_ERROR and not state.requeueable
    assert "MissingMandatoryValue: Missing mandatory value: model.restore_from_path" in state.end_reason
    assert state.step is None and state.best_val_loss is None and state.best_checkpoint is None
    assert state.early_stopped is False


def test_preempted_requeued_and_completed_in_one_appended_log(tmp_path):
    best = nemo_ckpt_name(LORA, 0.6221, 1500, 8)
    last = nemo_ckpt_name(LORA, 0.6402, 2000, 8, last=True)
    run = make_nemo_run(tmp_path, "nemo_requeued_completed", "llama2_lora_requeue", 2, [best, last])
    state = state_from_run_dir(run, "nemo", "COMPLETED", 0)
    assert state.end_cause == EndCause.COMPLETED
    assert state.attempts == 2 and state.requeues == 1
    assert state.step == 2000
    assert state.best_val_loss == pytest.approx(0.6221)
    assert state.best_checkpoint == str(ckdir(run, "llama2_lora_requeue") / best)
    assert state.early_stopped is False
    assert state_from_run_dir(run, "nemo", "COMPLETED", 0, requeues=3).requeues == 3


def test_a_last_checkpoint_is_best_only_when_no_top_k_checkpoint_is_complete(tmp_path):
    last = nemo_ckpt_name(PTUNING, 0.0917, 6024, 16, last=True)
    best = nemo_ckpt_name(PTUNING, 0.07349, 4016, 16)
    run = make_nemo_run(tmp_path, "nemo_early_stopped_tp4", "elyza_7b_ptuning", 4, [last], partial={best: [0, 1, 2]})
    state = state_from_run_dir(run, "nemo", "COMPLETED", 0)
    assert state.best_checkpoint == str(ckdir(run, "elyza_7b_ptuning") / last)
    assert state.end_cause == EndCause.EARLY_STOPPED


def test_nemo_rank0_logs_are_used_when_the_slurm_logs_are_missing(tmp_path):
    run = make_nemo_run(tmp_path, "nemo_max_steps", "llama2_lora_qa", 2, [nemo_ckpt_name(LORA, 0.9102, 600, 8)])
    log_dir = run / "nemo" / "llama2_lora_qa"
    (log_dir / "run_0").mkdir()
    (log_dir / "run_0" / "nemo_log_globalrank-0_localrank-0.txt").write_text("[NeMo I x preemption:68] Received SIGTERM, saving checkpoint and exiting\n")
    (log_dir / "nemo_log_globalrank-0_localrank-0.txt").write_bytes((run / "logs" / "job.err").read_bytes())
    for f in (run / "logs").iterdir():
        f.unlink()
    state = state_from_run_dir(run, "nemo", "COMPLETED", 0)
    assert state.end_cause == EndCause.COMPLETED and state.attempts == 2 and state.step == 1000


def test_unknown_backend_is_rejected(tmp_path):
    with pytest.raises(ValueError):
        state_from_run_dir(tmp_path, "deepspeed")


# ---- hf -----------------------------------------------------------------------------------


def trainer_state(best: int | None, metric: float | None, step: int) -> dict:
    return {
        "global_step": step,
        "best_metric": metric,
        "best_model_checkpoint": f"runs/hf_demo/checkpoints/checkpoint-{best}" if best else None,
        "log_history": [],
    }


def test_hf_early_stopped(tmp_path):
    run = make_hf_run(tmp_path, "hf_early_stopped", {100: trainer_state(100, 0.8312, 100), 175: trainer_state(100, 0.8312, 175)})
    (run / "checkpoints" / "best").mkdir()
    state = state_from_run_dir(run, "hf", "COMPLETED", 0)
    assert state.end_cause == EndCause.EARLY_STOPPED
    assert state.step == 175 and state.max_steps == 400
    assert state.best_val_loss == pytest.approx(0.8312)
    assert state.best_checkpoint == str(run.resolve() / "checkpoints" / "checkpoint-100")
    assert state.last_checkpoint == str(run.resolve() / "checkpoints" / "checkpoint-175")
    assert state.early_stopped is True
    assert state.final_artifact == str(run.resolve() / "checkpoints" / "best")  # logged as a path in the container
    assert (state.accuracy, state.base_accuracy) == (0.35, 0.2)
    assert state.tokens_per_s is not None and state.step_time_s is not None
    assert state.backend == "hf"


def test_hf_preempted_with_a_half_written_last_line(tmp_path):
    run = make_hf_run(tmp_path, "hf_preempted", {100: trainer_state(100, 1.0412, 100), 120: trainer_state(100, 1.0412, 120), 121: None})
    state = state_from_run_dir(run, "hf", None, 0)
    assert state.end_cause == EndCause.PREEMPTED and state.requeueable
    assert state.step == 120
    assert state.last_checkpoint == str(run.resolve() / "checkpoints" / "checkpoint-120")
    assert state.best_checkpoint == str(run.resolve() / "checkpoints" / "checkpoint-100")
    assert state.best_val_loss == pytest.approx(1.0412)
    assert state.early_stopped is False


def test_hf_best_checkpoint_logged_inside_the_container_is_mapped_onto_the_run_dir(tmp_path):
    run = make_hf_run(tmp_path, "hf_requeued_completed", {s: trainer_state(40, 0.9733, s) for s in (20, 30, 40, 60)})
    events = run / "events.jsonl"
    events.write_text(events.read_text().replace('"best_checkpoint": "checkpoints/', '"best_checkpoint": "/workspace/run/checkpoints/'))
    state = state_from_run_dir(run, "hf", "COMPLETED", 0)
    assert state.best_checkpoint == str(run.resolve() / "checkpoints" / "checkpoint-40")


def test_hf_gpu_oom_from_the_slurm_log(tmp_path):
    run = make_hf_run(tmp_path, "hf_gpu_oom", {})
    state = state_from_run_dir(run, "hf", "FAILED", 1)
    assert state.end_cause == EndCause.GPU_OOM
    assert state.step == 30 and state.best_val_loss is None and state.best_checkpoint is None
    assert state.early_stopped is False


def test_hf_requeued_then_completed(tmp_path):
    run = make_hf_run(tmp_path, "hf_requeued_completed", {s: trainer_state(40 if s >= 40 else 20, 0.9733, s) for s in (20, 30, 40, 60)})
    state = state_from_run_dir(run, "hf", "COMPLETED", 0)
    assert state.end_cause == EndCause.COMPLETED
    assert state.attempts == 2 and state.requeues == 1
    assert state.step == 60
    assert state.best_val_loss == pytest.approx(0.9733)
    assert state.best_checkpoint == str(run.resolve() / "checkpoints" / "checkpoint-40")
    assert state.early_stopped is False
