"""Run names and ids: one name per run, unique within a home; ids never reused.

A run is addressed by id or by name everywhere (`moedesk show 3`, `show tiny-topk-3`),
so a name must be unique and must not read as an id. Rules (docs/schema.md):

- a name given with `--name` (or `rename`) that is taken, purely numeric, empty, longer
  than `MAX_NAME` or holds a control character is refused with `NameRefused`;
- the default name `PROFILE-ID` gets a suffix `-2`, `-3`, ... in the rare case that a
  run was already given exactly that name by hand;
- ids are never reused: a new id is above every id a run ever had, removed runs
  (the `removed_runs` table) included, so `run 14` in an old log or manifest never
  names a different run.

Callers hold the writer's transaction (`create_run`, `rename`), so the check and the
write are one step; the unique index `runs_name` (migration m007_housekeeping, which
renamed older duplicates and numeric names to NAME-ID) backs it up.
"""

from __future__ import annotations

import sqlite3

from moedesk.store.db import StoreError

MAX_NAME = 100


class NameRefused(StoreError):
    """A run name that cannot be used; the message says why and what to do."""


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                        (name,)).fetchone() is not None


def next_run_id(conn: sqlite3.Connection) -> int:
    """The id the next run gets: above every live and every removed run's id."""
    top = conn.execute("SELECT COALESCE(MAX(id), 0) FROM runs").fetchone()[0]
    if _has_table(conn, "removed_runs"):
        top = max(top, conn.execute("SELECT COALESCE(MAX(id), 0) FROM removed_runs").fetchone()[0])
    return int(top) + 1


def holder(conn: sqlite3.Connection, name: str) -> int | None:
    """The id of the run called `name`, if any."""
    row = conn.execute("SELECT id FROM runs WHERE name = ? ORDER BY id LIMIT 1", (name,)).fetchone()
    return None if row is None else int(row[0])


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a run name (taken or not), or None."""
    if not name.strip():
        return "a run name must not be empty"
    if name != name.strip():
        return f"run name {name!r} starts or ends with a space"
    if name.isdigit():
        return (f"run name {name!r} is a number, which reads as a run id; add a letter "
                f"(for example 'run-{name}')")
    if len(name) > MAX_NAME:
        return f"run name is {len(name)} characters long; at most {MAX_NAME}"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "a run name must not hold control characters (newlines, tabs, ...)"
    return None


def check_name(conn: sqlite3.Connection, name: str, run_id: int | None = None) -> str:
    """`name` when run `run_id` (or a new run) may take it; NameRefused otherwise."""
    problem = name_problem(name)
    if problem:
        raise NameRefused(problem)
    taken = holder(conn, name)
    if taken is not None and taken != run_id:
        raise NameRefused(f"run name {name!r} is taken by run {taken}; names are unique within "
                          f"a home: pick another, or rename that run (moedesk rename {taken} NEW)")
    return name


def default_name(conn: sqlite3.Connection, prefix: str, run_id: int) -> str:
    """`PREFIX-ID`, or `PREFIX-ID-2`, `-3`, ... when a run was already named that by hand."""
    base = f"{prefix}-{run_id}"
    name, n = base, 1
    while holder(conn, name) not in (None, run_id):
        n += 1
        name = f"{base}-{n}"
    return name


__all__ = ["NameRefused", "MAX_NAME", "next_run_id", "holder", "name_problem", "check_name",
           "default_name"]
