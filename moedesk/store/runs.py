"""Run lifecycle writes: create, claim, start, finish, resume. One short transaction each.

One writer per run: a run is claimed by a compare-and-set inside `BEGIN IMMEDIATE`. A
resume requeues only a run that is not queued or running (`truncate_for_resume`), and a
supervisor starts only on a queued run nobody else supervises (`claim_supervisor`), so
two resumes at once give one run and one refusal. A supervisor's later writes name it
(`owner`), so one that lost its run (recorded gone, resumed by another) changes nothing.

Also the supervisor's two reads, made on its own writer connection (readers use
`reads.Reader`): what it starts the trainer from (`launch_row`) and what a resumed run's
health engine replays (`health_history`). Stored status values: queued, running,
completed, failed, stopped, crashed; readers add `unresponsive` (store/liveness.py).
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
from moedesk.store.ingest import Batch, write_batch

STATUSES = ("queued", "running", "completed", "failed", "stopped", "crashed")
# what a reader may show: a live supervisor with an old heartbeat is `unresponsive`
ACTIVE = ("queued", "running", "unresponsive")
STORED_ACTIVE = ("queued", "running")


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
            " total_steps, last_step, created_at, queued_at, parent_id, parent_step, stop_on,"
            " run_dir) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, 0, ?, ?, ?, ?, ?, ?)",
            (run_id, final_name, config["kind"], profile_path, json.dumps(config),
             config["seed"], config["train"]["steps"], now := time.time(), now, parent_id,
             parent_step, stop_on or config["health"]["stop_on"], str(run_dir(home, run_id))))
    return CreatedRun(run_id, final_name)


def launch_row(conn: sqlite3.Connection, run_id: int) -> LaunchRow:
    row = conn.execute("SELECT config_json, run_dir, stop_on FROM runs WHERE id = ?",
                       (run_id,)).fetchone()
    if row is None:
        raise LookupError(f"no run {run_id} in the store")
    return LaunchRow(json.loads(row[0]), Path(row[1]), row[2] or "critical")


def record_spawned(conn: sqlite3.Connection, run_id: int, pid: int, started: float) -> None:
    """The launcher's note of the supervisor it spawned, so a reader can tell at once
    when it dies before starting the trainer. A no-op if the supervisor wrote it first."""
    with transaction(conn):
        conn.execute("UPDATE runs SET supervisor_pid = ?, supervisor_started = ? WHERE id = ?"
                     " AND status = 'queued' AND supervisor_pid IS NULL", (pid, started, run_id))


def claim_supervisor(conn: sqlite3.Connection, run_id: int, pid: int, started: float
                     ) -> str | None:
    """Claim a queued run for the supervisor `pid`: None when claimed, else why not (the
    run is not queued, or another supervisor has it)."""
    with transaction(conn):
        cur = conn.execute(
            "UPDATE runs SET supervisor_pid = ?, supervisor_started = ? WHERE id = ? AND"
            " status = 'queued' AND (supervisor_pid IS NULL OR supervisor_pid = ?)",
            (pid, started, run_id, pid))
        if cur.rowcount == 1:
            return None
        row = conn.execute("SELECT status, supervisor_pid FROM runs WHERE id = ?",
                           (run_id,)).fetchone()
    if row is None:
        return f"no run {run_id} in the store"
    if row[0] != "queued":
        return f"run {run_id} is {row[0]}, not queued"
    return f"run {run_id} is already claimed by supervisor {row[1]}"


def set_supervisor(conn: sqlite3.Connection, run_id: int, pid: int, started: float) -> None:
    with transaction(conn):
        conn.execute("UPDATE runs SET supervisor_pid = ?, supervisor_started = ? WHERE id = ?",
                     (pid, started, run_id))


def mark_running(conn: sqlite3.Connection, run_id: int, trainer_pid: int,
                 owner: int | None = None) -> bool:
    """queued -> running with the trainer's pid; False (nothing changed) when `owner` is
    given and no longer supervises the run."""
    with transaction(conn):
        cur = conn.execute("UPDATE runs SET status = 'running', trainer_pid = ?,"
                           " started_at = COALESCE(started_at, ?) WHERE id = ?"
                           " AND (? IS NULL OR supervisor_pid = ?)",
                           (trainer_pid, time.time(), run_id, owner, owner))
    return cur.rowcount == 1


def record_started_event(conn: sqlite3.Connection, run_id: int, event: dict) -> None:
    """What the trainer's `started` event says (fixtures; the supervisor sends it in a
    batch, `ingest.Batch.started`)."""
    write_batch(conn, run_id, Batch(started=event))


def finish_run(conn: sqlite3.Connection, run_id: int, status: str, exit_code: int | None,
               error: str | None, owner: int | None = None) -> bool:
    """Record how a run ended; with `owner`, only while that supervisor still has it."""
    assert status in STATUSES, status
    with transaction(conn):
        cur = conn.execute("UPDATE runs SET status = ?, exit_code = ?, error = ?, ended_at = ?"
                           " WHERE id = ? AND (? IS NULL OR supervisor_pid = ?)",
                           (status, exit_code, error, time.time(), run_id, owner, owner))
    return cur.rowcount == 1


def record_gone(conn: sqlite3.Connection, run_id: int, status: str, error: str,
                seen_status: str, seen_pid: int | None, exit_code: int | None = None,
                ended_at: float | None = None) -> bool:
    """Record the end a reader found (a dead supervisor: crashed, or failed before it
    started the trainer), only if the row is still what the reader saw. `ended_at`
    defaults to the run's last sign of life: its newest metric, else now."""
    assert status in STATUSES, status
    if ended_at is None:
        last = conn.execute("SELECT MAX(wall) FROM metrics WHERE run_id = ?",
                            (run_id,)).fetchone()[0]
        ended_at = last if last is not None else time.time()
    with transaction(conn):
        cur = conn.execute("UPDATE runs SET status = ?, error = ?, ended_at = ?,"
                           " exit_code = COALESCE(?, exit_code)"
                           " WHERE id = ? AND status = ? AND supervisor_pid IS ?",
                           (status, error, ended_at, exit_code, run_id, seen_status,
                            seen_pid))
    return cur.rowcount == 1


