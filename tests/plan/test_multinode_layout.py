"""The planner's multi-node view: tensor parallel inside a node, data parallel across nodes."""

from __future__ import annotations

from hpc_ft.plan import plan
from hpc_ft.plan.gpus import get_gpu
from hpc_ft.plan.search import search

V100 = get_gpu("V100-16GB")


def test_a_layout_whose_tp_spans_nodes_is_refused_and_the_search_keeps_tp_inside_a_node(reference):
    two_nodes = reference.with_(num_nodes=2, devices=4, tp=8, gbs=32)
    result = plan(two_nodes, alternatives=True, suggest=True)
    assert not result.ok and "spans nodes" in result.reason
    ranked = {(a.tp, a.pp, a.mbs): a for a in search(two_nodes, V100)}
    assert not ranked[(8, 1, 4)].ok and ranked[(8, 1, 4)].cross_node_tp and "spans nodes" in ranked[(8, 1, 4)].reason
    runnable = [a for a in ranked.values() if a.ok]
    assert runnable and all(a.tp <= 4 for a in runnable)
    best = result.best
    assert best is not None and best.tp == 4 and best.dp == 2  # TP 4 in each node, 2 data-parallel replicas
