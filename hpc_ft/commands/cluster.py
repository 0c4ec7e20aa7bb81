"""CLI: cluster check (a profile against the reachable Slurm) and cluster list (shipped and user profiles)."""

from __future__ import annotations

import json
import sys


OK, FAIL, SKIP, WARN = "ok", "fail", "skip", "warn"
SLURM_TIMEOUT_S = 30


class Check:
    """One line of the checklist: status is ok | fail | skip | warn (a warning never fails the check)."""

    __slots__ = ("name", "status", "detail")

    def __init__(self, name: str, status: str, detail: str) -> None:
        self.name, self.status, self.detail = name, status, detail

    def as_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "detail": self.detail}


def add_commands(sub) -> None:
    p = sub.add_parser("cluster", help="cluster profiles: check one against Slurm, list them")
    csub = p.add_subparsers(dest="cluster_command", metavar="SUBCOMMAND")
    csub.required = True

    c = csub.add_parser("check", help="validate the composed cluster profile against the reachable Slurm "
                                      "(exit 0 all ok, 1 a check failed, 2 bad input)")
    c.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                   help="Hydra overrides, e.g. cluster=nig cluster.partition=gpu container.image=~/nemo_24.03.sif")
    c.add_argument("--json", action="store_true")
    c.add_argument("--probe", dest="probe", action="store_true", default=True,
                   help="(the default) submit tiny probe jobs under this profile's rules: what the node finds (the "
                        "job's interpreter, torch, the container runtime) and, when cluster.nodes > 1, whether "
                        "cluster.nodes nodes reach the rendezvous host; waits for them to run")
    c.add_argument("--no-probe", dest="probe", action="store_false",
                   help="check the profile against Slurm without submitting any job")
    c.add_argument("--probe-timeout", type=int, default=300, metavar="S", help="seconds to wait for the probe job")
    c.set_defaults(func=cmd_check)

    ls = csub.add_parser("list", help="the cluster profiles: shipped ones and the user's/site's own")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)


# ----------------------------------------------------------------------------- slurm queries


def _run(argv: list[str]):
    """(returncode, stdout, stderr) of a Slurm client command; never raises for a failing command."""
    from hpc_ft.executors.slurm import call

    return call(argv, timeout=SLURM_TIMEOUT_S, retries=1)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no message)"


def parse_partitions(text: str) -> tuple[list[str], str | None]:
    """`sinfo -h -o %P` output -> (names, the default one marked with '*')."""
    names, default = [], None
    for line in text.split():
        name = line.strip()
        if not name:
            continue
        if name.endswith("*"):
            name = name[:-1]
            default = name
        if name not in names:
            names.append(name)
    return names, default


def parse_scontrol(text: str) -> dict:
    """`scontrol show partition P -o` (one line of Key=Value) -> dict."""
    out = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep:
            out[key] = value
    return out


def gpu_count(gres: str) -> int:
    """GPUs in one node's gres string: 'gpu:4', 'gpu:v100:4(S:0-1)', 'gpu:a100:2,gpu:v100:2', '(null)' -> N."""
    import re

    total = 0
    for item in gres.split(","):
        item = re.sub(r"\(.*?\)", "", item.strip())
        parts = item.split(":")
        if parts[0] != "gpu":
            continue
        if len(parts) == 1:
            total += 1
            continue
        last = parts[-1]
        m = re.match(r"^(\d+)", last)
        total += int(m.group(1)) if m else 1
    return total


def _time_text(minutes: float) -> str:
    m = int(round(minutes))
    d, rem = divmod(m, 1440)
    h, mi = divmod(rem, 60)
    return f"{d}-{h:02d}:{mi:02d}:00" if d else f"{h:02d}:{mi:02d}:00"


# ----------------------------------------------------------------------------- checks


def _check_binaries(checks: list[Check]) -> bool:
    import os
    import shutil

    from hpc_ft.executors.slurm import CLIENT_TOOLS as tools

    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        checks.append(Check("commands", FAIL, f"{', '.join(missing)} not on PATH: run this on a login node of the "
                                              "cluster (or load the Slurm module)"))
        return False
    where = sorted({os.path.dirname(shutil.which(t)) for t in tools})
    checks.append(Check("commands", OK, f"{', '.join(tools)} in {', '.join(where)}"))
    return True


