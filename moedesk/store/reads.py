"""Everything readers (CLI, TUI) ask of the store, over one read-only connection.

Live views poll with a cursor per run (the last rowid they have) and fetch only
newer rows; nothing here re-reads a whole history on each tick. A run's status is what a
reader can tell (store/liveness.py: a dead supervisor is crashed, a frozen one
unresponsive). Every method turns a damaged file into `StoreDamaged` (the message every
command prints), never an sqlite3 traceback.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moedesk.paths import db_path
from moedesk.store.analysis import ROUTING_PREFIX
from moedesk.store.db import SQLITE_ERRORS, StoreError, connect_reader, damaged, is_damage
from moedesk.store.liveness import liveness, record_gone
from moedesk.store.query import MAX_LIMIT, run_guarded

SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
MAX_RUN_ID = 2**63 - 1  # SQLite's INTEGER
# the progress handler runs every this many SQLite VM steps (a few ms of work)
INTERRUPT_CHECK_STEPS = 100_000


def parse_run_id(ref: str) -> int | None:
    """A run reference that is an id: ASCII digits within SQLite's range (`²`, `１` and
    `99999999999999999999` are names, which then match no run)."""
    if ref.isascii() and ref.isdigit():
        value = int(ref)
        if value <= MAX_RUN_ID:
            return value
    return None


def _maps_damage(cls):
    """Wrap every public method so a damaged file raises StoreDamaged naming it."""
    def wrap(method):
        @functools.wraps(method)
        def guarded(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except SQLITE_ERRORS as exc:
                if is_damage(exc):
                    raise damaged(self.db_file) from None
                raise
        return guarded

    for name, value in list(vars(cls).items()):
        if callable(value) and not name.startswith("_"):
            setattr(cls, name, wrap(value))
    return cls


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


@_maps_damage
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
        found = liveness(row)
        # `row` keeps what is stored; `status` and `row["status"]` are what a reader can
        # tell (kept the same for callers that read either), `row["stored_status"]` the SQL
        d["stored_status"], d["status"], d["liveness"] = d["status"], found.status, found.reason
        if found.reason and not d["error"] and found.status != "unresponsive":
            d["error"] = found.reason  # what the next writer will record
        return RunInfo(d["id"], d["name"], d["kind"], d["status"], d["last_step"] or 0,
                       d["total_steps"], d["created_at"], d["started_at"], d["ended_at"], d)

    def record_gone(self) -> list:
        """Record in SQL the runs whose supervisor is gone (store/liveness.py); returns
        what was recorded. Opens a writer only when there is something to record."""
        rows = list(self.conn.execute("SELECT * FROM runs WHERE status IN ('queued', 'running')"))
        return record_gone(self.db_file, rows)

    def runs(self) -> list[RunInfo]:
        return [self._info(r) for r in self.conn.execute("SELECT * FROM runs ORDER BY id")]

    def run(self, ref: str | int) -> RunInfo:
        """A run by id or by name; StoreError naming the reference when absent."""
        ref = str(ref)
        row = None
        run_id = parse_run_id(ref)
        if run_id is not None:
            row = self.conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            row = self.conn.execute("SELECT * FROM runs WHERE name = ? ORDER BY id DESC",
                                    (ref,)).fetchone()
        if row is None:
            gone = self.removed(run_id) if run_id is not None else None
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
    # m007_housekeeping has no such tables: no tags, nothing removed)

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

    def best_checkpoint(self, run_id: int) -> dict | None:
        """The checkpoint row marked best (`[checkpoint] keep_best`), or None."""
        row = self.conn.execute("SELECT * FROM checkpoints WHERE run_id = ? AND best = 1",
                                (run_id,)).fetchone()
        return None if row is None else dict(row)

    def samples(self, run_id: int, after_rowid: int = 0, limit: int = 100) -> list[dict]:
        """The run's stored samples newer than the cursor, newest first (at most `limit`);
        each row carries its `rowid` (the next cursor is the first row's)."""
        return [dict(r) for r in self.conn.execute(
            "SELECT rowid, * FROM samples WHERE run_id = ? AND rowid > ? ORDER BY rowid DESC"
            " LIMIT ?", (run_id, after_rowid, limit))]

    def resumes(self, run_id: int) -> list[dict]:
        return [dict(r) for r in self.conn.execute(
            "SELECT * FROM resumes WHERE run_id = ? ORDER BY rowid", (run_id,))]

    def query(self, sql: str, params: tuple = (), limit: int = 1000
              ) -> tuple[list[str], list[tuple], bool]:
        """Run one read-only statement: (columns, rows, truncated). Anything but a read
        raises StoreError with the reason (`store/query.py` guards the statement)."""
        # an API caller's limit is clamped (the CLI's --limit is refused out of range)
        result = run_guarded(self.conn, sql, params, max(1, min(int(limit), MAX_LIMIT)))
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




def open_reader(home: str | Path, record: bool = True) -> Reader:
    """A `Reader` of the store in the data home `home`; StoreError when there is none.

    With `record`, runs whose supervisor is gone are first recorded as crashed or failed
    (`Reader.record_gone`): every command that reads the store writes down what it found."""
    reader = Reader(db_path(Path(home)))
    if record:
        try:
            reader.record_gone()
        except BaseException:
            reader.close()
            raise
    return reader
