"""Run lifecycle writes: create, start, finish, resume-truncate. One short transaction each.

Also the supervisor's two reads, made on its own writer connection (readers use
`reads.Reader`): what it starts the trainer from (`launch_row`) and what a resumed run's
health engine replays (`health_history`). Status values: queued, running, completed,
failed, stopped, crashed.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, NamedTuple

from moedesk.paths import run_dir
from moedesk.store import names
from moedesk.store.db import transaction

STATUSES = ("queued", "running", "completed", "failed", "stopped", "crashed")
ACTIVE = ("queued", "running")


class CreatedRun(NamedTuple):
    run_id: int
    name: str  # the final name: the one asked for, or PROFILE-ID


class LaunchRow(NamedTuple):
    """What the supervisor reads of its run before starting the trainer."""

    config: dict  # the resolved profile (`profile_to_dict` output)
    run_dir: Path
    stop_on: str  # the severity that stops the run: --stop-on, else the profile's


def create_run(conn: sqlite3.Connection, *, config: dict, profile_path: str, home: Path,
               name: str | None = None, parent_id: int | None = None,
               parent_step: int | None = None, stop_on: str | None = None) -> CreatedRun:
    """Insert a queued run row; returns its id and final name (default PROFILE-ID).

    A `name` that is taken or numeric is refused (`names.NameRefused`); ids are never
    reused (store/names.py)."""
    with transaction(conn):
        run_id = names.next_run_id(conn)
        final_name = names.check_name(conn, name) if name is not None else \
            names.default_name(conn, config["name"], run_id)
        conn.execute(
            "INSERT INTO runs (id, name, kind, profile_path, config_json, status, seed,"
            " total_steps, last_step, created_at, parent_id, parent_step, stop_on, run_dir)"
            " VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, 0, ?, ?, ?, ?, ?)",
            (run_id, final_name, config["kind"], profile_path, json.dumps(config),
             config["seed"], config["train"]["steps"], time.time(), parent_id, parent_step,
             stop_on or config["health"]["stop_on"], str(run_dir(home, run_id))))
    return CreatedRun(run_id, final_name)


def launch_row(conn: sqlite3.Connection, run_id: int) -> LaunchRow:
    row = conn.execute("SELECT config_json, run_dir, stop_on FROM runs WHERE id = ?",
                       (run_id,)).fetchone()
    if row is None:
        raise LookupError(f"no run {run_id} in the store")
    return LaunchRow(json.loads(row[0]), Path(row[1]), row[2] or "critical")


def set_supervisor(conn: sqlite3.Connection, run_id: int, pid: int, started: float) -> None:
    with transaction(conn):
        conn.execute("UPDATE runs SET supervisor_pid = ?, supervisor_started = ? WHERE id = ?",
                     (pid, started, run_id))


def mark_running(conn: sqlite3.Connection, run_id: int, trainer_pid: int) -> None:
    with transaction(conn):
        conn.execute("UPDATE runs SET status = 'running', trainer_pid = ?,"
                     " started_at = COALESCE(started_at, ?) WHERE id = ?",
                     (trainer_pid, time.time(), run_id))


def record_started_event(conn: sqlite3.Connection, run_id: int, event: dict) -> None:
    params = event.get("params") or {}
    with transaction(conn):
        conn.execute("UPDATE runs SET total_steps = COALESCE(?, total_steps), params_total = ?,"
                     " params_active = ?, device = ? WHERE id = ?",
                     (event.get("total_steps"), params.get("total"), params.get("active"),
                      event.get("device"), run_id))


def finish_run(conn: sqlite3.Connection, run_id: int, status: str, exit_code: int | None,
               error: str | None) -> None:
    assert status in STATUSES, status
    with transaction(conn):
        conn.execute("UPDATE runs SET status = ?, exit_code = ?, error = ?, ended_at = ?"
                     " WHERE id = ?", (status, exit_code, error, time.time(), run_id))


def mark_crashed_if_active(conn: sqlite3.Connection, run_id: int, error: str) -> bool:
    """Record a crash found by a reader (dead supervisor); no-op if the run already ended."""
    with transaction(conn):
        cur = conn.execute("UPDATE runs SET status = 'crashed', error = ?, ended_at = ?"
                           " WHERE id = ? AND status IN ('queued', 'running')",
                           (error, time.time(), run_id))
    return cur.rowcount > 0


def truncate_for_resume(conn: sqlite3.Connection, run_id: int, from_step: int,
                        checkpoint: str) -> None:
    """Drop every row logged after `from_step` and requeue the run, atomically.

    Curves never overlap after a resume: the steps the checkpoint does not cover are
    removed, and the resumed trainer logs them again.
    """
    with transaction(conn):
        for table in ("metrics", "expert_load", "checkpoints", "analysis"):
            conn.execute(f"DELETE FROM {table} WHERE run_id = ? AND step > ?", (run_id, from_step))
        conn.execute("DELETE FROM alerts WHERE run_id = ? AND step > ?", (run_id, from_step))
        conn.execute("UPDATE alerts SET cleared_step = NULL WHERE run_id = ? AND cleared_step > ?",
                     (run_id, from_step))
        conn.execute("INSERT INTO resumes (run_id, from_step, checkpoint, wall) VALUES (?,?,?,?)",
                     (run_id, from_step, checkpoint, time.time()))
        conn.execute("UPDATE runs SET status = 'queued', last_step = ?, resumed_from_step = ?,"
                     " ended_at = NULL, exit_code = NULL, error = NULL, supervisor_pid = NULL,"
                     " trainer_pid = NULL WHERE id = ?", (from_step, from_step, run_id))


def health_history(conn: sqlite3.Connection, run_id: int, names: tuple[str, ...]
                   ) -> tuple[list[tuple[int, dict[str, float], float]], list[str]]:
    """What a resumed run's health engine replays: its stored metrics among `names` (a
    name ending in "/" is a prefix) as (step, values, wall) per step, oldest first, and
    the rules whose alerts are still open. NULL values (stored NaN) come back as NaN."""
    exact = [n for n in names if not n.endswith("/")]
    prefixes = [n for n in names if n.endswith("/")]
    where = " OR ".join([f"name IN ({','.join('?' * len(exact))})"] * bool(exact)
                        + ["name LIKE ? ESCAPE '\\'"] * len(prefixes))
    args: list[Any] = [run_id, *exact,
                       *(p.replace("%", "\\%").replace("_", "\\_") + "%" for p in prefixes)]
    history: list[tuple[int, dict[str, float], float]] = []
    for step, name, value, wall in conn.execute(
            f"SELECT step, name, value, wall FROM metrics WHERE run_id = ? AND ({where})"
            " ORDER BY step, rowid", args):
        if not history or history[-1][0] != step:
            history.append((step, {}, wall or 0.0))
        history[-1][1][name] = float("nan") if value is None else value
    open_rules = [r[0] for r in conn.execute(
        "SELECT DISTINCT rule FROM alerts WHERE run_id = ? AND cleared_step IS NULL", (run_id,))]
    return history, open_rules