def _check_partition(spec, checks: list[Check]) -> str | None:
    """The partition jobs of this profile land in (checked to exist and be up), or None."""
    from hpc_ft.errors import did_you_mean

    c = spec.cluster
    from hpc_ft.executors import slurm  # lazily: `hpc-ft train` builds this parser too

    rc, out, err = slurm.partitions()
    if rc != 0:
        checks.append(Check("reachable", FAIL, f"sinfo failed (exit {rc}): {_last_line(err or out)}; is slurmctld up? "
                                               "(`scontrol ping`)"))
        return None
    names, default = parse_partitions(out)
    checks.append(Check("reachable", OK, "sinfo answers; partitions: " + ", ".join(n + ("*" if n == default else "") for n in names)))
    if c.partition:
        wanted = str(c.partition)
        missing = [p for p in wanted.split(",") if p not in names]
        if missing:
            checks.append(Check("partition", FAIL,
                                f"cluster.partition={wanted}: no partition '{missing[0]}' on this cluster."
                                f"{did_you_mean(missing[0], names)} Available: {', '.join(names) or '(none)'}"))
            return None
        part = wanted.split(",")[0]
        how = f"cluster.partition={wanted}"
    else:
        if default is None:
            checks.append(Check("partition", FAIL, "cluster.partition is unset and this cluster has no default "
                                                   f"partition; set cluster.partition to one of {', '.join(names)}"))
            return None
        part = default
        how = f"cluster.partition unset: the default partition '{default}'"
    from hpc_ft.executors import slurm  # lazily: `hpc-ft train` builds this parser too

    rc, out, err = slurm.partition(part)
    info = parse_scontrol(out) if rc == 0 else {}
    state = info.get("State", "?")
    if rc != 0:
        checks.append(Check("partition", FAIL, f"{how}: scontrol show partition failed: {_last_line(err or out)}"))
        return None
    if state != "UP":
        checks.append(Check("partition", FAIL, f"{how} is {state}, not UP: jobs would pend; ask the admins or pick another"))
        return part
    checks.append(Check("partition", OK, f"{how} (State=UP, nodes {info.get('Nodes', '?')})"))
    _check_time(spec, part, info, checks)
    return part


def _check_time(spec, part: str, info: dict, checks: list[Check]) -> None:
    from hpc_ft.submit.launch import timeout_minutes

    want = timeout_minutes(spec.cluster.time)  # a bad value is a UserError (exit 2)
    max_time = info.get("MaxTime", "UNLIMITED")
    if max_time in ("UNLIMITED", "INFINITE", ""):
        checks.append(Check("time", OK, f"cluster.time={spec.cluster.time} (partition {part}: MaxTime={max_time})"))
        return
    try:
        limit = timeout_minutes(max_time)
    except Exception:  # noqa: BLE001 - an unexpected format is reported, not fatal
        checks.append(Check("time", WARN, f"partition {part}: MaxTime={max_time} not understood; not compared"))
        return
    if want > limit:
        checks.append(Check("time", FAIL, f"cluster.time={spec.cluster.time} is over partition {part}'s "
                                          f"MaxTime={max_time}; set cluster.time={_time_text(limit)} or less"))
    else:
        checks.append(Check("time", OK, f"cluster.time={spec.cluster.time} <= MaxTime={max_time} of {part}"))


def _gpu_request(spec) -> tuple[int, str | None]:
    g = spec.cluster.gpu
    n = int(g.per_node)
    if g.request == "none" or n <= 0:
        return 0, None
    return n, (f"--gres=gpu:{n}" if g.request == "gres" else f"--gpus-per-node={n}")


def _check_gpus(spec, part: str | None, checks: list[Check]) -> None:
    n, option = _gpu_request(spec)
    if option is None:
        checks.append(Check("gpus", SKIP, f"no GPU request (cluster.gpu.request={spec.cluster.gpu.request}, "
                                          f"per_node={spec.cluster.gpu.per_node})"))
        return
    if part is None:
        checks.append(Check("gpus", SKIP, "no usable partition to look at"))
        return
    from hpc_ft.executors import slurm  # lazily: `hpc-ft train` builds this parser too

    rc, out, err = slurm.partition_gres(part)
    if rc != 0:
        checks.append(Check("gpus", FAIL, f"sinfo -p {part} failed: {_last_line(err or out)}"))
        return
    best_node, best = None, 0
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        count = gpu_count(fields[1])
        if count > best:
            best_node, best = fields[0], count
    if best >= n:
        checks.append(Check("gpus", OK, f"{option}: node {best_node} of {part} has {best} GPUs"))
    elif best == 0:
        checks.append(Check("gpus", FAIL, f"{option}: no node of partition {part} has GPUs (sinfo %G shows none); "
                                          "pick a GPU partition (cluster.partition) or cluster.gpu.request=none"))
    else:
        checks.append(Check("gpus", FAIL, f"{option}: the largest node of {part} ({best_node}) has {best} GPUs; "
                                          f"set cluster.gpu.per_node={best} or pick another partition"))


