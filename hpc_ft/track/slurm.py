"""Slurm's view of jobs: sacct (accounting) first, squeue as the fallback, sentinel files for local runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Iterable, List, Optional

SACCT_FIELDS = ("JobID", "State", "ExitCode", "Elapsed", "Start", "End", "Reason", "JobName", "NodeList")


def _run(argv: List[str], timeout: float = 20) -> Optional[str]:
    if shutil.which(argv[0]) is None:
        return None
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def sacct(job_ids: Iterable[str]) -> Dict[str, Dict[str, str]]:
    """JobID -> {State, ExitCode, Elapsed, ...} for the allocations (not the steps) of these jobs.

    A requeued job has one row per allocation (`-D`): the row kept is the latest; `Restarts` counts
    the earlier ones and `Previous` names their end states, oldest first ("NODE_FAIL,TIMEOUT")."""
    ids = [str(j) for j in job_ids if j]
    if not ids:
        return {}
    out = _run(["sacct", "-X", "-n", "-P", "-D", "-j", ",".join(ids), "-o", ",".join(SACCT_FIELDS)])
    if out is None:
        return {}
    rows: Dict[str, Dict[str, str]] = {}
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) != len(SACCT_FIELDS):
            continue
        row = dict(zip(SACCT_FIELDS, parts))
        row["State"] = row["State"].split()[0] if row["State"] else ""  # "CANCELLED by 0" -> CANCELLED
        seen = rows.get(row["JobID"])
        # -D lists every allocation of a requeued job, oldest first: the last is the latest
        row["Restarts"] = str(int(seen["Restarts"]) + 1) if seen else "0"
        row["Previous"] = ",".join(x for x in ((seen or {}).get("Previous", ""), (seen or {}).get("State", "")) if x)
        rows[row["JobID"]] = row
    return rows


def squeue(job_ids: Iterable[str]) -> Dict[str, Dict[str, str]]:
    ids = [str(j) for j in job_ids if j]
    if not ids:
        return {}
    out = _run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T|%r|%N"])
    rows: Dict[str, Dict[str, str]] = {}
    for line in (out or "").splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4:
            rows[parts[0]] = {"JobID": parts[0], "State": parts[1], "Reason": parts[2], "ExitCode": "",
                              "NodeList": parts[3]}
    return rows


def job_states(job_ids: Iterable[str]) -> Dict[str, Dict[str, str]]:
    ids = list(job_ids)
    rows = sacct(ids)
    missing = [j for j in ids if j not in rows]
    if missing:
        rows.update(squeue(missing))
    return rows


# sinfo's node states that mean the node's slurmd is not answering or the node is out of service
_SICK_NODE = ("DOWN", "NOT_RESPONDING", "FAIL", "UNKNOWN")


def node_states(nodelists: Iterable[str]) -> Dict[str, str]:
    """node name -> sinfo's state (`allocated*`: `*` = not responding), for these nodes, in one sinfo call."""
    names = sorted({n for n in nodelists if n and n not in ("None", "None assigned", "(null)")})
    if not names:
        return {}
    out = _run(["sinfo", "-h", "-N", "-n", ",".join(names), "-o", "%N|%T"], timeout=10)
    states: Dict[str, str] = {}
    for line in (out or "").splitlines():
        parts = line.strip().split("|")
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def node_problem(nodelist: str, states: Dict[str, str]) -> Optional[str]:
    """A sentence when a node of `nodelist` is not responding or out of service, else None."""
    if not nodelist or not states:
        return None
    members = [n for n in states if n == nodelist or n in _expand(nodelist)]
    for node in members:
        st = states[node]
        if st.endswith("*") or any(word in st.upper() for word in _SICK_NODE):
            return (f"node {node} is {st.rstrip('*').upper()}" + (" and NOT RESPONDING" if st.endswith("*") else "")
                    + ": its slurmd is down or the node was lost; Slurm will end the job (NODE_FAIL) "
                    "if the node does not come back")
    return None


def _expand(nodelist: str) -> List[str]:
    """`a,node[1-3,5]` -> a, node1, node2, node3, node5 (Slurm's hostlist syntax, one bracket per name)."""
    import re

    names: List[str] = []
    for m in re.finditer(r"([^,\[]+)(?:\[([^\]]*)\])?", nodelist):
        prefix, ranges = m.group(1), m.group(2)
        if ranges is None:
            names.append(prefix)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if hi and lo.isdigit() and hi.isdigit():
                names.extend(f"{prefix}{i:0{len(lo)}d}" for i in range(int(lo), int(hi) + 1))
            else:
                names.append(prefix + lo)
    return names


def exit_code(row: Dict[str, str]) -> Optional[int]:
    code = (row or {}).get("ExitCode", "")
    if not code:
        return None
    try:
        return int(code.split(":")[0])
    except ValueError:
        return None


def local_state(run_dir: Path, pid: Optional[str]) -> Dict[str, str]:
    """State of a run started by the local executor, from the files its job script writes."""
    state_dir = Path(run_dir) / "state"
    code_file = state_dir / "exit_code"
    if code_file.exists():
        code = code_file.read_text().strip()
        if code == "0":
            return {"State": "COMPLETED", "ExitCode": "0:0"}
        if (state_dir / "cancelled").exists():
            return {"State": "CANCELLED", "ExitCode": f"{code}:0"}
        if code == "143":
            return {"State": "TIMEOUT", "ExitCode": "143:0"}
        return {"State": "FAILED", "ExitCode": f"{code}:0"}
    if pid and _alive(pid):
        return {"State": "RUNNING" if (state_dir / "started").exists() else "PENDING", "ExitCode": ""}
    if (state_dir / "cancelled").exists():
        return {"State": "CANCELLED", "ExitCode": ""}
    if (state_dir / "started").exists():
        return {"State": "FAILED", "ExitCode": "", "Reason": "the job process ended without an exit code"}
    return {"State": "UNKNOWN", "ExitCode": ""}


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    # a zombie child of this very process counts as ended
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
