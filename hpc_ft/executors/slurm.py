"""Everything hpc-ft says to Slurm: sbatch (through submitit), sacct, squeue, scancel, sinfo, scontrol.

One subprocess wrapper with retry on Slurm's transient errors (`run_command`), one state vocabulary
(sacct's, squeue as the fallback), one afterok mechanism (`with_afterok`), Slurm's hostlists
(`expand_hostlist`), and the `SlurmExecutor` that the rest of hpc-ft uses through `executors.base`.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from hpc_ft.errors import UserError
from hpc_ft.executors.base import Executor, SchedulerJob, Submitted, submitit_folder

SACCT_FIELDS = ("JobID", "State", "ExitCode", "Elapsed", "Start", "End", "Reason", "JobName", "NodeList")
TRANSIENT = re.compile(
    r"Socket timed out|Unable to contact slurm controller|Connection refused|"
    r"Transient|try again|Resource temporarily unavailable|Zero Bytes were transmitted",
    re.I,
)
RETRIES = 3
CLIENT_TIMEOUT_S = 20
#: a multi-node job's rendezvous port: RDZV_BASE_PORT + job id mod RDZV_PORTS (multinode_prologue)
RDZV_BASE_PORT, RDZV_PORTS = 29500, 1000


def call(argv: List[str], timeout: float = CLIENT_TIMEOUT_S, retries: int = RETRIES) -> Tuple[int, str, str]:
    """(returncode, stdout, stderr) of a Slurm client command, retried while Slurm answers with a transient
    error; never raises (127: not installed, 124: no answer in `timeout` s)."""
    for attempt in range(max(1, retries)):
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except (FileNotFoundError, PermissionError):
            return 127, "", f"{argv[0]}: not found"
        except OSError as exc:
            return 126, "", f"{argv[0]}: {exc.strerror or exc}"
        except subprocess.TimeoutExpired:
            return 124, "", f"{' '.join(argv)}: no answer in {timeout:g} s"
        if proc.returncode != 0 and TRANSIENT.search(proc.stdout + proc.stderr) and attempt + 1 < retries:
            time.sleep(1.5 * (attempt + 1))
            continue
        return proc.returncode, proc.stdout, proc.stderr
    return 1, "", ""


CLIENT_TOOLS = ("sbatch", "sinfo", "scontrol")
CHECK_TIMEOUT_S = 30  # `hpc-ft cluster check`: a login node under load answers slowly


def partitions() -> Tuple[int, str, str]:
    """`sinfo -h -o %P`: the partitions, the default one marked with '*'."""
    return call(["sinfo", "-h", "-o", "%P"], timeout=CHECK_TIMEOUT_S, retries=1)


def partition(name: str) -> Tuple[int, str, str]:
    """`scontrol show partition NAME -o`: one line of Key=Value."""
    return call(["scontrol", "show", "partition", name, "-o"], timeout=CHECK_TIMEOUT_S, retries=1)


def partition_gres(name: str) -> Tuple[int, str, str]:
    """`sinfo -p NAME -N -o '%N %G'`: each node of the partition and its generic resources (GPUs)."""
    return call(["sinfo", "-h", "-p", name, "-N", "-o", "%N %G"], timeout=CHECK_TIMEOUT_S, retries=1)


def partition_node_states(name: str) -> Tuple[int, str, str]:
    """`sinfo -p NAME -N -o '%N %T'`: each node of the partition and its state (multi-node cluster check)."""
    return call(["sinfo", "-h", "-p", name, "-N", "-o", "%N %T"], timeout=CHECK_TIMEOUT_S, retries=1)


def submit_and_wait(script_path: Path, timeout: float) -> Tuple[int, str, str]:
    """`sbatch --parsable --wait SCRIPT` from its folder: the job's exit code once it ended (cluster check's probe job);
    124 when it did not end within `timeout` s."""
    try:
        proc = subprocess.run(["sbatch", "--parsable", "--wait", str(script_path)], capture_output=True, text=True,
                              timeout=timeout, cwd=script_path.parent)
    except subprocess.TimeoutExpired:
        return 124, "", f"no end within {timeout:g} s"
    except OSError as exc:
        return 127, "", f"sbatch: {exc.strerror or exc}"
    return proc.returncode, proc.stdout, proc.stderr


def run_command(argv: List[str], timeout: float = CLIENT_TIMEOUT_S) -> Optional[str]:
    """stdout of a Slurm client command that succeeded, else None (not installed, failed, no answer)."""
    if shutil.which(argv[0]) is None:
        return None
    rc, out, _err = call(argv, timeout=timeout)
    return out if rc == 0 else None


def sacct(job_ids: Iterable[str]) -> Dict[str, Dict[str, str]]:
    """JobID -> {State, ExitCode, Elapsed, ...} for the allocations (not the steps) of these jobs.

    A requeued job has one row per allocation (`-D`): the row kept is the latest; `Restarts` counts
    the earlier ones and `Previous` names their end states, oldest first ("NODE_FAIL,TIMEOUT")."""
    ids = [str(j) for j in job_ids if j]
    if not ids:
        return {}
    out = run_command(["sacct", "-X", "-n", "-P", "-D", "-j", ",".join(ids), "-o", ",".join(SACCT_FIELDS)])
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
    out = run_command(["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T|%r|%N"])
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
    out = run_command(["sinfo", "-h", "-N", "-n", ",".join(names), "-o", "%N|%T"], timeout=10)
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
    members = [n for n in states if n == nodelist or n in expand_hostlist(nodelist)]
    for node in members:
        st = states[node]
        if st.endswith("*") or any(word in st.upper() for word in _SICK_NODE):
            return (f"node {node} is {st.rstrip('*').upper()}" + (" and NOT RESPONDING" if st.endswith("*") else "")
                    + ": its slurmd is down or the node was lost; Slurm will end the job (NODE_FAIL) "
                    "if the node does not come back")
    return None


def expand_hostlist(nodelist: str) -> List[str]:
    """`a,node[1-3,5]` -> a, node1, node2, node3, node5 (Slurm's hostlist syntax, one bracket per name)."""
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


# ---- arrays: one sacct call for every task --------------------------------------------------------

LEFT_QUEUE = "left the queue without running"
_TASK_RANGE = re.compile(r"^(\d+)(?:-(\d+))?(?::\d+)?$")


def expand_tasks(spec: str) -> List[int]:
    """'3' -> [3]; '[1-3,7%2]' -> [1, 2, 3, 7] (Slurm's notation for array tasks still pending together)."""
    spec = spec.strip("[]").split("%")[0]
    tasks: List[int] = []
    for part in spec.split(","):
        m = _TASK_RANGE.match(part.strip())
        if m:
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            tasks.extend(range(lo, hi + 1))
    return tasks


def _by_task(rows: Dict[str, Dict[str, str]], array_job_id: str) -> Tuple[Dict[int, Dict[str, str]], Optional[Dict[str, str]]]:
    """Scheduler rows keyed by task; the bare array record (tasks still pending as one, or cancelled as one)."""
    out: Dict[int, Dict[str, str]] = {}
    bare = None
    prefix = f"{array_job_id}_"
    for job_id, row in rows.items():
        if job_id == array_job_id:
            bare = row
        elif job_id.startswith(prefix):
            for task in expand_tasks(job_id[len(prefix):]):
                out[task] = row
    return out, bare


def array_states(array_job_id: str, tasks: List[int]) -> Dict[int, Dict[str, str]]:
    """task -> Slurm's row for it, from ONE sacct call (plus one squeue call for tasks sacct does not know yet).

    A pending array's tasks share one record (`<id>_[2-5%1]`); a task cancelled while pending leaves
    accounting without a record of its own: it gets the state CANCELLED when the scheduler knows the array
    but not the task."""
    by_task, bare = _by_task(sacct([array_job_id]), array_job_id)
    missing = [t for t in tasks if t not in by_task]
    if missing:
        queued, queued_bare = _by_task(squeue([array_job_id]), array_job_id)
        for t in missing:
            if t in queued:
                by_task[t] = queued[t]
        bare = bare or queued_bare
    known = bool(by_task) or bare is not None
    for t in tasks:
        if t not in by_task:
            if bare is not None:
                by_task[t] = bare
            elif known:
                by_task[t] = {"State": "CANCELLED", "ExitCode": "", "Reason": LEFT_QUEUE}
            else:
                by_task[t] = {"State": "", "ExitCode": ""}
    return by_task


# ---- sbatch ---------------------------------------------------------------------------------------


def require_slurm() -> None:
    if shutil.which("sbatch") is None:
        raise UserError(
            "cluster.executor=slurm: sbatch is not on PATH, Slurm is not reachable from here. "
            "Submit from a login node, or use cluster=local."
        )


_SBATCH_ERROR = re.compile(r"error|failure|invalid|unrecognized|denied|not available", re.I)


def slurm_error(stderr: str) -> str:
    """The line of sbatch's output that says what is wrong."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    err = [ln for ln in lines if _SBATCH_ERROR.search(ln)]
    return (err or lines or ["(no message)"])[0]


# sbatch's refusal -> the key to change (the first pattern that matches wins).
_SBATCH_HINTS = (
    (r"unrecognized option '--([\w-]+)", "cluster.sbatch_extra.{0}: not an option of this sbatch; remove or rename it"),
    (r"partition", "cluster.partition: use a partition that `sinfo -s` lists"),
    (r"time limit", "cluster.time: stay within the partition's limit (`sinfo -o '%P %l'`)"),
    (r"account", "cluster.account: use an account you belong to (`sacctmgr show assoc user=$USER`)"),
    (r"qos", "cluster.qos: use a QOS your account may use"),
    (r"node count", "trainer.num_nodes: ask for no more nodes than the partition has"),
    (r"processors", "cluster.cpus_per_task: ask for no more CPUs than a node has (`sinfo -o '%P %c'`)"),
    (r"node configuration|gres|gpu|memory",
     "trainer.devices, cluster.gpu.* or cluster.mem: ask for no more than a node has (`sinfo -o '%P %G %m'`)"),
)


def sbatch_hint(output: str) -> str:
    for pattern, hint in _SBATCH_HINTS:
        m = re.search(pattern, output, re.I)
        if m:
            return "Fix " + hint.format(*m.groups()) + "."
    return "Check cluster.partition, cluster.account, cluster.time and the GPU request (cluster.gpu.*)."


def test_only(script_path: Path) -> None:
    """`sbatch --test-only`: Slurm checks partition, account, GPUs and limits without queueing."""
    require_slurm()
    rc, out, err = call(["sbatch", "--test-only", str(script_path)])
    out = out + err
    if rc in (126, 127):
        raise UserError(f"cluster.executor=slurm: cannot run sbatch ({err}). "
                        "Submit from a login node, or use cluster=local.")
    if rc == 0 or "to start at" in out:
        return
    if TRANSIENT.search(out) or rc == 124:
        raise UserError(
            f"Slurm is not reachable: {slurm_error(out)}. Is slurmctld up? (`sinfo`, `scontrol ping`) "
            "Try again later, or use cluster=local."
        )
    raise UserError(f"sbatch --test-only refused the job: {slurm_error(out)}. {sbatch_hint(out)}")


AFTEROK = re.compile(r"--dependency=afterok:[^\s]+")
AFTEROK_PLACEHOLDER = "afterok:{train_job_id}"  # what render writes; `with_afterok` fills it in


def with_afterok(script_text: str, job_id: str) -> str:
    """The script with its `--dependency=afterok:...` line pointing at `job_id` (the placeholder that render
    writes, or the id of an earlier submission when a run is resumed)."""
    return AFTEROK.sub(f"--dependency=afterok:{job_id}", script_text)


def _submitit_class():
    from submitit.slurm.slurm import SlurmExecutor as SubmititSlurm

    class ScriptSlurmExecutor(SubmititSlurm):
        """submitit's SlurmExecutor whose submission file is the script we rendered."""

        def __init__(self, folder: Path, script_text: str) -> None:
            super().__init__(folder=folder)
            self.script_text = script_text

        def _make_submission_file_text(self, command: str, uid: str) -> str:
            return self.script_text

    return ScriptSlurmExecutor


def submit_slurm(script_text: str, folder: Path, array_size: Optional[int] = None) -> Submitted:
    """sbatch the script (text) through submitit; Slurm's transient refusals are retried."""
    require_slurm()
    from submitit.core.utils import FailedJobError

    executor = _submitit_class()(submitit_folder(folder), script_text)
    for attempt in range(RETRIES):
        try:
            # submitit has no public call that submits a ready-made script; this one is its own
            job = executor._submit_command("hpc-ft")
            break
        except FailedJobError as exc:
            last = str(exc)
            if TRANSIENT.search(last) and attempt + 1 < RETRIES:
                time.sleep(1.5 * (attempt + 1))
                continue
            raise UserError(f"sbatch failed: {slurm_error(last)}. Is slurmctld up? (`sinfo`, `scontrol ping`)") from None
    job_id = str(job.job_id)
    tasks = [f"{job_id}_{i}" for i in range(array_size)] if array_size else [job_id]
    return Submitted(job_id=job_id, task_ids=tasks, executor="slurm", handle=job)


def scancel(job_ids: Iterable[str]) -> None:
    ids = [str(j) for j in job_ids if j]
    if not ids:
        return
    rc, out, err = call(["scancel", *ids])
    if rc != 0:
        raise UserError(f"scancel failed: {err.strip() or out.strip()}. Is Slurm reachable?")


# ---- this user's hpc-ft jobs (for `hpc-ft runs --reconcile`) --------------------------------------


def _array_base(job_id: str) -> str:
    return job_id.split("_", 1)[0]


def script_of(submit_line: str) -> str:
    """The script path of an sbatch command line (`sbatch [options] script [args]`)."""
    try:
        words = shlex.split(submit_line)
    except ValueError:
        words = submit_line.split()
    if not words:
        return ""
    for w in words[1:]:
        if not w.startswith("-") and (w.endswith(".sh") or w.endswith(".sbatch") or "/" in w):
            return w
    return ""


def list_jobs(since_days: float) -> List[SchedulerJob]:
    """This user's hpc-ft jobs that Slurm knows: queued or running (squeue), and ended within `since_days`
    (sacct). An array's task rows are folded into one job per array."""
    jobs: Dict[str, SchedulerJob] = {}
    out = run_command(["sacct", "-X", "-n", "-P", "-o", "JobID,JobName,State,SubmitLine", "-S",
                       time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - since_days * 86400))])
    for line in (out or "").splitlines():
        parts = line.split("|", 3)
        if len(parts) == 4 and parts[1].startswith("hpcft."):
            jid = _array_base(parts[0])
            script = script_of(parts[3])
            jobs[jid] = SchedulerJob(jid, parts[1], (parts[2].split() or [""])[0],
                                     script or getattr(jobs.get(jid), "script", ""))
    out = run_command(["squeue", "--me", "-h", "-o", "%i|%j|%T|%o"])
    for line in (out or "").splitlines():
        parts = line.strip().split("|", 3)
        if len(parts) == 4 and parts[1].startswith("hpcft."):
            jid = _array_base(parts[0])
            prev = jobs.get(jid)
            jobs[jid] = SchedulerJob(jid, parts[1], parts[2], parts[3] or (prev.script if prev else ""))
    return list(jobs.values())


