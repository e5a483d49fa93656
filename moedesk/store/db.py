"""Connections to runs/moedesk.db: writers migrate and use WAL; readers are read-only.

Every connection gets a busy timeout. Writers take `BEGIN IMMEDIATE` for each
transaction (see `transaction`), so two writers never deadlock upgrading a read
lock: that upgrade is where "database is locked" comes from in other trackers.

Every failure to open is a `StoreError` whose message names the file and says what to
do: `StoreMissing` (no store yet), `StoreDamaged` (what `PRAGMA integrity_check` found,
and how to recover), or a plain `StoreError` (a home that is a file, read-only, full).
A first start that fails leaves nothing behind: no half-made database.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlite_utils import Database

from moedesk.store.migrations import migrations

BUSY_TIMEOUT_MS = 30_000
# what a damage report quotes of `PRAGMA integrity_check`
DAMAGE_LINES = 5
# `check_writable` reads the whole file up to this size (about 1 s per 100 MB here);
# above it, the tables the CLI writes (a full check of a big store takes seconds)
FULL_CHECK_MAX_BYTES = 128 * 1024 * 1024
CLI_TABLES = ("runs", "resumes", "checkpoints")


class StoreError(Exception):
    """A database problem worth a clear message (missing, unreadable, read-only)."""


class StoreMissing(StoreError):
    """No store at that path yet (nothing was ever run there, or it is being created)."""


class StoreDamaged(StoreError):
    """The file is not a healthy SQLite database; the message says what was found."""


def _tune(conn: sqlite3.Connection, busy_ms: int = BUSY_TIMEOUT_MS) -> None:
    conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
    conn.execute("PRAGMA foreign_keys = ON")


# what a call into sqlite3 can raise on a damaged file: its own errors, and a
# UnicodeDecodeError when a page of garbage makes SQLite's message (or a text) not UTF-8
SQLITE_ERRORS = (sqlite3.Error, UnicodeDecodeError)


def is_damage(exc: BaseException) -> bool:
    """Whether an sqlite3 error means a damaged file (not a lock, a full disk, a typo). A
    UnicodeDecodeError out of sqlite3 is damage too: a page of garbage in the schema makes
    SQLite's error message (or a text value) bytes that are not UTF-8."""
    if isinstance(exc, UnicodeDecodeError):
        return True
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_CORRUPT") or name == "SQLITE_NOTADB":
        return True
    text = str(exc)
    return any(s in text for s in ("malformed", "not a database", "Could not decode"))


