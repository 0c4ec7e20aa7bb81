"""Test helpers for the safety tests: Hydra quoting, probe programs that record their argv, running the CLI."""

from __future__ import annotations

import functools
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[2]

# Values that a naive script would split, expand, execute or mangle. `${` is left out: in a Hydra
# override it is an OmegaConf interpolation (config semantics, not shell). PWNED marks a side effect.
HOSTILE = [
    "plain",
    "with space",
    "  leading and trailing  ",
    "it's",
    'say "hi"',
    "$(touch PWNED_dollar)",
    "`touch PWNED_backtick`",
    "a; touch PWNED_semicolon",
    "a && touch PWNED_and | cat > PWNED_pipe",
    "$HOME $$ $1 $@ $*",
    "line1\nline2",
    "crlf\r\nline",
    "tab\there",
    "back\\slash \\n is not a newline",
    "trailing backslash\\",
    "* ? [a-z] ~ {a,b}",
    "日本語 ü é",
    "-n",
    "",
    "%j %x %% 100%",
    "#not a comment",
    "!history !!",
    "\x1b[31mescape\x1b[0m",
    "quote'\"'\"mix",
]

PROBE = '''#!{python}
"""Probe: records how it was called (argv, cwd, chosen env values, sha256 of secrets) as one JSON line."""
import hashlib, json, os, sys
rec = {{"prog": os.path.basename(sys.argv[0]), "argv": sys.argv[1:], "cwd": os.getcwd(), "env": {{}}, "secrets": {{}}}}
for name in filter(None, os.environ.get("HPCFT_PROBE_ENV", "").split(",")):
    rec["env"][name] = os.environ.get(name)
for name in filter(None, os.environ.get("HPCFT_PROBE_SECRETS", "").split(",")):
    value = os.environ.get(name)
    digest = None if value is None else hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()
    rec["secrets"][name] = digest
    print("probe: %s set=%s sha256=%s" % (name, value is not None, digest), flush=True)
with open(os.environ["HPCFT_PROBE_LOG"], "a", encoding="utf-8") as handle:
    handle.write(json.dumps(rec) + "\\n")
sys.exit(int(os.environ.get("HPCFT_PROBE_RC", "0")))
'''


def hydra_quote(value: str) -> str:
    """A Hydra override value that parses back to exactly `value` (single-quoted).

    Hydra only treats backslashes as escapes before a quote or at the end of a quoted string.
    """
    out = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    out = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, out)
    return "'" + out + "'"


def hydra_list(values: Sequence[str]) -> str:
    return "[" + ",".join(hydra_quote(v) for v in values) + "]"


def make_probes(bin_dir: Path, names: Sequence[str]) -> Path:
    """Executables `bin_dir/NAME` for each name, all the probe above."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        p = bin_dir / name
        p.write_text(PROBE.format(python=sys.executable), encoding="utf-8")
        p.chmod(0o755)
    return bin_dir


def read_probe(log: Path) -> List[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]


def probe_env(bin_dir: Path, log: Path, env_names: Sequence[str] = (), secret_names: Sequence[str] = (),
              base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["HPCFT_PROBE_LOG"] = str(log)
    env["HPCFT_PROBE_ENV"] = ",".join(env_names)
    env["HPCFT_PROBE_SECRETS"] = ",".join(secret_names)
    env.pop("SLURM_JOB_ID", None)
    return env


def run_cli(args: Sequence[str], *, env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess: `python -m hpc_ft.cli ARGS`."""
    return subprocess.run([sys.executable, "-m", "hpc_ft.cli", *args], capture_output=True, text=True,
                          env=env, cwd=str(cwd) if cwd else None, timeout=timeout)


def run_dirs(work_dir: Path) -> List[Path]:
    return sorted(p.parent for p in work_dir.rglob("run.json"))


def wait_for_exit_code(run_dir: Path, timeout: float = 90) -> str:
    """Wait until the job's supervisor wrote state/exit_code; return its content."""
    path = run_dir / "state" / "exit_code"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            text = path.read_text().strip()
            if text:
                return text
        time.sleep(0.2)
    log = run_dir / "logs" / "job.out"
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no logs/job.out)"
    raise AssertionError(f"job in {run_dir!r} did not end within {timeout}s; log tail:\n{tail}")


FINAL_SLURM_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
                      "BOOT_FAIL", "DEADLINE")


def wait_slurm_jobs(job_ids: Sequence[str], timeout: float = 120) -> Dict[str, str]:
    """Wait until sacct reports a final state for every job; return {job id: state}."""
    deadline = time.monotonic() + timeout
    states: Dict[str, str] = {}
    while time.monotonic() < deadline:
        out = subprocess.run(["sacct", "-j", ",".join(job_ids), "-X", "-n", "-P", "-o", "JobID,State"],
                             capture_output=True, text=True, timeout=30).stdout
        states = {jid: state.split()[0] for jid, _, state in (ln.partition("|") for ln in out.splitlines()) if state}
        if all(states.get(j, "").startswith(FINAL_SLURM_STATES) for j in job_ids):
            return states
        time.sleep(0.5)
    raise AssertionError(f"Slurm jobs {list(job_ids)} did not end within {timeout}s: {states}")


def registry_rows(path: Path) -> int:
    """Rows in the registry's runs and sweeps tables (0 when the file does not exist)."""
    if not path.exists():
        return 0
    con = sqlite3.connect(str(path))
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return sum(con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("runs", "sweeps") if t in tables)
    finally:
        con.close()


def registry_files(path: Path) -> List[Path]:
    """The registry database and its WAL/SHM/journal companions, those that exist."""
    return [p for p in (path, Path(str(path) + "-wal"), Path(str(path) + "-shm"), Path(str(path) + "-journal"))
            if p.exists()]


@functools.lru_cache(maxsize=1)
def slurm_status() -> Tuple[bool, str]:
    """(usable, why not): `scripts/local-slurm.sh status` exits 0 when the node is usable and sacct works."""
    try:
        proc = subprocess.run([str(REPO / "scripts" / "local-slurm.sh"), "status"], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"local Slurm status failed: {exc}"
    if proc.returncode != 0:
        last = ((proc.stdout + proc.stderr).strip().splitlines() or ["no output"])[-1]
        return False, f"local Slurm is not usable (scripts/local-slurm.sh status: {last})"
    return True, ""


def slurm_jobs_from(cwd: Path, since: str) -> List[str]:
    """Job ids Slurm knows (queue or accounting) that were submitted from `cwd` since `since`."""
    ids = []
    out = subprocess.run(["squeue", "-h", "-o", "%i|%Z"], capture_output=True, text=True, timeout=30).stdout
    for line in out.splitlines():
        jid, _, wd = line.partition("|")
        if wd == str(cwd):
            ids.append(jid)
    out = subprocess.run(["sacct", "-a", "-X", "-n", "-P", "-S", since, "-o", "JobID,WorkDir"],
                         capture_output=True, text=True, timeout=30).stdout
    for line in out.splitlines():
        jid, _, wd = line.partition("|")
        if wd == str(cwd):
            ids.append(jid)
    return ids


def slurm_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 2))
