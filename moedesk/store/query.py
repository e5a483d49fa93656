"""Users' SQL over the store, truly read-only: `moedesk query`, `Reader.query`.

A `mode=ro` connection with `PRAGMA query_only` still lets a statement create files
(`ATTACH 'x.db'` creates x.db, `VACUUM INTO` writes a copy) and set pragmas
(`PRAGMA writable_schema = ON`). So every statement runs under `guarded(conn)`:

- an authorizer (`Connection.set_authorizer`) that allows reading tables, SELECT,
  WITH RECURSIVE, pragmas that only read (`PRAGMA name`, `PRAGMA table_info(t)`) and
  functions that neither touch files nor load code; everything else is denied at
  prepare time, before anything runs, so a refused statement has no side effect;
- limits (`Connection.setlimit`): no string or blob over `MAX_VALUE_BYTES` (so
  `randomblob(1e9)` fails at once instead of allocating a gigabyte), no attached
  database at all;
- `temp_store = MEMORY`: sorts and temporary b-trees never spill to temp files; with
  `heap_limit` they cannot exhaust memory. That is SQLite's hard heap limit: process-wide
  and one-way (a pragma can lower it, never raise it), so only a process that does
  nothing else sets it: the `moedesk query` command (`run_query`'s default);
- a progress handler every `PROGRESS_OPS` VM steps: `QueryGuard.cancel()` (another
  thread) or Ctrl-C (the handler lets Python run its signal handler) stops a runaway
  query, as does an optional deadline.

SQLite's own `-wal`/`-shm` sidecar files of moedesk.db, shared by every reader and
writer, are the only files a read can leave; no statement creates another.
Refusals raise `QueryRefused` (a StoreError) whose message names what was refused and why.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from moedesk.paths import db_path
from moedesk.store.db import SQLITE_ERRORS, StoreError, connect_reader, damaged, is_damage

MAX_VALUE_BYTES = 16 * 1024 * 1024  # the longest string or blob a query may build or return
DEFAULT_HEAP_LIMIT = 1024 ** 3  # what the CLI gives SQLite's heap in its own process
PROGRESS_OPS = 10_000  # VM steps between cancellation checks (well under a millisecond)
MAX_LIMIT = 1_000_000  # most rows one query returns

# pragmas that only read, and the ones of them whose argument names a table or index
READ_PRAGMAS = frozenset({
    "application_id", "auto_vacuum", "busy_timeout", "cache_size", "collation_list",
    "compile_options", "data_version", "database_list", "encoding", "foreign_key_check",
    "foreign_key_list", "foreign_keys", "freelist_count", "function_list", "index_info",
    "index_list", "index_xinfo", "integrity_check", "journal_mode", "module_list",
    "page_count", "page_size", "pragma_list", "query_only", "quick_check", "schema_version",
    "table_info", "table_list", "table_xinfo", "temp_store", "user_version", "wal_autocheckpoint",
})
ARGUMENT_PRAGMAS = frozenset({"foreign_key_check", "foreign_key_list", "index_info",
                              "index_list", "index_xinfo", "integrity_check", "quick_check",
                              "table_info", "table_list", "table_xinfo"})
# functions that read or write files or load code (core, FTS, the sqlite3 shell's, fileio)
FILE_FUNCTIONS = frozenset({"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer",
                            "zipfile", "sqlar_compress", "sqlar_uncompress", "lsdir", "fsdir"})

WRITE_CODES = {
    sqlite3.SQLITE_INSERT: "INSERT", sqlite3.SQLITE_UPDATE: "UPDATE",
    sqlite3.SQLITE_DELETE: "DELETE", sqlite3.SQLITE_ALTER_TABLE: "ALTER TABLE",
    sqlite3.SQLITE_ANALYZE: "ANALYZE", sqlite3.SQLITE_REINDEX: "REINDEX",
    sqlite3.SQLITE_CREATE_VTABLE: "CREATE VIRTUAL TABLE", sqlite3.SQLITE_DROP_VTABLE: "DROP TABLE",
    sqlite3.SQLITE_SAVEPOINT: "SAVEPOINT",
}
for _code in dir(sqlite3):
    if _code.startswith(("SQLITE_CREATE_", "SQLITE_DROP_")):
        WRITE_CODES.setdefault(getattr(sqlite3, _code), _code[7:].replace("_", " "))


class QueryRefused(StoreError):
    """A statement `moedesk query` does not run; the message says what and why."""


class QueryInterrupted(StoreError):
    """A query stopped by Ctrl-C, `cancel()` or its deadline."""


READ_ONLY = ("moedesk query is read-only: {what} is refused (only SELECT, WITH and reading "
             "PRAGMAs run; to change runs use moedesk rm, rename, tag or note)")


def _words(sql: str) -> list[str]:
    text = re.sub(r"(--[^\n]*\n?|/\*.*?\*/|\s+)", " ", sql, flags=re.S).strip()
    return text.upper().split(" ") if text else []


def _first_word(sql: str) -> str:
    words = _words(sql)
    return words[0] if words else ""


def _statement(sql: str) -> str | None:
    """What a write statement is, in its own words: "CREATE TEMP TABLE", "DELETE", ..."""
    words = _words(sql)
    if not words:
        return None
    if words[0] in ("CREATE", "DROP", "ALTER"):
        lead = []
        for word in words[1:]:
            lead.append(word)
            if word in ("TABLE", "INDEX", "VIEW", "TRIGGER"):
                break
        return " ".join([words[0], *lead[:3]])
    if words[0] in ("INSERT", "UPDATE", "DELETE", "REPLACE", "REINDEX", "ANALYZE",
                    "SAVEPOINT", "RELEASE"):
        return words[0]
    return None


@dataclass
class QueryGuard:
    """The authorizer and progress handler of one guarded statement (see module doc)."""

    sql: str = ""
    deadline: float | None = None
    denied: str | None = None  # the message of the first refusal
    _cancel: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Stop the running statement (safe from any thread)."""
        self._cancel.set()

    def _deny(self, message: str) -> int:
        if self.denied is None:
            self.denied = message
        return sqlite3.SQLITE_DENY

    def authorize(self, action: int, arg1, arg2, _db, _trigger) -> int:
        if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_UPDATE and arg1 in ("sqlite_master", "sqlite_schema") \
                and _first_word(self.sql) != "UPDATE":
            # SQLite asks this itself when it sets up an eponymous table (json_each,
            # pragma_table_info); the connection is mode=ro, so it could not write anyway
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION:
            if (arg2 or "").lower() in FILE_FUNCTIONS:
                return self._deny(f"{arg2}() is refused: moedesk query allows no function that "
                                  "reads or writes files or loads code")
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA:
            name = (arg1 or "").lower()
            if name in READ_PRAGMAS and (arg2 is None or name in ARGUMENT_PRAGMAS):
                return sqlite3.SQLITE_OK
            shown = f"PRAGMA {arg1}" + (f" = {arg2}" if arg2 is not None else "")
            return self._deny(f"{shown} is refused: moedesk query only reads pragmas "
                              "(PRAGMA table_info(runs), PRAGMA user_version, ...) and never "
                              "sets one")
        if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            if _first_word(self.sql) == "VACUUM":
                return self._deny("VACUUM is refused: moedesk query never rewrites the "
                                  "database or writes a copy of it (VACUUM INTO creates a file)")
            verb = "ATTACH" if action == sqlite3.SQLITE_ATTACH else "DETACH"
            return self._deny(f"{verb} is refused: moedesk query reads moedesk.db only and "
                              "never opens or creates another database file")
        if action == sqlite3.SQLITE_TRANSACTION:
            return self._deny(f"{(arg1 or 'a transaction').upper()} is refused: each "
                              "moedesk query is one read-only statement")
        what = _statement(self.sql) or WRITE_CODES.get(action) or "this statement"
        return self._deny(READ_ONLY.format(what=what))

    def progress(self) -> int:
        # called every PROGRESS_OPS VM steps; a pending Ctrl-C raises here, which SQLite
        # turns into an interrupt just like a non-zero return
        if self._cancel.is_set():
            return 1
        return int(self.deadline is not None and time.monotonic() > self.deadline)