def integrity_problems(path: Path, limit: int = DAMAGE_LINES) -> list[str]:
    """The first lines `PRAGMA integrity_check` reports for the file (["ok"] if healthy)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return [r[0] for r in conn.execute(f"PRAGMA integrity_check({int(limit)})")]
        finally:
            conn.close()
    except UnicodeDecodeError:
        return ["pages that should hold UTF-8 text hold other bytes"]
    except sqlite3.Error as exc:
        return [str(exc)]


def damaged(path: Path, problems: list[str] | None = None) -> StoreDamaged:
    """The error every command reports for a damaged store: what was found, how to recover."""
    path = Path(path)
    if path.is_dir():
        found = "it is a folder, not a database file"
    else:
        found = "; ".join(problems if problems is not None else integrity_problems(path))
    return StoreDamaged(
        f"the store at {path} is damaged: {found}. moedesk will not write into it. To recover:"
        f" stop its runs, move it aside (mv {path} {path}.damaged) and salvage what is readable"
        f" with `sqlite3 {path}.damaged .recover | sqlite3 {path}`; run folders and"
        " checkpoints beside it are untouched")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _prepare_home(home: Path) -> None:
    """Create the data home, or say clearly why it cannot be one."""
    if home.exists() and not home.is_dir():
        raise StoreError(f"cannot use {home} as the data home: it is a file, not a folder"
                         " (pass another --home)")
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the data home {home}: {_reason(exc)}"
                         " (pass another --home)") from None
    if not os.access(home, os.W_OK | os.X_OK):
        raise StoreError(f"cannot write in the data home {home}: permission denied or a"
                         " read-only file system (pass another --home)")


def _remove_new_files(path: Path) -> None:
    """A first start that failed: remove what it made, so no half-made store is left."""
    for suffix in ("", "-wal", "-shm", "-journal", ".migrate.lock"):
        try:
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        except OSError:
            pass


def connect_writer(path: Path, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> Database:
    """A read-write connection; creates and migrates the database when needed.

    StoreError (never a traceback) when the home cannot hold a store, the disk is full,
    or the file is damaged (`StoreDamaged`)."""
    path = Path(path)
    _prepare_home(path.parent)
    if path.is_dir():
        raise damaged(path)
    created = not path.exists()
    conn = None
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000,
                               check_same_thread=False)
        _tune(conn, busy_timeout_ms)
        # WAL is persistent in the file; setting it is cheap once it is on
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        db = Database(conn)
        _migrate(db, path)
        return db
    except (*SQLITE_ERRORS, OSError) as exc:
        if conn is not None:
            conn.close()
        if created:
            _remove_new_files(path)
            raise StoreError(f"cannot create the store at {path}: {_reason(exc)}; nothing was"
                             " left behind") from None
        if is_damage(exc):
            raise damaged(path) from None
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "full" in str(exc):
            raise StoreError(f"cannot write the store at {path}: the disk is full") from None
        raise StoreError(f"cannot write the store at {path}: {_reason(exc)}") from None


def check_writable(db: Database, path: Path) -> None:
    """Refuse to add a run to a damaged store: `PRAGMA quick_check` of the whole file (up
    to FULL_CHECK_MAX_BYTES; the tables the CLI writes above that). StoreDamaged if not ok."""
    path = Path(path)
    try:
        size = path.stat().st_size
        targets = [""] if size <= FULL_CHECK_MAX_BYTES else [f"({t})" for t in CLI_TABLES]
        problems = []
        for target in targets:
            rows = [r[0] for r in db.conn.execute(f"PRAGMA quick_check{target}")]
            problems += [r for r in rows if r != "ok"]
    except SQLITE_ERRORS as exc:
        problems = [str(exc)]
    if problems:
        raise damaged(path, problems[:DAMAGE_LINES])


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


def _being_created(path: Path) -> bool:
    """Whether a writer holds the migration lock (a first start is creating the schema)."""
    try:
        with open(path.with_name(path.name + ".migrate.lock"), "rb") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(lock, fcntl.LOCK_UN)
            return False
    except OSError:
        return False


def _open_ro(path: Path, immutable: bool) -> sqlite3.Connection:
    flags = "mode=ro&immutable=1" if immutable else "mode=ro"
    conn = sqlite3.connect(f"file:{path}?{flags}", uri=True, isolation_level=None,
                           timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    _tune(conn)
    conn.execute("PRAGMA query_only = ON")
    return conn


def connect_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection (`mode=ro`, `query_only`). StoreMissing if absent,
    StoreDamaged if damaged. A store on a read-only mount (no `-shm` can be made) is
    opened `immutable=1`: a snapshot as of its last checkpoint (docs/schema.md)."""
    path = Path(path)
    if not path.exists():
        raise StoreMissing(f"no moedesk database at {path} (run something first, or pass --home)")
    if path.is_dir():
        raise damaged(path)
    conn = None
    try:
        try:
            conn = _open_ro(path, immutable=False)
            ready = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone()
        except sqlite3.OperationalError as exc:
            if conn is not None:
                conn.close()
            if "unable to open" not in str(exc) or os.access(path.parent, os.W_OK):
                raise
            conn = _open_ro(path, immutable=True)  # a read-only copy: no -shm possible
            ready = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone()
    except SQLITE_ERRORS as exc:
        if conn is not None:
            conn.close()
        # the schema is a few kB: "too big" reading it means a damaged page says otherwise
        if is_damage(exc) or getattr(exc, "sqlite_errorname", "") == "SQLITE_TOOBIG":
            raise damaged(path) from None
        raise StoreError(f"cannot open {path} read-only: {exc}") from None
    if not ready:
        conn.close()
        if _being_created(path) or _recent(path):
            raise StoreMissing(f"no moedesk database at {path} yet (it is being created)")
        raise StoreDamaged(f"{path} is not a moedesk store (it has no `runs` table): move it"
                           " aside or pass another --home")
    conn.row_factory = sqlite3.Row
    return conn


def _recent(path: Path, seconds: float = 30.0) -> bool:
    """Made in the last `seconds`: a first start may be between creating the file and
    taking the migration lock."""
    try:
        return time.time() - path.stat().st_mtime < seconds
    except OSError:
        return False


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) on an autocommit connection."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
