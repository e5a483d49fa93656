"""Writes of external runs (kind `external`: a process moedesk did not start as a trainer).

Their `config_json` is moedesk's settings of the run (name, kind, MoE shape, health,
command) with the user's own config under `config` (built by `runner/external_run.py`,
documented in docs/tracking.md); it changes when the training process says more about
itself: the supervisor sends the change in its batches (`Batch.settings`, written by
store/ingest.py, so an unwritable store spools it), `update_external` writes it at once.
Tags live in `run_tags` (`names.TAG_RULE`; tags that break it are left out). Names are
never refused: a taken or invalid one becomes NAME-ID (`names.free_name`).
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
from moedesk.store.ingest import Batch, insert_tags, write_batch
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
        insert_tags(conn, run_id, tags)
    return CreatedRun(run_id, name)


def update_external(conn: sqlite3.Connection, run_id: int, config: dict,
                    tags: list[str] | tuple = ()) -> None:
    """Store a run's new settings (name, total steps, stop_on follow the config) and tags
    now. The supervisor sends the same change in its batches (`Batch.settings`), so an
    unwritable store spools it."""
    write_batch(conn, run_id, Batch(settings={"config": config, "tags": list(tags)}))


def run_tags(conn: sqlite3.Connection, run_id: int) -> list[str]:
    return [r[0] for r in conn.execute("SELECT tag FROM run_tags WHERE run_id = ? ORDER BY tag",
                                       (run_id,))]


__all__ = ["EXTERNAL_KIND", "create_external_run", "update_external", "run_tags"]