def mark_crashed_if_active(conn: sqlite3.Connection, run_id: int, error: str) -> bool:
    """Record a crash whatever the row's supervisor; no-op if the run already ended."""
    with transaction(conn):
        cur = conn.execute("UPDATE runs SET status = 'crashed', error = ?, ended_at = ?"
                           " WHERE id = ? AND status IN ('queued', 'running')",
                           (error, time.time(), run_id))
    return cur.rowcount > 0


def claim_resume(conn: sqlite3.Connection, run_id: int, from_step: int, checkpoint: str,
                 gap: tuple[int, int] | None = None) -> bool:
    """Requeue an ended run for a resume from `from_step`, atomically: the one-writer claim.

    A compare-and-set inside `BEGIN IMMEDIATE`: False (nothing changed) when the run is
    queued or running, so of two resumes at once exactly one requeues it. Then, in the
    same transaction, `truncate_for_resume`'s deletes. `gap` = (first, last) steps no
    checkpoint could restore, recorded in `resumes`.
    """
    with transaction(conn):
        cur = conn.execute(
            "UPDATE runs SET status = 'queued' WHERE id = ? AND status NOT IN ('queued', 'running')",
            (run_id,))
        if cur.rowcount != 1:
            return False
        _requeue(conn, run_id, from_step, checkpoint, gap)
    return True


def truncate_for_resume(conn: sqlite3.Connection, run_id: int, from_step: int,
                        checkpoint: str, gap: tuple[int, int] | None = None) -> None:
    """Drop every row logged after `from_step` and requeue the run, whatever its status
    (fixtures; the launcher uses `claim_resume`, which refuses an active run).

    Curves never overlap after a resume: the steps the checkpoint does not cover are
    removed, and the resumed trainer logs them again.
    """
    with transaction(conn):
        _requeue(conn, run_id, from_step, checkpoint, gap)


def _requeue(conn: sqlite3.Connection, run_id: int, from_step: int, checkpoint: str,
             gap: tuple[int, int] | None) -> None:
    for table in ("metrics", "expert_load", "checkpoints", "analysis", "samples"):
        conn.execute(f"DELETE FROM {table} WHERE run_id = ? AND step > ?", (run_id, from_step))
    conn.execute("DELETE FROM alerts WHERE run_id = ? AND step > ?", (run_id, from_step))
    conn.execute("UPDATE alerts SET cleared_step = NULL WHERE run_id = ? AND cleared_step > ?",
                 (run_id, from_step))
    conn.execute("INSERT INTO resumes (run_id, from_step, checkpoint, wall, gap_from, gap_to)"
                 " VALUES (?,?,?,?,?,?)",
                 (run_id, from_step, checkpoint, time.time(), *(gap or (None, None))))
    conn.execute("UPDATE runs SET status = 'queued', last_step = ?, resumed_from_step = ?,"
                 " queued_at = ?, ended_at = NULL, exit_code = NULL, error = NULL,"
                 " supervisor_pid = NULL, supervisor_started = NULL, trainer_pid = NULL"
                 " WHERE id = ?", (from_step, from_step, time.time(), run_id))


def drop_checkpoint_rows(conn: sqlite3.Connection, run_id: int, steps: list[int]) -> None:
    """Forget checkpoints whose files were pruned or are gone."""
    if steps:
        with transaction(conn):
            conn.executemany("DELETE FROM checkpoints WHERE run_id = ? AND step = ?",
                             [(run_id, s) for s in steps])


def checkpoint_rows(conn: sqlite3.Connection, run_id: int) -> list[tuple[int, str]]:
    """(step, path) of a run's listed checkpoints, oldest first (the supervisor's pruning)."""
    return [(r[0], r[1]) for r in conn.execute(
        "SELECT step, path FROM checkpoints WHERE run_id = ? ORDER BY step", (run_id,))]


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
