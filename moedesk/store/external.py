"""Writes of external runs (kind `external`: a process moedesk did not start as a trainer).

Their `config_json` is moedesk's settings of the run (name, kind, MoE shape, health,
command) with the user's own config under `config` (built by `runner/external.py`,
documented in docs/tracking.md); it changes when the training process says more about
itself (`update_external`). Tags live in the `tags` table (migration `m003_external`).
Each function is one short transaction on the supervisor's (or the CLI's) connection.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from moedesk.paths import run_dir
from moedesk.store.db import transaction
from moedesk.store.runs import CreatedRun

EXTERNAL_KIND = "external"


def create_external_run(conn: sqlite3.Connection, *, home: Path, config: dict,
                        default_stem: str, stop_on: str, tags: list[str] | tuple = ()
                        ) -> CreatedRun:
    """Insert a queued external run; its name is `config["name"]`, else STEM-ID."""
    steps = (config.get("train") or {}).get("steps") or None
    with transaction(conn):
        cur = conn.execute(
            "INSERT INTO runs (name, kind, profile_path, config_json, status, seed, total_steps,"
            " last_step, created_at, stop_on) VALUES (?, ?, '', ?, 'queued', ?, ?, 0, ?, ?)",
            (config.get("name") or default_stem, EXTERNAL_KIND, json.dumps(config),
             config.get("seed"), steps, time.time(), stop_on))
        run_id = int(cur.lastrowid)
        name = config.get("name") or f"{default_stem}-{run_id}"
        config = {**config, "name": name}
        conn.execute("UPDATE runs SET name = ?, run_dir = ?, config_json = ? WHERE id = ?",
                     (name, str(run_dir(home, run_id)), json.dumps(config), run_id))
        _insert_tags(conn, run_id, tags)
    return CreatedRun(run_id, name)


def update_external(conn: sqlite3.Connection, run_id: int, config: dict,
                    tags: list[str] | tuple = ()) -> None:
    """Store a run's new settings (name, total steps, stop_on follow the config) and tags."""
    steps = (config.get("train") or {}).get("steps") or None
    stop_on = (config.get("health") or {}).get("stop_on")
    with transaction(conn):
        conn.execute("UPDATE runs SET name = ?, config_json = ?, seed = ?,"
                     " total_steps = COALESCE(?, total_steps), stop_on = COALESCE(?, stop_on)"
                     " WHERE id = ?", (config["name"], json.dumps(config), config.get("seed"),
                                       steps, stop_on, run_id))
        _insert_tags(conn, run_id, tags)


def _insert_tags(conn: sqlite3.Connection, run_id: int, tags) -> None:
    now = time.time()
    conn.executemany("INSERT OR IGNORE INTO tags (run_id, tag, wall) VALUES (?, ?, ?)",
                     [(run_id, str(tag), now) for tag in tags])


def run_tags(conn: sqlite3.Connection, run_id: int) -> list[str]:
    return [r[0] for r in conn.execute("SELECT tag FROM tags WHERE run_id = ? ORDER BY rowid",
                                       (run_id,))]


__all__ = ["EXTERNAL_KIND", "create_external_run", "update_external", "run_tags"]
