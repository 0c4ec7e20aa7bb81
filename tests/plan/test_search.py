"""Layout search: the reference choice is found and ranked sensibly; infeasible layouts say why."""

from __future__ import annotations

from hpc_ft.plan import plan
from hpc_ft.plan.gpus import get_gpu
from hpc_ft.plan.search import candidate_layouts, levers, search

V100 = get_gpu("V100-16GB")


def test_reference_choice_is_feasible_and_ranked_first(reference):
    ranked = search(reference, V100)
    best = ranked[0]
    assert (best.tp, best.pp, best.mbs) == (4, 1, 4) and best.ok
    assert best.overrides() == (
        "model.tensor_model_parallel_size=4 model.pipeline_model_parallel_size=1 model.micro_batch_size=4"
    )


def test_runnable_layouts_come_first_and_fewer_gpus_per_replica_lead(reference):
    ranked = search(reference, V100)
    oks = [a.ok for a in ranked]
    assert oks == sorted(oks, reverse=True)  # all runnable ones before the rest
    runnable = [a for a in ranked if a.ok]
    sizes = [a.tp * a.pp for a in runnable]
    assert sizes == sorted(sizes)
    # for the same TP x PP, less pipeline first; then larger micro-batches
    tp4 = [a.mbs for a in runnable if (a.tp, a.pp) == (4, 1)]
    assert tp4 == sorted(tp4, reverse=True)


def test_infeasible_layouts_carry_their_reason_with_numbers(reference):
    ranked = {(a.tp, a.pp, a.mbs): a for a in search(reference, V100)}
    tp1 = ranked[(1, 1, 4)]
    assert not tp1.ok and not tp1.fits
    assert "GiB usable" in tp1.reason and "base weights (fp32, model.megatron_amp_O2=False) alone" in tp1.reason
    too_big_mbs = ranked[(4, 1, 16)]
    assert not too_big_mbs.fits and too_big_mbs.reason.startswith("needs ")


def test_alternatives_offer_only_layouts_the_model_allows(reference, neox):
    """rinna's 22 heads: TP 4 (and 11, 22) is never offered on a 4-GPU node; every TP offered divides the heads."""
    ranked = search(reference.with_(arch=neox), V100)
    assert ranked and {a.tp for a in ranked} == {1, 2}
    assert all(neox.num_layers % a.pp == 0 for a in ranked)
    assert not any("not divisible" in a.reason for a in ranked)


def test_candidates_keep_the_batch_rule(reference):
    for tp, pp, mbs in candidate_layouts(reference):
        dp = reference.world_size // (tp * pp)
        assert reference.gbs % (mbs * dp) == 0


def test_hf_searches_micro_batches_only(reference, llama3):
    req = reference.with_(arch=llama3, backend="hf", gpu="A100-80GB", tp=1, devices=4, gbs=32,
                          precision="bf16", peft_scheme="lora", seq_len=2048, optimizer="adamw_torch")
    ranked = search(req, get_gpu("A100-80GB"))
    assert {(a.tp, a.pp) for a in ranked} == {(1, 1)}
    assert ranked[0].ok and ranked[0].dp == 4


def test_levers_for_one_v100_point_to_four_gpus(reference):
    one = reference.with_(devices=1, tp=1)
    found = levers(one, V100)
    fitting = [lv for lv in found if lv.ok]
    assert fitting and fitting[0].overrides.startswith("trainer.devices=4 model.tensor_model_parallel_size=4")
    # O2 + bf16 alone is not enough on one 16 GB card (reference §4.3)
    o2 = [lv for lv in found if "megatron_amp_O2=True" in lv.overrides]
    assert o2 and not o2[0].ok


def test_plan_offers_levers_only_when_needed(reference):
    assert plan(reference).levers == ()
    assert plan(reference.with_(devices=1, tp=1)).levers


def test_errors_no_layout_can_fix_make_every_alternative_not_ok(reference):
    ranked = search(reference.with_(precision="16", megatron_amp_O2=True), V100)
    assert ranked and not any(a.ok for a in ranked)
    assert all("fp16 training is not yet supported with O2" in a.reason for a in ranked)
