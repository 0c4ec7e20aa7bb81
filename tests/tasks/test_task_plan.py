"""The planner for the classification tasks: the bert family, and heads in place of vocabulary logits."""

from __future__ import annotations

from hpc_ft.compose import compose_job
from hpc_ft.plan import plan
from hpc_ft.submit.preflight import plan_request


def _logits(spec) -> float:
    return plan(plan_request(spec)).breakdown["logits"]


def test_sequence_head_has_no_vocabulary_logits_and_token_head_scales_with_length():
    base = ["model=tiny_llama_head", "peft=lora", "model.data.train_ds.max_seq_length=128", "data.seq_len=128"]
    sft = compose_job(base)
    cls = compose_job(["task=classification", *base])
    ner = compose_job(["task=token_classification", *base])
    assert plan_request(sft).head_classes is None
    assert plan_request(cls).head_classes == 16 and not plan_request(cls).head_per_token
    assert plan_request(ner).head_per_token
    assert _logits(cls) * 100 < _logits(ner) < _logits(sft)
    pref = plan_request(compose_job(["task=preference"]))
    assert pref.head_classes == 3


def test_tiny_bert_is_planned_as_an_encoder_with_lora_on_all_linear_layers():
    spec = compose_job(["task=classification", "peft=lora", "task.labels=[neg,pos]"])
    req = plan_request(spec)
    assert req.arch.family == "bert" and req.lora_targets == ("all-linear",) and req.head_classes == 2
    result = plan(req)
    assert result.ok and result.breakdown["trainable_params"] > 0
