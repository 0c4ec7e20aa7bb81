"""How fast the planner answers: estimates per second, full plans per second, a 1,000-point sweep.

The submit side calls the planner for every point of a sweep, so one estimate should take well
under a millisecond. Prints figures; asserts nothing.

    python bench/bench_plan_speed.py
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpc_ft.plan import PlanRequest, arch_from_hf_config, estimate, plan, to_json  # noqa: E402

LLAMA2_7B = {
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
}


def rate(fn, n: int) -> tuple[float, float]:
    fn()  # warm caches
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    dt = time.perf_counter() - t0
    return n / dt, dt / n * 1e6


def main() -> int:
    arch = arch_from_hf_config(LLAMA2_7B, name="llama-2-7b")
    req = PlanRequest(arch=arch, gpu="V100-16GB", devices=4, tp=4, mbs=4, gbs=16, seq_len=256,
                      precision="bf16", peft_scheme="ptuning")
    hf = req.with_(backend="hf", gpu="A100-80GB", tp=1, peft_scheme="lora", optimizer="adamw_torch")
    rows = [
        ("estimate (nemo)", lambda: estimate(req), 20000),
        ("estimate (hf)", lambda: estimate(hf), 20000),
        ("plan, rules only (alternatives=False)", lambda: plan(req, alternatives=False), 5000),
        ("plan with layout search (fits)", lambda: plan(req), 500),
        ("plan with search + levers (1 GPU, no fit)", lambda: plan(req.with_(devices=1, tp=1)), 200),
        ("plan + to_json", lambda: to_json(plan(req)), 500),
    ]
    print(f"{'what':<44} {'per second':>12} {'us each':>10}")
    for name, fn, n in rows:
        per_s, us = rate(fn, n)
        print(f"{name:<44} {per_s:>12,.0f} {us:>10.1f}")

    grid = list(itertools.product((1, 2, 4), (1, 2, 4, 8), (256, 512, 1024, 2048), ("16", "bf16"),
                                  ("lora", "ptuning"), (None, "selective", "full"), (False, True)))[:1000]
    t0 = time.perf_counter()
    fits = 0
    for tp, mbs, seq, prec, scheme, rc, o2 in grid:
        r = plan(req.with_(tp=tp, mbs=mbs, seq_len=seq, precision=prec, peft_scheme=scheme, recompute=rc,
                           megatron_amp_O2=o2), alternatives=False, suggest=False)
        fits += r.ok
    dt = time.perf_counter() - t0
    print(f"\nsweep of {len(grid)} points (plan, no search): {dt * 1000:.0f} ms total, "
          f"{dt / len(grid) * 1e6:.0f} us/point, {fits} runnable")
    return 0


if __name__ == "__main__":
    sys.exit(main())
