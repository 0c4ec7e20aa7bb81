"""cluster check --probe: a tiny job, rendered and submitted under the profile's own rules, that reports what the node finds.

The probe job is rendered from sbatch.j2 exactly as a training job of this profile would be (the same
`--export`, module loads, setup lines, PATH handling and container), and runs two steps on the node: the
container runtime's binary (when the profile uses one), then the job's interpreter, `python_exe(spec)` inside
the container when there is one, importing torch. Each step prints `hpc-ft env: ...` lines that this module
reads back. A site where the node does not inherit the login shell (`--export=NONE`, `module purge` in a
prolog) shows here what a real job would meet, before a real job waits in the queue.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import List, Tuple

MARK = "hpc-ft env:"
CheckTuple = Tuple[str, str, str]  # (name, ok|fail|skip|warn, detail)

# Runs on the node with the job's interpreter; needs nothing but the standard library to report.
PROBE_PY = (
    "import sys\n"
    f"print({MARK!r}, 'python', sys.executable, sys.version.split()[0], flush=True)\n"
    "try:\n"
    "    import torch\n"
    "except Exception as exc:\n"
    f"    print({MARK!r}, 'torch-missing', type(exc).__name__ + ':', exc, flush=True)\n"
    "    sys.exit(3)\n"
    f"print({MARK!r}, 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), flush=True)\n"
)


def _runtime_binary(spec) -> str | None:
    from hpc_ft.containers.runtime import get_runtime

    if not spec.container.image:
        return None
    return get_runtime(spec.cluster.container_runtime, "cluster.container_runtime").binary


def render_env_probe(spec, folder: Path) -> Path:
    """folder/env-probe.sbatch: one node, the profile's rules, the runtime check then the interpreter + torch."""
    from hpc_ft.backends.launch import in_container, python_exe
    from hpc_ft.render import Step, render_job_script
    from hpc_ft.render.render import sbatch_options

    steps = []
    binary = _runtime_binary(spec)
    if binary:
        check = (f'p=$(command -v {binary}) && echo "{MARK} runtime $p" '
                 f'|| {{ echo "{MARK} runtime-missing {binary}"; exit 3; }}')
        steps.append(Step("runtime", ["bash", "-c", check]))
    steps.append(Step("interpreter", in_container(spec, [python_exe(spec), "-c", PROBE_PY], gpus=False)))
    sbatch = sbatch_options(spec, job_name="hpcft.cluster-env-probe", output=str(folder / "env-probe.out"), nodes=1,
                            gpus_per_node=0, time="00:05:00", comment="hpc-ft:cluster-env-probe")
    script = render_job_script(spec, run_dir=str(folder), run_id="cluster-env-probe", steps=steps, sbatch=sbatch,
                               env={}, description="cluster check: what a job of this profile finds on the node")
    path = folder / "env-probe.sbatch"
    path.write_text(script.text, encoding="utf-8")
    return path


def read_probe(out: str) -> dict:
    """The `hpc-ft env:` lines of the probe's log -> {python, torch, torch-missing, runtime, runtime-missing}."""
    found = {}
    for line in out.splitlines():
        if line.startswith(MARK):
            key, _, rest = line[len(MARK):].strip().partition(" ")
            found[key] = rest.strip()
    return found


def env_checks(found: dict, binary: str | None, job: str, rc: int, tail: str) -> List[CheckTuple]:
    """One check line each for the runtime, the interpreter and torch, from what the probe printed."""
    checks: List[CheckTuple] = []
    if binary:
        if "runtime" in found:
            checks.append(("node-runtime", "ok", f"probe job {job}: {binary} at {found['runtime']} on the node"))
        else:
            checks.append(("node-runtime", "fail", f"probe job {job}: {binary} is not on the node's PATH inside a "
                                                   "job; add its module to cluster.modules or a cluster.setup line"))
            return checks
    if "python" in found:
        checks.append(("node-python", "ok", f"probe job {job}: the job's interpreter runs there: {found['python']}"))
    else:
        checks.append(("node-python", "fail", f"probe job {job} (exit {rc}): the job's interpreter did not start on "
                                              f"the node: {tail or '(no output)'}"))
        return checks
    if "torch" in found:
        checks.append(("node-torch", "ok", f"probe job {job}: torch {found['torch']}"))
    else:
        checks.append(("node-torch", "fail", f"probe job {job}: the job's interpreter cannot import torch "
                                             f"({found.get('torch-missing', '?')}); install the hf extra into that "
                                             "environment (or use a container that has torch)"))
    return checks


def check_node_environment(spec, timeout_s: int) -> List[CheckTuple]:
    """Submit the probe job (sbatch --wait) and report what the node found."""
    from hpc_ft.executors.slurm import submit_and_wait

    with tempfile.TemporaryDirectory(prefix="hpc-ft-env-probe-", dir=os.path.expanduser("~")) as tmp:
        folder = Path(tmp)
        path = render_env_probe(spec, folder)
        rc, stdout, stderr = submit_and_wait(path, timeout_s)
        if rc == 124:
            return [("node-env", "fail", f"the probe job did not end within {timeout_s} s (still pending? see "
                                         "squeue); raise --probe-timeout")]
        job = stdout.strip().split(";")[0] or "?"
        out = (folder / "env-probe.out").read_text(errors="replace") if (folder / "env-probe.out").exists() else ""
    tail = " | ".join(ln.strip() for ln in (out or stderr).strip().splitlines()[-3:])
    return env_checks(read_probe(out), _runtime_binary(spec), job, rc, tail)
