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
renamed older duplicates and numeric names to NAME-ID) backs it up. Tags follow
`TAG_RULE` (the housekeeping commands, `moedesk watch --tag`, `moedesk.init(tags=)`).
"""

from __future__ import annotations

import re
import sqlite3

from moedesk.store.db import StoreError

MAX_NAME = 100
TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/+]{0,63}")
TAG_RULE = ("a tag is 1-64 letters, digits or _ . - / +, starting with a letter or digit "
            "(no spaces, no ':')")


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


def free_name(conn: sqlite3.Connection, wanted: str, run_id: int, fallback: str) -> str:
    """A name run `run_id` may take without refusing anyone: `wanted` when it is valid
    and free (or already its own), else `WANTED-ID` (`FALLBACK-ID` for an invalid one).
    For runs moedesk did not start (`moedesk.init`, `watch`), where a refusal would stop a
    training script over a label."""
    if name_problem(wanted) is None:
        if holder(conn, wanted) in (None, run_id):
            return wanted
        return default_name(conn, wanted, run_id)
    return default_name(conn, fallback, run_id)


__all__ = ["NameRefused", "MAX_NAME", "TAG_RE", "TAG_RULE", "free_name", "next_run_id",
           "holder", "name_problem", "check_name", "default_name"]
