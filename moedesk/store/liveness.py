"""Is a run's supervisor alive? What readers show, and what the next command records.

The stored status says what the supervisor last wrote; a reader combines it with the
supervisor's process (pid plus start time, so a reused pid is not mistaken for it) and
its heartbeat file (`RUN_DIR/heartbeat`, touched every `HEARTBEAT_S`):

- `running`, supervisor gone -> `crashed`;
- `queued`, supervisor gone (or none recorded `QUEUED_GRACE_S` after it was queued) ->
  `failed`: it died before starting the trainer;
- `queued`/`running`, supervisor alive but its heartbeat older than `HEARTBEAT_STALE_S`
  -> `unresponsive` (stopped with SIGSTOP, hung, a suspended laptop): never recorded.

`record_gone(reader)` is the short write path every command takes (`open_reader`, the
TUI's poller, the launcher): it records the first two in SQL with the reason, after
replaying what the dead supervisor spooled (`spool.py`), so SQL users see the truth too.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from moedesk.paths import heartbeat_file, spool_file, supervisor_log
from moedesk.store import runs as store_runs
from moedesk.store import spool
from moedesk.store.db import StoreError, connect_writer

HEARTBEAT_S = 2.0
HEARTBEAT_STALE_S = 15.0
QUEUED_GRACE_S = 30.0
# a command recording a crash waits at most this long for the write lock, then leaves it
# to the next command (readers never block on it)
RECORD_BUSY_MS = 2_000


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


def heartbeat_age(run_dir: str | Path | None, now: float | None = None) -> float | None:
    """Seconds since the supervisor's last heartbeat; None when it never wrote one."""
    if not run_dir:
        return None
    try:
        beat = os.stat(heartbeat_file(run_dir)).st_mtime
    except OSError:
        return None
    return max(0.0, (time.time() if now is None else now) - beat)


def touch_heartbeat(run_dir: Path) -> None:
    path = heartbeat_file(run_dir)
    try:
        os.utime(path)
    except FileNotFoundError:
        path.write_text(f"{os.getpid()}\n")


@dataclass
class Liveness:
    status: str  # what a reader shows
    reason: str | None  # why it differs from the stored status (None: it does not)


def liveness(row: sqlite3.Row | dict, now: float | None = None) -> Liveness:
    stored = row["status"]
    if stored not in store_runs.STORED_ACTIVE:
        return Liveness(stored, None)
    now = time.time() if now is None else now
    pid = row["supervisor_pid"]
    if process_alive(pid, row["supervisor_started"]):
        age = heartbeat_age(row["run_dir"], now)
        if age is not None and age > HEARTBEAT_STALE_S:
            return Liveness("unresponsive", f"supervisor {pid} has not written a heartbeat for"
                                            f" {age:.0f} s (frozen, stopped or hung)")
        return Liveness(stored, None)
    if stored == "running":
        return Liveness("crashed", f"the supervisor (pid {pid}) is gone; the run was not"
                                   " recorded as ended: it crashed or was killed")
    if pid:
        return Liveness("failed", f"the supervisor (pid {pid}) exited before starting the"
                                  f" trainer{_log_hint(row)}")
    queued_at = _key(row, "queued_at") or row["created_at"] or now
    if now - queued_at > QUEUED_GRACE_S:
        return Liveness("failed", f"no supervisor started within {QUEUED_GRACE_S:.0f} s of"
                                  " queueing the run (the launching command died?)")
    return Liveness(stored, None)


def effective_status(row: sqlite3.Row | dict) -> str:
    return liveness(row).status


def _key(row, key: str):
    try:
        return row[key]
    except (KeyError, IndexError):
        return None


def _log_hint(row) -> str:
    if not row["run_dir"]:
        return ""
    try:
        with open(supervisor_log(row["run_dir"]), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 2000))
            lines = f.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return f"; its log ({supervisor_log(row['run_dir'])}) ends: {lines[-1]}" if lines else ""


@dataclass
class Recorded:
    run_id: int
    status: str  # what was recorded
    reason: str


def record_gone(db_path: Path, rows: list, now: float | None = None) -> list[Recorded]:
    """Record every run among `rows` (stored-status rows) whose supervisor is gone:
    replay its spool, then its final status (the spooled outcome if it wrote one, else
    crashed/failed with the reason). Best effort: a store that cannot be written now (a
    read-only copy, a lock held elsewhere) is left to the next command."""
    gone = []
    for row in rows:
        found = liveness(row, now)
        if found.status in ("crashed", "failed") and found.reason:
            gone.append((row, found))
    if not gone or not os.access(Path(db_path).parent, os.W_OK):
        return []
    try:
        db = connect_writer(db_path, busy_timeout_ms=RECORD_BUSY_MS)
    except StoreError:
        return []
    out = []
    try:
        for row, found in gone:
            out += record_end(db.conn, row, found.status, found.reason)
    except sqlite3.Error:
        pass
    finally:
        db.close()
    return out


def record_end(conn: sqlite3.Connection, row, status: str, reason: str) -> list[Recorded]:
    """Record that a run whose supervisor is gone ended with `status`: its spool first
    (and the outcome it spooled, if any), only if the row is still as `row` says."""
    exit_code = None
    if row["run_dir"]:
        replayed = spool.replay(conn, row["id"], spool_file(row["run_dir"]))
        finish = replayed.finish if replayed is not None else None
        if finish and finish.get("status") in store_runs.STATUSES:
            # the supervisor knew the outcome but could not write it: that is the truth
            status, exit_code = finish["status"], finish.get("exit_code")
            reason = "\n".join(filter(None, [finish.get("error"), "(recorded from the"
                                              " supervisor's spool after it exited)"]))
    beat = heartbeat_age(row["run_dir"])
    last_beat = None if beat is None else time.time() - beat
    if store_runs.record_gone(conn, row["id"], status, reason, row["status"],
                              row["supervisor_pid"], exit_code, ended_at=last_beat):
        return [Recorded(row["id"], status, reason)]
    return []


__all__ = ["HEARTBEAT_S", "HEARTBEAT_STALE_S", "QUEUED_GRACE_S", "Liveness", "Recorded",
           "effective_status", "heartbeat_age", "liveness", "process_alive", "record_end",
           "record_gone", "touch_heartbeat"]
