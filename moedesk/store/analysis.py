"""The `analysis` table: analysis results a trainer emits, e.g. the routing analysis.

One row per (run, step, name): `payload` is the JSON object of the `analysis` event
(`routing/L{layer}` payloads are described in docs/schema.md). Writes happen inside the
supervisor's batch transaction (`insert_rows`); readers ask `Reader.analysis_names`,
`analysis_steps`, `latest_analysis` and `latest_routing` (reads.py).
"""

from __future__ import annotations

import sqlite3

ROUTING_PREFIX = "routing/"


def insert_rows(conn: sqlite3.Connection, run_id: int, rows: list[tuple]) -> None:
    """Insert (step, name, payload_json, wall) rows; the caller holds the transaction."""
    conn.executemany("INSERT OR IGNORE INTO analysis (run_id, step, name, payload, wall)"
                     " VALUES (?, ?, ?, ?, ?)", [(run_id, *row) for row in rows])


__all__ = ["insert_rows", "ROUTING_PREFIX"]