def job_stdout(job_id: str) -> str:
    """The StdOut path Slurm holds for a job it still knows ('' when it does not)."""
    out = run_command(["scontrol", "show", "job", "-o", job_id], timeout=10) or ""
    m = re.search(r"\bStdOut=(\S+)", out)
    return m.group(1) if m else ""


class SlurmExecutor(Executor):
    """Jobs queued by Slurm: the eval job waits on its train job (afterok); arrays are Slurm arrays."""

    name = "slurm"
    queues_jobs = True

    def multinode_launcher(self, nodes: int) -> List[str]:
        if nodes > 1:
            return ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
        return []

    def multinode_prologue(self, nodes: int) -> List[str]:
        """The rendezvous host (the allocation's first node) and a port of this job's own, RDZV_BASE_PORT + job
        id mod RDZV_PORTS: with one fixed port, two multi-node jobs sharing a first node would meet on one store (torch joins
        a store it finds as a client) and the second would lose it when the first ends."""
        if nodes > 1:
            return ['export HPCFT_HEAD_NODE="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
                    f'export HPCFT_RDZV_PORT="$(({RDZV_BASE_PORT} + ${{SLURM_JOB_ID:-0}} % {RDZV_PORTS}))"',
                    'export HPCFT_RDZV_ENDPOINT="$HPCFT_HEAD_NODE:$HPCFT_RDZV_PORT"']
        return []

    def check(self, script_path: Path) -> None:
        test_only(script_path)

    def submit(self, script_path: Path, folder: Path, *, timeout_min: float = 0, signal_delay_s: int = 0,
               after: Optional[str] = None) -> Submitted:
        text = Path(script_path).read_text(encoding="utf-8")
        if after is not None:
            text = with_afterok(text, after)
            write_script(Path(script_path), text)
        return submit_slurm(text, folder)

    def submit_array(self, script_path: Path, folder: Path, size: int, *, timeout_min: float = 0,
                     signal_delay_s: int = 0) -> Submitted:
        return submit_slurm(Path(script_path).read_text(encoding="utf-8"), folder, array_size=size)

    def states(self, job_ids: List[str], run_dir: Optional[Path] = None) -> Dict[str, Dict[str, str]]:
        return job_states(job_ids)

    def array_states(self, array_job_id: str, tasks: Dict[int, Path]) -> Dict[int, Dict[str, str]]:
        return array_states(array_job_id, list(tasks))

    def cancel(self, jobs: Dict[str, str], run_dir: Path) -> List[str]:
        from hpc_ft.executors.base import FINAL_STATES

        states = job_states(jobs.values())
        # squeue is slurmctld's own view: a job that sacct still shows as NODE_FAIL may already be requeued
        # (PENDING again), and sacct lags behind; anything squeue lists is alive and gets cancelled
        queued = squeue(jobs.values())
        live = {k: j for k, j in jobs.items()
                if j in queued or states.get(j, {}).get("State", "UNKNOWN") not in FINAL_STATES}
        scancel(live.values())
        return [f"{k} {j}" for k, j in live.items()]

    def take_back(self, job_ids: Iterable[str]) -> None:
        """Cancel jobs just submitted (a later submission of the same run was refused); quietly."""
        if job_ids:
            call(["scancel", *[str(j) for j in job_ids]], retries=1)

    def list_jobs(self, since_days: float) -> List[SchedulerJob]:
        return list_jobs(since_days)

    def job_stdout(self, job_id: str) -> str:
        return job_stdout(job_id)

    def node_states(self, nodelists: List[str]) -> Dict[str, str]:
        return node_states(nodelists)

    def where(self, job_id: str, parallelism: int = 1) -> str:
        return f"array job {job_id} (at most {parallelism} at once)"


def write_script(path: Path, text: str) -> None:
    """Rewrite a job script in place (atomically, executable)."""
    import os

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
