"""The run registry: one SQLite row per run (and per sweep), surviving the submitting shell.

Location: $HPC_FT_REGISTRY, else $XDG_STATE_HOME/hpc-ft/registry.sqlite (~/.local/state/...). Put it
on a shared filesystem to see runs from every login node. WAL mode and a busy timeout make it safe
with many concurrent submitters; every write is one short transaction.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
  run_id      TEXT PRIMARY KEY,
  name        TEXT NOT NULL,
  config_hash TEXT NOT NULL,
  run_dir     TEXT NOT NULL,
  backend     TEXT NOT NULL,
  cluster     TEXT NOT NULL,
  executor    TEXT NOT NULL,
  job_ids     TEXT NOT NULL DEFAULT '[]',
  state       TEXT NOT NULL DEFAULT 'PENDING',
  sweep_id    TEXT,
  point       INTEGER,
  created     REAL NOT NULL,
  updated     REAL NOT NULL,
  summary     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created);
CREATE INDEX IF NOT EXISTS runs_sweep ON runs(sweep_id);
CREATE TABLE IF NOT EXISTS sweeps (
  sweep_id  TEXT PRIMARY KEY,
  name      TEXT NOT NULL,
  sweep_dir TEXT NOT NULL,
  job_id    TEXT,
  points    INTEGER NOT NULL,
  created   REAL NOT NULL
);
"""


def registry_path() -> Path:
    env = os.environ.get("HPC_FT_REGISTRY")
    if env:
        return Path(env).expanduser()
    state = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    return state / "hpc-ft" / "registry.sqlite"


class Registry:
    def __init__(self, path: Optional[Path] = None) -> None:
        self.path = Path(path) if path else registry_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA busy_timeout=60000")
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:  # e.g. some network filesystems
            pass
        self._conn.executescript(SCHEMA)

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def add_run(self, *, run_id: str, name: str, config_hash: str, run_dir: str, backend: str, cluster: str,
                executor: str, job_ids: List[str], state: str = "PENDING", sweep_id: Optional[str] = None,
                point: Optional[int] = None, created: Optional[float] = None) -> None:
        """One new row; a run id that is already registered raises sqlite3.IntegrityError.

        `created`: when the run was made (default now); `hpc-ft runs --reconcile` passes run.json's.
        """
        now = time.time()
        with self._tx() as c:
            c.execute(
                "INSERT INTO runs (run_id,name,config_hash,run_dir,backend,cluster,executor,job_ids,state,"
                "sweep_id,point,created,updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, name, config_hash, run_dir, backend, cluster, executor, json.dumps(job_ids), state,
                 sweep_id, point, created if created is not None else now, now),
            )

    def add_runs(self, rows: List[Dict[str, Any]]) -> None:
        """Insert many runs in one transaction (a sweep)."""
        now = time.time()
        with self._tx() as c:
            c.executemany(
                "INSERT INTO runs (run_id,name,config_hash,run_dir,backend,cluster,executor,job_ids,state,"
                "sweep_id,point,created,updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [(r["run_id"], r["name"], r["config_hash"], r["run_dir"], r["backend"], r["cluster"],
                  r["executor"], json.dumps(r["job_ids"]), r.get("state", "PENDING"), r.get("sweep_id"),
                  r.get("point"), r.get("created") or now + i * 1e-6, now) for i, r in enumerate(rows)],
            )

    def add_sweep(self, *, sweep_id: str, name: str, sweep_dir: str, job_id: Optional[str], points: int) -> None:
        with self._tx() as c:
            c.execute("INSERT INTO sweeps (sweep_id,name,sweep_dir,job_id,points,created) VALUES (?,?,?,?,?,?)",
                      (sweep_id, name, sweep_dir, job_id, points, time.time()))

    def update_run(self, run_id: str, *, state: Optional[str] = None, job_ids: Optional[List[str]] = None,
                   summary: Optional[Dict[str, Any]] = None) -> None:
        sets, args = ["updated=?"], [time.time()]
        if state is not None:
            sets.append("state=?"); args.append(state)
        if job_ids is not None:
            sets.append("job_ids=?"); args.append(json.dumps(job_ids))
        if summary is not None:
            sets.append("summary=?"); args.append(json.dumps(summary, sort_keys=True))
        args.append(run_id)
        with self._tx() as c:
            c.execute(f"UPDATE runs SET {', '.join(sets)} WHERE run_id=?", args)

    @staticmethod
    def _row(r: sqlite3.Row) -> Dict[str, Any]:
        d = dict(r)
        d["job_ids"] = json.loads(d["job_ids"])
        d["summary"] = json.loads(d.get("summary") or "{}")
        return d

    def get(self, run_id: str) -> Optional[Dict[str, Any]]:
        r = self._conn.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return self._row(r) if r else None

    def find(self, ref: str) -> List[Dict[str, Any]]:
        """Runs whose id starts with ref, or whose run directory is ref, or whose job id is ref."""
        rows = self._conn.execute(
            "SELECT * FROM runs WHERE run_id LIKE ? OR run_dir=? ORDER BY created DESC LIMIT 20",
            (ref.replace("%", "") + "%", os.path.abspath(ref)),
        ).fetchall()
        if not rows:
            rows = self._conn.execute(
                "SELECT * FROM runs WHERE job_ids LIKE ? ORDER BY created DESC LIMIT 20", (f'%"{ref}"%',)
            ).fetchall()
        return [self._row(r) for r in rows]

    def latest(self, under: Optional[str] = None) -> Optional[Dict[str, Any]]:
        """The newest run; `under`: the newest whose run directory lies under this folder (a work_dir)."""
        if under is None:
            r = self._conn.execute("SELECT * FROM runs ORDER BY created DESC LIMIT 1").fetchone()
            return self._row(r) if r else None
        bases = {os.path.join(os.path.abspath(under), ""), os.path.join(os.path.realpath(under), "")}
        where = " OR ".join("substr(run_dir, 1, ?) = ?" for _ in bases)
        args = [x for b in bases for x in (len(b), b)]
        r = self._conn.execute(f"SELECT * FROM runs WHERE {where} ORDER BY created DESC LIMIT 1", args).fetchone()
        return self._row(r) if r else None

    def list(self, state: Optional[str] = None, name: Optional[str] = None, limit: Optional[int] = None,
             sweep_id: Optional[str] = None) -> List[Dict[str, Any]]:
        q, args = "SELECT * FROM runs WHERE 1=1", []
        if state:
            q += " AND state=?"; args.append(state.upper())
        if name:
            q += " AND name LIKE ?"; args.append(f"%{name}%")
        if sweep_id:
            q += " AND sweep_id=?"; args.append(sweep_id)
        q += " ORDER BY point ASC, created DESC" if sweep_id else " ORDER BY created DESC"
        if limit:
            q += " LIMIT ?"; args.append(limit)
        return [self._row(r) for r in self._conn.execute(q, args).fetchall()]

    def get_sweep(self, ref: str) -> Optional[Dict[str, Any]]:
        r = self._conn.execute("SELECT * FROM sweeps WHERE sweep_id LIKE ? ORDER BY created DESC LIMIT 1",
                               (ref + "%",)).fetchone()
        return dict(r) if r else None

    def latest_sweep(self) -> Optional[Dict[str, Any]]:
        r = self._conn.execute("SELECT * FROM sweeps ORDER BY created DESC LIMIT 1").fetchone()
        return dict(r) if r else None

    def count(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
