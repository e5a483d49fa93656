"""Connections to runs/moedesk.db: writers migrate and use WAL; readers are read-only.

Every connection gets a busy timeout. Writers take `BEGIN IMMEDIATE` for each
transaction (see `transaction`), so two writers never deadlock upgrading a read
lock: that upgrade is where "database is locked" comes from in other trackers.
"""

from __future__ import annotations

import fcntl
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlite_utils import Database

from moedesk.store.migrations import migrations

BUSY_TIMEOUT_MS = 30_000


class StoreError(Exception):
    """A database problem worth a clear message (missing, unreadable, read-only)."""


def _tune(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")


def connect_writer(path: Path) -> Database:
    """A read-write connection; creates and migrates the database when needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                           check_same_thread=False)
    _tune(conn)
    # WAL is persistent in the file; setting it is cheap once it is on
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    db = Database(conn)
    _migrate(db, path)
    return db


def _migrate(db: Database, path: Path) -> None:
    if not migrations.pending(db):
        return
    # a file lock serialises first-time setup when several processes start together
    lock_path = path.with_name(path.name + ".migrate.lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            migrations.apply(db)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def connect_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection (`mode=ro`, `query_only`); raises StoreError if absent."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"no moedesk database at {path} (run something first, or pass --home)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                               timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        _tune(conn)
        conn.execute("PRAGMA query_only = ON")
        ready = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path} read-only: {exc}") from None
    if not ready:  # a writer is creating it right now
        conn.close()
        raise StoreError(f"no moedesk database at {path} yet (it is being created)")
    conn.row_factory = sqlite3.Row
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) on an autocommit connection."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
