"""Writes of external runs (kind `external`: a process moedesk did not start as a trainer).

Their `config_json` is moedesk's settings of the run (name, kind, MoE shape, health,
command) with the user's own config under `config` (built by `runner/external.py`,
documented in docs/tracking.md); it changes when the training process says more about
itself (`update_external`). Tags live in `run_tags` (`names.TAG_RULE`; tags that break it are
left out). Names are never refused: a taken or
invalid one becomes NAME-ID (`names.free_name`).
Each function is one short transaction on the supervisor's (or the CLI's) connection.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from moedesk.paths import run_dir
from moedesk.store import names
from moedesk.store.db import transaction
from moedesk.store.runs import CreatedRun

EXTERNAL_KIND = "external"


def create_external_run(conn: sqlite3.Connection, *, home: Path, config: dict,
                        default_stem: str, stop_on: str, tags: list[str] | tuple = ()
                        ) -> CreatedRun:
    """Insert a queued external run; its name is `config["name"]`, else STEM-ID."""
    steps = (config.get("train") or {}).get("steps") or None
    with transaction(conn):
        run_id = names.next_run_id(conn)
        name = names.free_name(conn, config.get("name") or f"{default_stem}-{run_id}", run_id,
                               default_stem)
        config = {**config, "name": name}
        conn.execute(
            "INSERT INTO runs (id, name, kind, profile_path, config_json, status, seed,"
            " total_steps, last_step, created_at, queued_at, stop_on, run_dir)"
            " VALUES (?, ?, ?, '', ?, 'queued', ?, ?, 0, ?, ?, ?, ?)",
            (run_id, name, EXTERNAL_KIND, json.dumps(config), config.get("seed"), steps,
             now := time.time(), now, stop_on, str(run_dir(home, run_id))))
        _insert_tags(conn, run_id, tags)
    return CreatedRun(run_id, name)


def update_external(conn: sqlite3.Connection, run_id: int, config: dict,
                    tags: list[str] | tuple = ()) -> None:
    """Store a run's new settings (name, total steps, stop_on follow the config) and tags."""
    steps = (config.get("train") or {}).get("steps") or None
    stop_on = (config.get("health") or {}).get("stop_on")
    with transaction(conn):
        config = {**config, "name": names.free_name(conn, config["name"], run_id, "external")}
        conn.execute("UPDATE runs SET name = ?, config_json = ?, seed = ?,"
                     " total_steps = COALESCE(?, total_steps), stop_on = COALESCE(?, stop_on)"
                     " WHERE id = ?", (config["name"], json.dumps(config), config.get("seed"),
                                       steps, stop_on, run_id))
        _insert_tags(conn, run_id, tags)


def _insert_tags(conn: sqlite3.Connection, run_id: int, tags) -> None:
    now = time.time()
    valid = [str(t) for t in tags if names.TAG_RE.fullmatch(str(t))]
    conn.executemany("INSERT OR IGNORE INTO run_tags (run_id, tag, created_at) VALUES (?, ?, ?)",
                     [(run_id, tag, now) for tag in dict.fromkeys(valid)])


def run_tags(conn: sqlite3.Connection, run_id: int) -> list[str]:
    return [r[0] for r in conn.execute("SELECT tag FROM run_tags WHERE run_id = ? ORDER BY tag",
                                       (run_id,))]


__all__ = ["EXTERNAL_KIND", "create_external_run", "update_external", "run_tags"]
