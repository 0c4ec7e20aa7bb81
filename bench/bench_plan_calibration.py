"""Calibrate the planner's hf memory model: predicted vs measured peak memory of real LoRA steps.

Each point (model shape, micro-batch, sequence length, precision, options) runs in a fresh
subprocess that builds a randomly initialised Llama with transformers (no download), wraps it in
peft LoRA, and trains a few AdamW steps on random tokens.

What is compared
* CPU (no CUDA): the child's peak resident set, ``resource.getrusage(RUSAGE_SELF).ru_maxrss``,
  against the planner's total for ``gpu='cpu'`` (which includes ``HF_CPU_RUNTIME_GIB`` for the
  imported runtime). Also shown: the *model part*, measured ``peak - baseline`` (baseline =
  ru_maxrss just after importing torch/transformers/peft) against predicted ``total - runtime``.
  The runtime baseline is host-specific, so the model part is the honest test of the formulas.
* GPU (``torch.cuda.is_available()``): ``torch.cuda.max_memory_allocated()`` of a ~1B random
  Llama in bf16 against the planner's total minus its framework part (the CUDA context and
  workspaces are outside the caching allocator's statistics).

It prints a table and the mean/max absolute error. It never asserts: figures, not tests.

    python bench/bench_plan_calibration.py                 # 9 points, glibc default malloc (~6 min on 2 cores)
    python bench/bench_plan_calibration.py --malloc both   # also with MALLOC_MMAP_THRESHOLD_ fixed
    python bench/bench_plan_calibration.py --quick         # 3 points
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXED_MMAP_THRESHOLD = 1 << 20  # bytes; a fixed value also stops glibc's dynamic threshold
sys.path.insert(0, str(ROOT))

# model shapes (HF LlamaConfig keys); small enough for 2 CPU cores, tensors of realistic sizes
SMALL_MHA = dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=8, vocab_size=16000)
SMALL_GQA = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=3, num_attention_heads=12,
                 num_key_value_heads=4, vocab_size=16000)
SMALL_WIDE = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=2, num_attention_heads=16,
                  num_key_value_heads=16, vocab_size=16000)
GPU_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
              num_key_value_heads=8, vocab_size=32000)
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _point(name, shape, mbs, seq, precision="32", targets=("q_proj", "v_proj"), gc=False, attn="sdpa", r=8):
    return dict(name=name, shape=shape, mbs=mbs, seq=seq, precision=precision, targets=list(targets),
                gc=gc, attn=attn, r=r)


def cpu_points(quick: bool) -> list[dict]:
    pts = [
        _point("mha", SMALL_MHA, 1, 512),
        _point("mha", SMALL_MHA, 4, 512),
        _point("mha", SMALL_MHA, 2, 1024),
        _point("mha-all", SMALL_MHA, 4, 512, targets=ALL_LINEAR),
        _point("mha-eager", SMALL_MHA, 2, 512, attn="eager"),
        _point("mha-gc", SMALL_MHA, 2, 1024, gc=True),
        _point("mha-bf16", SMALL_MHA, 4, 512, precision="bf16"),
        _point("gqa", SMALL_GQA, 4, 512),
        _point("wide", SMALL_WIDE, 4, 512),
    ]
    return pts[:3] if quick else pts


def gpu_points(quick: bool) -> list[dict]:
    pts = [
        _point("1b", GPU_1B, 1, 1024, precision="bf16"),
        _point("1b", GPU_1B, 4, 1024, precision="bf16"),
        _point("1b", GPU_1B, 2, 2048, precision="bf16"),
        _point("1b-all", GPU_1B, 4, 1024, precision="bf16", targets=ALL_LINEAR),
        _point("1b-gc", GPU_1B, 8, 2048, precision="bf16", gc=True),
        _point("1b-eager", GPU_1B, 2, 1024, precision="bf16", attn="eager"),
    ]
    return pts[:2] if quick else pts


# ---- the child: one training run ------------------------------------------------------------
def child(spec: dict) -> dict:
    import resource

    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    def rss_gib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # KiB on Linux

    baseline = rss_gib()
    cuda = spec["device"] == "cuda"
    torch.manual_seed(0)
    if not cuda:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    cfg = transformers.LlamaConfig(**spec["shape"], max_position_embeddings=4096, tie_word_embeddings=False,
                                   attn_implementation=spec["attn"])
    bf16 = spec["precision"].startswith("bf16")
    dtype = torch.bfloat16 if bf16 else torch.float32
    device = torch.device("cuda" if cuda else "cpu")
    with torch.device(device):
        model = transformers.LlamaForCausalLM(cfg)
    model = model.to(dtype)
    if spec["gc"]:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=spec["r"], lora_alpha=16, lora_dropout=0.0,
                                             target_modules=spec["targets"], task_type="CAUSAL_LM"))
    model.train()
    after_build = rss_gib()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        static_alloc = torch.cuda.memory_allocated() / 2**30
    step_s = []
    for _ in range(spec["steps"]):
        t0 = time.perf_counter()
        ids = torch.randint(0, cfg.vocab_size, (spec["mbs"], spec["seq"]), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        step_s.append(time.perf_counter() - t0)
    out = {
        "baseline_gib": baseline,
        "after_build_gib": after_build,
        "peak_rss_gib": rss_gib(),
        "step_s": min(step_s),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if cuda:
        out["max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["static_allocated_gib"] = static_alloc
    return out


# ---- the parent: predict, run, compare ---------------------------------------------------------
def predict(spec: dict, gpu: str):
    from hpc_ft.plan import PlanRequest, estimate
    from hpc_ft.plan.arch import arch_from_hf_config

    arch = arch_from_hf_config({"model_type": "llama", **spec["shape"], "max_position_embeddings": 4096,
                                "tie_word_embeddings": False}, name=f"random-{spec['name']}")
    req = PlanRequest(
        arch=arch, backend="hf", gpu=gpu, devices=1, gpus_per_node=1, tp=1, pp=1, mbs=spec["mbs"],
        gbs=spec["mbs"], seq_len=spec["seq"], precision=spec["precision"], peft_scheme="lora",
        lora_r=spec["r"], lora_targets=tuple(spec["targets"]), optimizer="adamw_torch",
        gradient_checkpointing=spec["gc"], hf_attention=spec["attn"], cpu_memory_gib=64.0,
        cpu_fixed_mmap_threshold=spec.get("malloc") == "fixed",
        hf_weights_dtype="bf16" if spec["precision"].startswith("bf16") else "fp32",  # as the child loads it
    )
    return estimate(req)


def run_point(spec: dict) -> dict:
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if spec.get("malloc") == "fixed":
        env["MALLOC_MMAP_THRESHOLD_"] = str(FIXED_MMAP_THRESHOLD)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True, text=True, timeout=1800, env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only a few points")
    ap.add_argument("--steps", type=int, default=0,
                    help="training steps per point; default 4 with glibc's default malloc (the RSS "
                         "plateaus after ~3), 2 with a fixed mmap threshold or on a GPU")
    ap.add_argument("--malloc", choices=("default", "fixed", "both"), default="default",
                    help="CPU: glibc default, MALLOC_MMAP_THRESHOLD_ fixed, or both")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--cpu", action="store_true", help="measure on the CPU even when CUDA is available")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    try:
        import torch
        cuda = torch.cuda.is_available() and not args.cpu
    except ImportError:
        print("torch is not installed: pip install -e '.[hf]'")
        return 0
    points = gpu_points(args.quick) if cuda else cpu_points(args.quick)
    gpu_name = "H100-80GB"
    if cuda:
        props = torch.cuda.get_device_properties(0)
        name = props.name.upper()
        gpu_name = next((g for g in ("H100-80GB", "A100-80GB", "A100-40GB", "V100-32GB", "V100-16GB")
                         if g.split("-")[0] in name and abs(props.total_memory / 2**30 -
                                                              float(g.split("-")[1][:-2])) < 6), "H100-80GB")
        print(f"device: {props.name}, {props.total_memory / 2**30:.1f} GiB -> catalogue {gpu_name}")
    else:
        print(f"device: cpu ({os.cpu_count()} cores); measuring peak RSS of a fresh process per point")
    rows = []
    t_all = time.perf_counter()
    modes = ["default"] if cuda else (["default", "fixed"] if args.malloc == "both" else [args.malloc])
    points = [{**p, "malloc": m} for m in modes for p in points]
    for spec in points:
        steps = args.steps or (4 if not cuda and spec["malloc"] == "default" else 2)
        spec = {**spec, "steps": steps, "device": "cuda" if cuda else "cpu"}
        est = predict(spec, gpu_name if cuda else "cpu")
        t0 = time.perf_counter()
        m = run_point(spec)
        fw = est.breakdown["framework"]
        if cuda:
            measured, predicted = m["max_allocated_gib"], est.per_gpu_gib - fw
            measured_part, predicted_part = measured, predicted
        else:
            measured, predicted = m["peak_rss_gib"], est.per_gpu_gib
            from hpc_ft.plan.memory import HF_CPU_RUNTIME_GIB
            measured_part = m["peak_rss_gib"] - m["baseline_gib"]
            predicted_part = est.per_gpu_gib - HF_CPU_RUNTIME_GIB
        rows.append(dict(spec=spec, m=m, est=est, measured=measured, predicted=predicted,
                         measured_part=measured_part, predicted_part=predicted_part,
                         wall=time.perf_counter() - t0))
        err = (predicted - measured) / measured * 100
        errp = (predicted_part - measured_part) / measured_part * 100
        opts = "+".join(x for x in (spec["precision"], spec["attn"], "gc" if spec["gc"] else "",
                                    f"{len(spec['targets'])}tgt", "" if cuda else spec["malloc"]) if x)
        print(f"{spec['name']:<9} mbs={spec['mbs']:<2} seq={spec['seq']:<5} {opts:<26} "
              f"pred {predicted:6.3f}  meas {measured:6.3f} GiB  err {err:+6.1f}% | "
              f"part pred {predicted_part:6.3f} meas {measured_part:6.3f} err {errp:+6.1f}% | "
              f"base {m['baseline_gib']:.3f} step {m['step_s']:.2f}s", flush=True)
    if not rows:
        return 0
    def summary(sel, label):
        errs = [abs(r["predicted"] - r["measured"]) / r["measured"] * 100 for r in sel]
        errps = [abs(r["predicted_part"] - r["measured_part"]) / r["measured_part"] * 100 for r in sel]
        print(f"{label}: total mean |err| {sum(errs) / len(errs):.1f}%, max {max(errs):.1f}%"
              + ("" if cuda else f"; model part mean |err| {sum(errps) / len(errps):.1f}%, max {max(errps):.1f}%"))

    print()
    if cuda:
        summary(rows, "max_memory_allocated vs planner total - framework")
    else:
        for mode in modes:
            sel = [r for r in rows if r["spec"]["malloc"] == mode]
            summary(sel, f"peak RSS, malloc {mode}")
        bases = [r["m"]["baseline_gib"] for r in rows]
        print(f"import baseline RSS: {min(bases):.3f}-{max(bases):.3f} GiB "
              f"(planner constant HF_CPU_RUNTIME_GIB)")
    print(f"{len(rows)} points in {time.perf_counter() - t_all:.0f} s")
    print("breakdown of the last point (GiB): " +
          ", ".join(f"{k} {v:.3f}" for k, v in rows[-1]["est"].breakdown.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
