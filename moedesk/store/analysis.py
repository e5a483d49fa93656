"""The `analysis` table: analysis results a trainer emits, e.g. the routing analysis.

One row per (run, step, name): `payload` is the JSON object of the `analysis` event
(`routing/L{layer}` payloads are described in docs/schema.md). Writes happen inside the
supervisor's batch transaction (`insert_rows`); reads take a `Reader` or a connection,
so the CLI and the TUI call them the same way.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

ROUTING_PREFIX = "routing/"


def _conn(source: Any) -> sqlite3.Connection:
    # a moedesk Reader, a sqlite_utils Database, or a plain connection
    return getattr(source, "conn", source)


def insert_rows(conn: sqlite3.Connection, run_id: int, rows: list[tuple]) -> None:
    """Insert (step, name, payload_json, wall) rows; the caller holds the transaction."""
    conn.executemany("INSERT INTO analysis (run_id, step, name, payload, wall)"
                     " VALUES (?, ?, ?, ?, ?)", [(run_id, *row) for row in rows])


def analysis_names(source: Any, run_id: int) -> list[str]:
    """Every analysis name a run has, sorted (e.g. ["routing/L1"])."""
    return [r[0] for r in _conn(source).execute(
        "SELECT DISTINCT name FROM analysis WHERE run_id = ? ORDER BY name", (run_id,))]


def analysis_steps(source: Any, run_id: int, name: str) -> list[int]:
    return [r[0] for r in _conn(source).execute(
        "SELECT step FROM analysis WHERE run_id = ? AND name = ? ORDER BY step",
        (run_id, name))]


def latest_analysis(source: Any, run_id: int, prefix: str = "", step: int | None = None
                    ) -> dict[str, tuple[int, dict]]:
    """{name: (step, payload)}: the newest row (or the row at `step`) of each name that
    starts with `prefix`."""
    conn = _conn(source)
    like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    if step is None:
        rows = conn.execute(
            "SELECT a.name, a.step, a.payload FROM analysis a WHERE a.run_id = ?"
            " AND a.name LIKE ? ESCAPE '\\' AND a.step = (SELECT MAX(b.step) FROM analysis b"
            " WHERE b.run_id = a.run_id AND b.name = a.name) ORDER BY a.name",
            (run_id, like))
    else:
        rows = conn.execute(
            "SELECT name, step, payload FROM analysis WHERE run_id = ? AND name LIKE ?"
            " ESCAPE '\\' AND step = ? ORDER BY name", (run_id, like, step))
    return {r[0]: (r[1], json.loads(r[2])) for r in rows}


def analysis_history(source: Any, run_id: int, name: str) -> list[tuple[int, dict]]:
    """[(step, payload)] of one analysis name, oldest first."""
    return [(r[0], json.loads(r[1])) for r in _conn(source).execute(
        "SELECT step, payload FROM analysis WHERE run_id = ? AND name = ? ORDER BY step",
        (run_id, name))]


def analysis_since(source: Any, run_id: int, after_rowid: int = 0
                   ) -> tuple[list[tuple[int, str, dict]], int]:
    """(rows of (step, name, payload) newer than the cursor, new cursor): for live views."""
    rows = list(_conn(source).execute(
        "SELECT rowid, step, name, payload FROM analysis WHERE run_id = ? AND rowid > ?"
        " ORDER BY rowid", (run_id, after_rowid)))
    cursor = rows[-1][0] if rows else after_rowid
    return [(r[1], r[2], json.loads(r[3])) for r in rows], cursor


def latest_routing(source: Any, run_id: int, step: int | None = None) -> dict[int, tuple[int, dict]]:
    """{layer: (step, payload)} of a run's routing analysis (newest, or at `step`)."""
    found = latest_analysis(source, run_id, ROUTING_PREFIX, step)
    return {int(payload["layer"]): (at, payload) for _, (at, payload) in found.items()}


__all__ = ["insert_rows", "analysis_names", "analysis_steps", "latest_analysis",
           "analysis_history", "analysis_since", "latest_routing", "ROUTING_PREFIX"]
