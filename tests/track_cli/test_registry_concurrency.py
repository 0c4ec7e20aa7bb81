"""The registry under concurrent submitters: 8 OS processes x 25 submissions lose and duplicate nothing;
run ids made at the same moment do not collide."""

from __future__ import annotations

import multiprocessing as mp
import re
import time
from pathlib import Path

from hpc_ft.submit import rundir as rd
from hpc_ft.executors.base import JOB_NAME
from hpc_ft.track.registry import Registry

PROCESSES = 8
PER_PROCESS = 25


def _submitter(registry_path: str, exp_dir: str, worker: int, barrier, out_q) -> None:
    """What launch_run does per submission: a new run id, its run directory and run.json, one registry row."""
    try:
        reg = Registry(Path(registry_path))  # each process opens its own connection, as each `hpc-ft train` does
        barrier.wait(timeout=60)
        ids = []
        for i in range(PER_PROCESS):
            run_id = rd.new_run_id()
            run_dir = Path(exp_dir) / "concurrent" / run_id
            (run_dir / "logs").mkdir(parents=True, exist_ok=False)  # as make_run_dir: a collision fails here
            rd.write_run_json(run_dir, {"run_id": run_id, "jobs": {"train": f"{worker}{i:03d}"}})
            reg.add_run(run_id=run_id, name="concurrent", config_hash=f"w{worker}", run_dir=str(run_dir),
                        backend="hf", cluster="slurm_local", executor="slurm", job_ids=[f"{worker}{i:03d}"])
            reg.update_run(run_id, state="RUNNING")  # a second write per run, as `status` does
            ids.append(run_id)
        reg.close()
        out_q.put((worker, ids, None))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        out_q.put((worker, [], repr(exc)))


def _reader(registry_path: str, barrier, stop, out_q) -> None:
    """`hpc-ft runs` running while the submitters write: it must never fail."""
    try:
        reg = Registry(Path(registry_path))
        barrier.wait(timeout=60)
        reads = 0
        while not stop.is_set():
            reg.list(limit=50)
            reads += 1
        out_q.put(("reader", reads, None))
    except BaseException as exc:  # noqa: BLE001
        out_q.put(("reader", 0, repr(exc)))


def test_eight_processes_times_25_submissions_lose_and_duplicate_nothing(tmp_path):
    ctx = mp.get_context("spawn")  # real separate interpreters, no inherited connection
    path = tmp_path / "registry.sqlite"
    Registry(path).close()
    barrier = ctx.Barrier(PROCESSES + 1)
    stop = ctx.Event()
    out_q = ctx.Queue()
    procs = [ctx.Process(target=_submitter, args=(str(path), str(tmp_path), w, barrier, out_q))
             for w in range(PROCESSES)]
    procs.append(ctx.Process(target=_reader, args=(str(path), barrier, stop, out_q)))
    for p in procs:
        p.start()
    results = {}
    for _ in range(PROCESSES):
        worker, ids, err = out_q.get(timeout=300)
        assert err is None, f"submitter {worker} failed: {err}"
        results[worker] = ids
    stop.set()
    who, reads, err = out_q.get(timeout=60)
    assert err is None, f"the concurrent reader failed: {err}"
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    submitted = [i for ids in results.values() for i in ids]
    assert len(submitted) == PROCESSES * PER_PROCESS
    assert len(set(submitted)) == len(submitted), "two submissions got the same run id"
    reg = Registry(path)
    rows = reg.list()
    assert reg.count() == PROCESSES * PER_PROCESS
    assert len({r["run_id"] for r in rows}) == len(rows) == PROCESSES * PER_PROCESS
    assert {r["run_id"] for r in rows} == set(submitted)
    assert all(r["state"] == "RUNNING" for r in rows), "an update was lost"
    by_worker = {}
    for r in rows:
        by_worker.setdefault(r["config_hash"], set()).add(r["job_ids"][0])
    assert {k: len(v) for k, v in by_worker.items()} == {f"w{w}": PER_PROCESS for w in range(PROCESSES)}


def test_run_ids_made_in_the_same_second_do_not_collide():
    # 20,000 ids in one second: with 3 random bytes about 12 pairs would collide; with 5, about 1 in 5,000 runs
    now = time.time()
    ids = [rd.new_run_id(now) for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert len({i[:15] for i in ids}) == 1, "all made in the same second"


def test_a_run_id_is_sortable_by_time_and_readable_back_from_a_job_name():
    run_id = rd.new_run_id(1_700_000_000)
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{10}", run_id)
    assert rd.new_run_id(1_700_000_000)[:15] < rd.new_run_id(1_700_000_100)[:15]
    m = JOB_NAME.match(f"hpcft.tiny.llama.v2.train.{run_id}")
    assert m and m["name"] == "tiny.llama.v2" and m["kind"] == "train" and m["run_id"] == run_id