@contextmanager
def guarded(conn: sqlite3.Connection, guard: QueryGuard,
            heap_limit: int | None = None) -> Iterator[QueryGuard]:
    """Run statements on `conn` under `guard`; the connection is restored afterwards."""
    conn.execute("PRAGMA temp_store = MEMORY")
    if heap_limit is not None:
        conn.execute(f"PRAGMA hard_heap_limit = {int(heap_limit)}")
    old = {limit: conn.setlimit(limit, value) for limit, value in (
        (sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES), (sqlite3.SQLITE_LIMIT_ATTACHED, 0))}
    conn.set_authorizer(guard.authorize)
    conn.set_progress_handler(guard.progress, PROGRESS_OPS)
    try:
        yield guard
    finally:
        conn.set_progress_handler(None, 0)
        conn.set_authorizer(None)
        for limit, value in old.items():
            conn.setlimit(limit, value)


def explain_error(exc: sqlite3.Error, guard: QueryGuard) -> StoreError:
    """The clear error for a failed guarded statement."""
    text = str(exc)
    if guard.denied is not None:
        return QueryRefused(guard.denied)
    if "interrupted" in text:
        why = "it ran past its time limit" if guard.deadline is not None and \
            time.monotonic() > guard.deadline else "Ctrl-C or cancel"
        return QueryInterrupted(f"query interrupted ({why})")
    if "too big" in text:
        return QueryRefused(f"a string or blob in this query exceeds moedesk query's limit "
                            f"of {MAX_VALUE_BYTES // 2**20} MiB; narrow it (substr, length)")
    if "out of memory" in text:
        return QueryRefused("the query needs more memory than moedesk query allows; narrow "
                            "it with WHERE or LIMIT")
    if "one statement at a time" in text:
        return QueryRefused("moedesk query runs one statement at a time")
    if "readonly" in text or "read-only" in text or "query_only" in text:
        return QueryRefused(READ_ONLY.format(what=_first_word(guard.sql) or "this statement"))
    return StoreError(f"SQL error: {text}")


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple]
    truncated: bool  # more rows than `limit` were available


