"""Everything readers (CLI, TUI) ask of the store, over one read-only connection.

Live views poll with a cursor per run (the last rowid they have) and fetch only
newer rows; nothing here re-reads a whole history on each tick. A run whose row
says running but whose supervisor process is gone is reported as crashed.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from moedesk.paths import db_path
from moedesk.store.analysis import ROUTING_PREFIX
from moedesk.store.db import StoreError, connect_reader
from moedesk.store.query import run_guarded

SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


def process_alive(pid: int | None, started: float | None) -> bool:
    """True when `pid` runs and is the same process (its start time matches)."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if started is not None and abs(proc.create_time() - started) > 1.0:
            return False  # the pid was reused by another process
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def effective_status(row: sqlite3.Row | dict) -> str:
    status = row["status"]
    if status == "running" and not process_alive(row["supervisor_pid"], row["supervisor_started"]):
        return "crashed"
    return status


@dataclass
class RunInfo:
    id: int
    name: str
    kind: str
    status: str
    last_step: int
    total_steps: int | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    row: dict[str, Any]

    @property
    def config(self) -> dict:
        return json.loads(self.row["config_json"])


class Reader:
    """A read-only view of the store; cheap to create, safe to poll from a thread. Use it
    as a context manager, or call `close`."""

    def __init__(self, db_file: Path):
        self.db_file = Path(db_file)
        self.conn = connect_reader(self.db_file)
        self._tables: dict[str, bool] = {}

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _info(self, row: sqlite3.Row) -> RunInfo:
        d = dict(row)
        d["status"] = effective_status(row)
        return RunInfo(d["id"], d["name"], d["kind"], d["status"], d["last_step"] or 0,
                       d["total_steps"], d["created_at"], d["started_at"], d["ended_at"], d)

    def runs(self) -> list[RunInfo]:
        return [self._info(r) for r in self.conn.execute("SELECT * FROM runs ORDER BY id")]

    def run(self, ref: str | int) -> RunInfo:
        """A run by id or by name; StoreError naming the reference when absent."""
        ref = str(ref)
        row = None
        if ref.isdigit():
            row = self.conn.execute("SELECT * FROM runs WHERE id = ?", (int(ref),)).fetchone()
        if row is None:
            row = self.conn.execute("SELECT * FROM runs WHERE name = ? ORDER BY id DESC",
                                    (ref,)).fetchone()
        if row is None:
            gone = self.removed(int(ref)) if ref.isdigit() else None
            if gone is not None:
                raise StoreError(f"run {gone['id']} ({gone['name']}) was removed on "
                                 f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(gone['removed_at']))}"
                                 " (moedesk rm); its rows and files are gone")
            raise StoreError(f"no run {ref!r} in {self.db_file} (see `moedesk runs`)")
        return self._info(row)

    def latest_run(self) -> RunInfo:
        """The newest run (highest id); StoreError when there is none."""
        row = self.conn.execute("SELECT * FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        if row is None:
            raise StoreError(f"no runs yet in {self.db_file}: try "
                             "`moedesk run profiles/quickstart.toml`")
        return self._info(row)

    # housekeeping (store/housekeeping.py writes these; a store from before migration
    # m003_housekeeping has no such tables: no tags, nothing removed)

    def _has(self, table: str) -> bool:
        if table not in self._tables:
            self._tables[table] = self.conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                (table,)).fetchone() is not None
        return self._tables[table]

    def tags(self, run_id: int | None = None) -> dict[int, list[str]]:
        """{run_id: sorted tags} of every run (or of one)."""
        if not self._has("run_tags"):
            return {}
        sql, args = "SELECT run_id, tag FROM run_tags", ()
        if run_id is not None:
            sql, args = sql + " WHERE run_id = ?", (run_id,)
        out: dict[int, list[str]] = {}
        for rid, tag in self.conn.execute(sql + " ORDER BY run_id, tag", args):
            out.setdefault(rid, []).append(tag)
        return out

    def removed(self, run_id: int) -> dict | None:
        """The tombstone of a removed run (id, name, kind, status, created_at, removed_at)."""
        if not self._has("removed_runs"):
            return None
        row = self.conn.execute("SELECT * FROM removed_runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else dict(row)

    def removed_ids(self) -> set[int]:
        if not self._has("removed_runs"):
            return set()
        return {r[0] for r in self.conn.execute("SELECT id FROM removed_runs")}

    def metrics_since(self, run_id: int, after_rowid: int = 0,
                      names: list[str] | None = None) -> tuple[list[tuple], int]:
        """(rows of (rowid, step, name, value), new cursor) for rows newer than the cursor."""
        sql = "SELECT rowid, step, name, value FROM metrics WHERE rowid > ? AND run_id = ?"
        args: list[Any] = [after_rowid, run_id]
        if names:
            sql += f" AND name IN ({','.join('?' * len(names))})"
            args += names
        rows = [tuple(r) for r in self.conn.execute(sql + " ORDER BY rowid", args)]
        cursor = rows[-1][0] if rows else after_rowid
        return rows, max(cursor, after_rowid)

    def series(self, run_id: int, name: str) -> list[tuple[int, float | None]]:
        return [tuple(r) for r in self.conn.execute(
            "SELECT step, value FROM metrics WHERE run_id = ? AND name = ? ORDER BY step",
            (run_id, name))]

    def latest_metrics(self, run_id: int) -> dict[str, tuple[int, float | None]]:
        """{name: (step, value)} of the newest value of every metric of a run."""
        rows = self.conn.execute(
            "SELECT name, step, value FROM metrics WHERE rowid IN ("
            " SELECT MAX(rowid) FROM metrics WHERE run_id = ? GROUP BY name)", (run_id,))
        return {r["name"]: (r["step"], r["value"]) for r in rows}

    def last_value(self, run_id: int, name: str) -> float | None:
        row = self.conn.execute("SELECT value FROM metrics WHERE run_id = ? AND name = ?"
                                " ORDER BY step DESC LIMIT 1", (run_id, name)).fetchone()
        return None if row is None else row[0]

    def expert_load_since(self, run_id: int, after_rowid: int = 0
                          ) -> tuple[list[tuple[int, int, list[float]]], int]:
        """(rows of (step, layer, counts), new cursor)."""
        rows = list(self.conn.execute(
            "SELECT rowid, step, layer, counts FROM expert_load WHERE rowid > ? AND run_id = ?"
            " ORDER BY rowid", (after_rowid, run_id)))
        cursor = rows[-1][0] if rows else after_rowid
        return [(r[1], r[2], json.loads(r[3])) for r in rows], cursor

    def latest_expert_load(self, run_id: int) -> tuple[int | None, dict[int, list[float]]]:
        row = self.conn.execute("SELECT MAX(step) FROM expert_load WHERE run_id = ?",
                                (run_id,)).fetchone()
        if row[0] is None:
            return None, {}
        rows = self.conn.execute("SELECT layer, counts FROM expert_load WHERE run_id = ?"
                                 " AND step = ? ORDER BY layer", (run_id, row[0]))
        return row[0], {r[0]: json.loads(r[1]) for r in rows}

    def alerts(self, run_id: int | None = None, open_only: bool = False,
               after_id: int = 0) -> list[dict]:
        sql = "SELECT * FROM alerts WHERE id > ?"
        args: list[Any] = [after_id]
        if run_id is not None:
            sql += " AND run_id = ?"
            args.append(run_id)
        if open_only:
            sql += " AND cleared_step IS NULL"
        return [dict(r) for r in self.conn.execute(sql + " ORDER BY id", args)]

    def worst_open_alert(self) -> dict[int, str]:
        """{run_id: worst severity among its open alerts}."""
        out: dict[int, str] = {}
        for r in self.conn.execute("SELECT run_id, severity FROM alerts"
                                   " WHERE cleared_step IS NULL"):
            if SEVERITY_RANK.get(r[1], 0) >= SEVERITY_RANK.get(out.get(r[0], "info"), 0):
                out[r[0]] = r[1]
        return out

    def checkpoints(self, run_id: int) -> list[dict]:
        return [dict(r) for r in self.conn.execute(
            "SELECT * FROM checkpoints WHERE run_id = ? ORDER BY step", (run_id,))]

    def resumes(self, run_id: int) -> list[dict]:
        return [dict(r) for r in self.conn.execute(
            "SELECT * FROM resumes WHERE run_id = ? ORDER BY rowid", (run_id,))]

    def query(self, sql: str, params: tuple = (), limit: int = 1000
              ) -> tuple[list[str], list[tuple], bool]:
        """Run one read-only statement: (columns, rows, truncated). Anything but a read
        raises StoreError with the reason (`store/query.py` guards the statement)."""
        result = run_guarded(self.conn, sql, params, limit)
        return result.columns, result.rows, result.truncated

    # the analysis table (store/analysis.py)

    def analysis_names(self, run_id: int) -> list[str]:
        """Every analysis name a run has, sorted (e.g. ["routing/L1"])."""
        return [r[0] for r in self.conn.execute(
            "SELECT DISTINCT name FROM analysis WHERE run_id = ? ORDER BY name", (run_id,))]

    def analysis_steps(self, run_id: int, name: str) -> list[int]:
        return [r[0] for r in self.conn.execute(
            "SELECT step FROM analysis WHERE run_id = ? AND name = ? ORDER BY step",
            (run_id, name))]

    def latest_analysis(self, run_id: int, prefix: str = "", step: int | None = None
                        ) -> dict[str, tuple[int, dict]]:
        """{name: (step, payload)}: the newest row (or the row at `step`) of each name that
        starts with `prefix`."""
        like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        if step is None:
            rows = self.conn.execute(
                "SELECT a.name, a.step, a.payload FROM analysis a WHERE a.run_id = ?"
                " AND a.name LIKE ? ESCAPE '\\' AND a.step = (SELECT MAX(b.step) FROM analysis b"
                " WHERE b.run_id = a.run_id AND b.name = a.name) ORDER BY a.name",
                (run_id, like))
        else:
            rows = self.conn.execute(
                "SELECT name, step, payload FROM analysis WHERE run_id = ? AND name LIKE ?"
                " ESCAPE '\\' AND step = ? ORDER BY name", (run_id, like, step))
        return {r[0]: (r[1], json.loads(r[2])) for r in rows}

    def latest_routing(self, run_id: int, step: int | None = None
                       ) -> dict[int, tuple[int, dict]]:
        """{layer: (step, payload)} of a run's routing analysis (newest, or at `step`)."""
        found = self.latest_analysis(run_id, ROUTING_PREFIX, step)
        return {int(payload["layer"]): (at, payload) for _, (at, payload) in found.items()}



def open_reader(home: str | Path) -> Reader:
    """A `Reader` of the store in the data home `home`; StoreError when there is none."""
    return Reader(db_path(Path(home)))
