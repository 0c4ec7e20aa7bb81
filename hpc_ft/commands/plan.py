"""CLI: `hpc-ft plan [OVERRIDES] [--json]`: will it fit, and which TP x PP x micro-batch to use."""

from __future__ import annotations


def add_commands(sub) -> None:
    p = sub.add_parser("plan", help="per-GPU memory breakdown, verdict and ranked feasible layouts")
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="Hydra overrides, as for `hpc-ft train`")
    p.add_argument("--json", action="store_true", help="one JSON object (fits, per_gpu_gib, breakdown, alternatives…)")
    p.add_argument("--alternatives", type=int, default=10, help="how many alternative layouts to show")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args) -> int:
    from hpc_ft.compose import compose_job
    from hpc_ft.errors import UserError
    from hpc_ft.plan import to_json, to_text
    from hpc_ft.submit.preflight import plan_spec

    spec = compose_job(args.overrides)
    result = plan_spec(spec)
    if result is None:
        raise UserError(f"model '{spec.model.name}': no config.json to plan from. Set model.hf_config=<config.json> "
                        "(any Hugging Face model's config.json works).")
    print(to_json(result) if args.json else to_text(result, max_alternatives=args.alternatives))
    return 0 if result.ok else 1