def check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryRefused(f"--limit: got {limit}; must be between 1 and {MAX_LIMIT:,}")


def run_guarded(conn: sqlite3.Connection, sql: str, params: tuple = (), limit: int = 1000, *,
                guard: QueryGuard | None = None, timeout_s: float | None = None,
                heap_limit: int | None = None) -> QueryResult:
    """One read-only statement on `conn`: at most `limit` rows, or a clear StoreError."""
    check_limit(limit)
    guard = guard or QueryGuard()
    guard.sql = sql
    guard.deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with guarded(conn, guard, heap_limit):
        try:
            cur = conn.execute(sql, params)
            rows = [tuple(r) for r in cur.fetchmany(limit + 1)]
            columns = [d[0] for d in cur.description or []]
            cur.close()
        except SQLITE_ERRORS as exc:
            if is_damage(exc):
                raise  # the caller names the damaged file (Reader: StoreDamaged)
            raise explain_error(exc, guard) from None
        except MemoryError:  # SQLITE_NOMEM: the heap limit was reached
            raise QueryRefused("the query needs more memory than moedesk query allows "
                               f"({(heap_limit or 0) / 2**20:,.0f} MiB); narrow it with WHERE "
                               "or LIMIT") from None
        except KeyboardInterrupt:
            raise QueryInterrupted("query interrupted (Ctrl-C)") from None
    return QueryResult(columns, rows[:limit], len(rows) > limit)


def run_query(home: str | Path, sql: str, limit: int = 1000, *, guard: QueryGuard | None = None,
              timeout_s: float | None = None,
              heap_limit: int | None = DEFAULT_HEAP_LIMIT) -> QueryResult:
    """`moedesk query`: open the store of `home` read-only and run one guarded statement."""
    check_limit(limit)
    conn = connect_reader(db_path(Path(home)))
    try:
        return run_guarded(conn, sql, limit=limit, guard=guard, timeout_s=timeout_s,
                           heap_limit=heap_limit)
    except SQLITE_ERRORS as exc:
        if is_damage(exc):
            raise damaged(db_path(Path(home))) from None
        raise
    finally:
        conn.close()


__all__ = ["QueryGuard", "QueryRefused", "QueryInterrupted", "QueryResult", "run_query",
           "run_guarded", "guarded", "MAX_VALUE_BYTES", "MAX_LIMIT"]