def render_check_script(spec, folder):
    """A trivial job (one `true` step) rendered from sbatch.j2 for this profile, written to folder/check.sbatch."""
    from pathlib import Path

    from hpc_ft.render import Step, render_job_script
    from hpc_ft.render.render import sbatch_options

    n, _ = _gpu_request(spec)
    folder = Path(folder)
    sbatch = sbatch_options(spec, job_name="hpcft.cluster-check", output=str(folder / "check.out"),
                            nodes=int(spec.cluster.nodes), gpus_per_node=n, comment="hpc-ft:cluster-check")
    script = render_job_script(spec, run_dir=str(folder), run_id="cluster-check", steps=[Step("check", ["true"])],
                               sbatch=sbatch, env={}, description="cluster check (sbatch --test-only)")
    path = folder / "check.sbatch"
    path.write_text(script.text, encoding="utf-8")
    return path


def _check_test_only(spec, checks: list[Check]) -> None:
    import tempfile

    from hpc_ft.errors import UserError
    from hpc_ft.executors.slurm import test_only

    with tempfile.TemporaryDirectory(prefix="hpc-ft-cluster-check-") as tmp:
        path = render_check_script(spec, tmp)
        try:
            test_only(path)
        except UserError as exc:
            checks.append(Check("test-only", FAIL, str(exc)))
            return
    _, option = _gpu_request(spec)
    checks.append(Check("test-only", OK, "sbatch --test-only accepted a job rendered for this profile"
                                         + (f" ({option})" if option else "")))


def _check_container(spec, checks: list[Check]) -> None:
    from hpc_ft.containers.runtime import check_image, get_runtime, runtime_binary
    from hpc_ft.errors import UserError

    runtime = spec.cluster.container_runtime
    rt = get_runtime(runtime, "cluster.container_runtime")
    if rt.binary is None:
        checks.append(Check("container", SKIP, "cluster.container_runtime=none: jobs run without a container"))
        return
    path = runtime_binary(runtime)
    if path:
        checks.append(Check("runtime", OK, f"{rt.binary}: {path}"))
    else:
        checks.append(Check("runtime", WARN, f"{rt.binary} is not on PATH here; jobs need it on the compute nodes "
                                             "(add its module to cluster.modules if the site has one)"))
    try:
        image = check_image(spec.container.image)
    except UserError as exc:
        checks.append(Check("image", FAIL, str(exc)))
        return
    checks.append(Check("image", OK, f"container.image={image} is readable"))


def _check_modules(spec, checks: list[Check]) -> None:
    mods = [str(m) for m in spec.cluster.modules]
    if not mods:
        checks.append(Check("modules", SKIP, "cluster.modules is empty"))
        return
    rc, out, err = _run(["bash", "-lc", "type module >/dev/null 2>&1"])
    if rc != 0:
        checks.append(Check("modules", FAIL, f"cluster.modules={mods} but the `module` command is not available "
                                             "in a login shell here; drop cluster.modules or use the site's environment"))
        return
    missing = []
    for m in mods:
        q = m.replace("'", "'\\''")
        rc, out, err = _run(["bash", "-lc", f"module is-avail '{q}'"])
        if rc != 0:
            missing.append(m)
    if missing:
        checks.append(Check("modules", FAIL, f"not available to `module load`: {', '.join(missing)} "
                                             "(see `module avail`)"))
    else:
        checks.append(Check("modules", OK, f"module command present; available: {', '.join(mods)}"))


def _check_multinode(spec, part: str | None, probe: bool, probe_timeout: int, checks: list[Check]) -> None:
    from hpc_ft.commands.cluster_nodes import check_nodes, check_probe

    checks.extend(Check(*t) for t in check_nodes(spec, part))
    if not probe:
        checks.append(Check("rendezvous", SKIP, f"--no-probe: no {spec.cluster.nodes}-node job submitted to check "
                                                "that the nodes reach the rendezvous host"))
    elif checks[-1].status == OK:
        checks.extend(Check(*t) for t in check_probe(spec, probe_timeout))


