"""`watch` and `logs --follow` poll with incremental parsers: the bytes a poll reads are what was written
since the last poll, whatever the size of the logs, and the status is the one `status` computes."""

from __future__ import annotations

import json
from pathlib import Path

from hpc_ft.track.follow import RunWatcher
from hpc_ft.track.registry import Registry
from hpc_ft.track.status import run_status
from tests.track_cli.helpers import hf_events, make_run

COMPARED = ("state", "step", "max_steps", "train_loss", "val_loss", "best_val_loss", "step_time_s", "end_cause",
            "attempts", "requeues")


def _grow(run_dir: Path, first_step: int, n: int, log_lines: int) -> int:
    """Append n training steps to events.jsonl and `log_lines` lines to the Slurm log; returns bytes added."""
    recs = [{"kind": "train", "step": s, "loss": 1.0 + 1.0 / s, "step_time_s": 0.1} for s in range(first_step, first_step + n)]
    recs.append({"kind": "eval", "step": first_step + n - 1, "val_loss": 1.0 + 2.0 / (first_step + n)})
    ev = "".join(json.dumps(r) + "\n" for r in recs).encode()
    log = b"".join(b"Epoch 0: step %d, some framework chatter that is not progress\n" % i for i in range(log_lines))
    with open(run_dir / "events.jsonl", "ab") as f:
        f.write(ev)
    with open(run_dir / "logs" / "job.out", "ab") as f:
        f.write(log)
    return len(ev) + len(log)


def _watched_run(tmp_path: Path, reg: Registry, big_steps: int, big_log_lines: int):
    run = make_run(tmp_path, reg, executor="local", jobs={}, events=hf_events(0, 1_000_000, end=False))
    (run["run_dir"] / "logs" / "job.out").write_bytes(b"")
    _grow(run["run_dir"], 1, big_steps, big_log_lines)
    return reg.get(run["run_id"]), run["run_dir"]


def test_a_poll_reads_only_what_was_added_whatever_the_log_size(tmp_path):
    reg = Registry(tmp_path / "registry.sqlite")
    per_poll = {}
    for label, steps, lines in (("small", 200, 2_000), ("large", 20_000, 200_000)):
        row, run_dir = _watched_run(tmp_path / label, reg, steps, lines)
        watcher = RunWatcher(row)
        watcher.poll()
        size = (run_dir / "events.jsonl").stat().st_size + (run_dir / "logs" / "job.out").stat().st_size
        assert watcher.bytes_parsed == size, "the first poll reads everything once"
        costs = []
        for k in range(3):
            before = watcher.bytes_parsed
            added = _grow(run_dir, steps + 1 + 10 * k, 10, 20)
            st = watcher.poll()
            costs.append(watcher.bytes_parsed - before)
            assert costs[-1] == added
            full = run_status(row)  # the whole-file parse agrees with the incremental one
            assert {k2: st[k2] for k2 in COMPARED} == {k2: full[k2] for k2 in COMPARED}
            assert st["step"] == steps + 10 * (k + 1)
        idle_before = watcher.bytes_parsed
        watcher.poll()
        assert watcher.bytes_parsed == idle_before, "a poll with nothing new reads nothing"
        per_poll[label] = (size, costs)
    assert per_poll["large"][0] > 50 * per_poll["small"][0] / 2
    # a 100x larger log: the same appended records cost the same (only the step numbers have more digits)
    assert max(per_poll["large"][1]) < 1.05 * max(per_poll["small"][1])


def test_a_replaced_log_is_read_again_from_the_start(tmp_path):
    reg = Registry(tmp_path / "registry.sqlite")
    row, run_dir = _watched_run(tmp_path, reg, 50, 100)
    watcher = RunWatcher(row)
    assert watcher.poll()["step"] == 50
    (run_dir / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hf_events(5, 100, end=False)))
    assert watcher.poll()["step"] == 5
