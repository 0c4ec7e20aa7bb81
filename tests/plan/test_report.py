"""The report: the JSON interface is stable and complete; the text names the best overrides."""

from __future__ import annotations

import json

from hpc_ft.plan import COMPONENTS, plan, to_dict, to_json, to_text

TOP_KEYS = [
    "schema", "ok", "fits", "memory_fits", "per_gpu_gib", "capacity_gib", "headroom_gib", "margin_gib",
    "headroom_fraction", "device", "backend", "model", "stage", "layout", "breakdown", "reason",
    "notes", "violations", "warnings", "alternatives", "best", "levers",
]


def test_same_input_gives_byte_identical_json(reference):
    assert to_json(plan(reference)) == to_json(plan(reference))
    one = reference.with_(devices=1, tp=1)
    assert to_json(plan(one)) == to_json(plan(one))


def test_json_keys_present_and_in_order(reference):
    d = json.loads(to_json(plan(reference)))
    assert list(d) == TOP_KEYS
    assert list(d["breakdown"]) == list(COMPONENTS)
    assert list(d["layout"]) == ["tp", "pp", "dp", "mbs", "gbs", "micro_batches", "world_size", "seq_len",
                               "packed_sequence"]
    for alt in d["alternatives"]:
        assert list(alt) == ["tp", "pp", "mbs", "dp", "ok", "fits", "memory_fits", "per_gpu_gib", "reason"]
    assert d["schema"] == "hpc-ft.plan/1"
    assert d["fits"] is True and d["ok"] is True
    assert d["best"]["overrides"].startswith("model.tensor_model_parallel_size=4")
    (warning,) = d["warnings"]
    assert list(warning) == ["severity", "key", "value", "rule", "fix"]


def test_json_numbers_are_rounded_to_three_decimals(reference):
    d = to_dict(plan(reference))
    numbers = [d["per_gpu_gib"], d["capacity_gib"], d["headroom_gib"], *d["breakdown"].values()]
    numbers += [a["per_gpu_gib"] for a in d["alternatives"]]
    assert all(round(x, 3) == x for x in numbers)
    assert d["capacity_gib"] == 15.781


def test_json_for_a_failing_request_says_why(reference):
    d = to_dict(plan(reference.with_(devices=1, tp=1)))
    assert d["fits"] is False and d["ok"] is False
    assert d["reason"].startswith("base weights (fp32")
    assert d["best"] is None
    assert any(lv["ok"] for lv in d["levers"])


def test_text_has_breakdown_verdict_and_best_overrides(reference):
    text = to_text(plan(reference.with_(mbs=1)))
    assert "base weights" in text and "activations" in text
    assert "Verdict: FITS" in text
    assert "Best feasible: model.tensor_model_parallel_size=4 model.pipeline_model_parallel_size=1 model.micro_batch_size=4" in text
    bad = to_text(plan(reference.with_(devices=1, tp=1)))
    assert "Verdict: DOES NOT FIT - base weights (fp32, model.megatron_amp_O2=False) alone need 25.10 GiB" in bad
    assert "No layout of this job fits on these GPUs." in bad
    assert "trainer.devices=4 model.tensor_model_parallel_size=4" in bad


def test_invalid_values_give_a_result_without_estimate(reference):
    result = plan(reference.with_(precision="fp8"))
    assert result.estimate is None and not result.ok
    assert "trainer.precision=fp8" in result.reason
    assert json.loads(to_json(result))["breakdown"] == {name: 0.0 for name in COMPONENTS}
    assert "invalid request" in to_text(result)