def _check_node_environment(spec, probe: bool, probe_timeout: int, checks: list[Check]) -> None:
    from hpc_ft.commands.cluster_probe import check_node_environment

    if not probe:
        checks.append(Check("node-env", SKIP, "--no-probe: no probe job submitted (interpreter, torch and container "
                                              "runtime on the node unchecked)"))
    elif checks[-1].status == OK:
        checks.extend(Check(*t) for t in check_node_environment(spec, probe_timeout))


def run_checks(spec, probe: bool = False, probe_timeout: int = 300) -> list[Check]:
    checks: list[Check] = []
    c = spec.cluster
    from hpc_ft.executors import get_executor

    if not get_executor(spec).queues_jobs:
        checks.append(Check("slurm", SKIP, f"cluster={c.name} uses executor={c.executor}: jobs run on this machine"))
    elif _check_binaries(checks):
        part = _check_partition(spec, checks)
        _check_gpus(spec, part, checks)
        _check_test_only(spec, checks)
        _check_node_environment(spec, probe, probe_timeout, checks)
        if int(c.nodes) > 1:
            _check_multinode(spec, part, probe, probe_timeout, checks)
    _check_container(spec, checks)
    _check_modules(spec, checks)
    return checks


_MARK = {OK: "ok", FAIL: "FAIL", SKIP: "skip", WARN: "warn"}


def cmd_check(args) -> int:
    from hpc_ft.compose import compose_job

    spec = compose_job(args.overrides)
    c = spec.cluster
    checks = run_checks(spec, probe=args.probe, probe_timeout=args.probe_timeout)
    failed = [ch for ch in checks if ch.status == FAIL]
    if args.json:
        print(json.dumps({"cluster": c.name, "ok": not failed, "checks": [ch.as_dict() for ch in checks]}, indent=2))
        return 1 if failed else 0
    print(f"cluster {c.name} (executor {c.executor}, partition {c.partition or '(default)'}, "
          f"runtime {c.container_runtime})")
    for ch in checks:
        print(f"  [{_MARK[ch.status]:<4}] {ch.name:<10} {ch.detail}")
    if failed:
        print(f"{len(failed)} check(s) failed: {', '.join(ch.name for ch in failed)}")
        return 1
    print("all checks passed")
    return 0


# ----------------------------------------------------------------------------- list


def profiles() -> list[dict]:
    """Every cluster profile: the user's/site's own (conf dir) first in precedence over shipped ones of the same name."""
    import yaml

    from hpc_ft.compose.compose import conf_dir, user_conf_dir

    found: dict = {}
    udir = user_conf_dir()
    roots = [("shipped", conf_dir())] + ([("user", udir)] if udir and udir.is_dir() else [])
    for source, root in roots:  # the user's profile replaces a shipped one of the same name
        folder = root / "cluster"
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.yaml")):
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError) as exc:
                data = {"error": str(exc).splitlines()[0]}
            if not isinstance(data, dict):
                data = {"error": "not a mapping"}
            gpu = data.get("gpu") or {}
            row = {
                "name": path.stem, "source": source, "path": str(path),
                "overrides_shipped": source == "user" and path.stem in found,
                "executor": data.get("executor", "local"), "partition": data.get("partition"),
                "gpu": f"{gpu.get('per_node', 0)}x {gpu.get('model', 'cpu')} ({gpu.get('request', 'gres')})",
                "container_runtime": data.get("container_runtime", "none"),
            }
            if "error" in data:
                row["error"] = data["error"]
            found[path.stem] = row
    return [found[k] for k in sorted(found)]


def cmd_list(args) -> int:
    from hpc_ft.compose.compose import USER_CONF_ENV, user_conf_dir

    rows = profiles()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [("NAME", "EXECUTOR", "PARTITION", "GPUS", "RUNTIME", "FROM")]
    for r in rows:
        src = r["path"] + (" (replaces the shipped one)" if r["overrides_shipped"] else "")
        if "error" in r:
            src += f"  [unreadable: {r['error']}]"
        table.append((r["name"], str(r["executor"]), str(r["partition"] or "(default)"), r["gpu"],
                      str(r["container_runtime"]), src))
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[5])
    udir = user_conf_dir()
    where = f"{udir}/cluster/NAME.yaml" if udir else f"${USER_CONF_ENV}/cluster/NAME.yaml or ~/.config/hpc-ft/conf/cluster/NAME.yaml"
    print(f"your own profiles go in {where} (same keys as the shipped ones; a name that is shipped too replaces "
          "the shipped one); use one with cluster=NAME", file=sys.stderr)
    return 0
