"""Run housekeeping, the Python API of `moedesk rm|prune|tag|untag|note|rename` (and the TUI).

**Removing runs, crash-safe.** `remove_runs` works in this order, so that a crash at any
point leaves no run half-listed (listed with its data or folder gone):

1. refuse the whole request if any run is still active (a live supervisor);
2. one transaction deletes every row of the runs (metrics, expert load, alerts,
   checkpoints, resumes, analysis, tags, the run row), clears forks' `parent_id`, and
   writes a tombstone to `removed_runs` (ids are never reused). After the commit the
   runs are gone from every listing at once; before it, nothing has changed;
3. each run folder (checkpoints, logs) is renamed to `HOME/.trash/ID`, then deleted.
   A folder left by a crash during this step belongs to a tombstoned id and is swept by
   the next `remove_runs`/`prune` (`sweep`); no other folder is ever deleted.

`plan_prune` picks finished runs by status, age and `keep_last`; `prune` removes them.
Tags (`TAG_RULE`) and notes live in `run_tags` and `runs.note`; names follow
`store/names.py`. Every function takes the data home and opens its own connections.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from moedesk.paths import db_path
from moedesk.store import names
from moedesk.store import runs as store_runs
from moedesk.store.db import StoreError, connect_writer, transaction
from moedesk.store.reads import RunInfo, open_reader

TRASH = ".trash"
FINISHED = ("completed", "failed", "stopped", "crashed")
# every table with a run_id column (tests/unit/test_housekeeping.py checks the schema agrees)
CHILD_TABLES = ("metrics", "expert_load", "alerts", "checkpoints", "resumes", "analysis",
                "samples", "run_tags")
DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class HousekeepingError(StoreError):
    """A housekeeping request that cannot be done; nothing was changed."""


@dataclass(frozen=True)
class Removed:
    run_id: int
    name: str
    status: str
    bytes_freed: int  # size of the run folder that was deleted


def folder_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def active(runs: list[RunInfo]) -> list[RunInfo]:
    """The runs that may not be removed: queued, running or unresponsive (the reader's
    effective status: a live supervisor, frozen or not, or a start still under way)."""
    return [r for r in runs if r.status in store_runs.ACTIVE]


def resolve(home: Path, refs: list[str | int]) -> list[RunInfo]:
    """The runs named by ids or names, each once, in the order given."""
    with open_reader(home) as reader:
        found: dict[int, RunInfo] = {}
        for ref in refs:
            info = reader.run(ref)
            found.setdefault(info.id, info)
    return list(found.values())


def _inside(home: Path, folder: Path) -> bool:
    try:
        folder.resolve().relative_to(home.resolve())
    except ValueError:
        return False
    return folder.resolve() != home.resolve()


def remove_runs(home: Path, refs: list[str | int]) -> list[Removed]:
    """Remove runs, their rows, checkpoints and folders (see the module doc)."""
    home = Path(home)
    runs = resolve(home, refs)
    busy = active(runs)
    if busy:
        raise HousekeepingError("; ".join(
            f"run {r.id} ({r.name}) is {r.status}: stop it first (moedesk stop {r.id})"
            for r in busy) + "; nothing was removed")
    folders = {r.id: Path(r.row["run_dir"] or home / str(r.id)) for r in runs}
    sizes = {i: folder_bytes(f) if f.is_dir() else 0 for i, f in folders.items()}
    db = connect_writer(db_path(home))
    try:
        with transaction(db.conn) as conn:
            now = time.time()
            for r in runs:
                row = conn.execute("SELECT status FROM runs WHERE id = ?", (r.id,)).fetchone()
                if row is None:
                    raise HousekeepingError(f"run {r.id} ({r.name}) was removed meanwhile; "
                                            "nothing was removed")
                if row[0] != r.row["stored_status"]:
                    # resumed (or ended) since it was read: a compare-and-set, like claims
                    raise HousekeepingError(f"run {r.id} ({r.name}) became {row[0]} meanwhile"
                                            " (a resume?); nothing was removed")
                for table in CHILD_TABLES:
                    conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (r.id,))
                conn.execute("UPDATE runs SET parent_id = NULL WHERE parent_id = ?", (r.id,))
                conn.execute("DELETE FROM runs WHERE id = ?", (r.id,))
                conn.execute("INSERT OR REPLACE INTO removed_runs (id, name, kind, status,"
                             " created_at, removed_at) VALUES (?, ?, ?, ?, ?, ?)",
                             (r.id, r.name, r.kind, r.status, r.created_at, now))
    finally:
        db.close()
    for r in runs:
        _delete_folder(home, folders[r.id], r.id)
    sweep(home)
    return [Removed(r.id, r.name, r.status, sizes[r.id]) for r in runs]


def _delete_folder(home: Path, folder: Path, run_id: int) -> None:
    if not folder.exists() or not _inside(home, folder):
        return
    trash = home / TRASH
    trash.mkdir(exist_ok=True)
    target = trash / f"{run_id}-{time.time_ns()}"
    os.replace(folder, target)  # atomic: the folder is either where it was or in the trash
    shutil.rmtree(target, ignore_errors=True)


def sweep(home: Path) -> list[Path]:
    """Delete what a crash mid-removal left: the trash, and folders of removed run ids."""
    home = Path(home)
    left: list[Path] = []
    trash = home / TRASH
    if trash.is_dir():
        for item in trash.iterdir():
            shutil.rmtree(item, ignore_errors=True)
            left.append(item)
    if not db_path(home).exists():
        return left
    with open_reader(home) as reader:
        removed = reader.removed_ids()
        live = {r.id for r in reader.runs()}
    for item in home.iterdir():
        if item.is_dir() and item.name.isdigit() and int(item.name) in removed \
                and int(item.name) not in live:
            _delete_folder(home, item, int(item.name))
            left.append(item)
    return left


def parse_duration(text: str) -> float:
    """'90s', '30m', '12h', '7d', '2w', '1d12h' -> seconds; ValueError naming the format."""
    spec = text.strip().lower().replace(" ", "")
    parts = DURATION_RE.findall(spec)
    if not spec or "".join(n + u for n, u in parts) != spec:
        raise ValueError(f"--older-than: got {text!r}; use a number and a unit (s, m, h, d, w), "
                         "e.g. 12h, 7d or 1d12h")
    return sum(float(n) * DURATION_UNITS[u] for n, u in parts)


def plan_prune(home: Path, *, statuses: tuple[str, ...] = (), older_than_s: float | None = None,
               keep_last: int | None = None, now: float | None = None) -> list[RunInfo]:
    """The finished runs a prune removes: matching every criterion given, minus the
    `keep_last` newest of them. Active runs are never candidates."""
    bad = [s for s in statuses if s not in FINISHED]
    if bad:
        raise HousekeepingError(f"--status: got {bad[0]!r}; allowed values: "
                                + ", ".join(FINISHED) + " (active runs are never pruned)")
    if not statuses and older_than_s is None and keep_last is None:
        raise HousekeepingError("say what to prune: --status, --older-than and/or --keep-last "
                                "(add --dry-run to see the runs first)")
    if keep_last is not None and keep_last < 0:
        raise HousekeepingError(f"--keep-last: got {keep_last}; must be >= 0")
    now = time.time() if now is None else now
    with open_reader(home) as reader:
        runs = reader.runs()
    picked = [r for r in runs if r.status in FINISHED
              and (not statuses or r.status in statuses)
              and (older_than_s is None or now - r.created_at > older_than_s)]
    picked.sort(key=lambda r: r.id)
    if keep_last:
        picked = picked[:-keep_last]
    return picked


def prune(home: Path, **criteria) -> list[Removed]:
    """Remove the runs `plan_prune(home, **criteria)` picks."""
    picked = plan_prune(home, **criteria)
    return remove_runs(home, [r.id for r in picked]) if picked else []


def check_tags(tags: list[str]) -> list[str]:
    bad = [t for t in tags if not names.TAG_RE.fullmatch(t)]
    if bad:
        raise HousekeepingError(f"tag {bad[0]!r}: {names.TAG_RULE}")
    return list(dict.fromkeys(tags))


def _one(home: Path, ref: str | int) -> RunInfo:
    (info,) = resolve(home, [ref])
    return info


def tag(home: Path, ref: str | int, tags: list[str]) -> tuple[RunInfo, list[str]]:
    """Add tags to a run; returns the run and its tags now, sorted."""
    tags = check_tags(tags)
    info = _one(home, ref)
    db = connect_writer(db_path(home))
    try:
        with transaction(db.conn) as conn:
            conn.executemany("INSERT OR IGNORE INTO run_tags (run_id, tag, created_at)"
                             " VALUES (?, ?, ?)", [(info.id, t, time.time()) for t in tags])
            now = [r[0] for r in conn.execute(
                "SELECT tag FROM run_tags WHERE run_id = ? ORDER BY tag", (info.id,))]
    finally:
        db.close()
    return info, now


def untag(home: Path, ref: str | int, tags: list[str]) -> tuple[RunInfo, list[str]]:
    """Remove tags from a run (absent ones are ignored); returns the run and its tags now."""
    info = _one(home, ref)
    db = connect_writer(db_path(home))
    try:
        with transaction(db.conn) as conn:
            conn.executemany("DELETE FROM run_tags WHERE run_id = ? AND tag = ?",
                             [(info.id, t) for t in tags])
            now = [r[0] for r in conn.execute(
                "SELECT tag FROM run_tags WHERE run_id = ? ORDER BY tag", (info.id,))]
    finally:
        db.close()
    return info, now


def set_note(home: Path, ref: str | int, text: str | None) -> RunInfo:
    """Set (or, with None or blank text, clear) a run's note."""
    info = _one(home, ref)
    note = text.strip() if text and text.strip() else None
    db = connect_writer(db_path(home))
    try:
        with transaction(db.conn) as conn:
            conn.execute("UPDATE runs SET note = ? WHERE id = ?", (note, info.id))
    finally:
        db.close()
    return info


def rename(home: Path, ref: str | int, new_name: str) -> tuple[RunInfo, str]:
    """Give a run a new name (unique, not numeric: store/names.py); returns (run, new)."""
    info = _one(home, ref)
    db = connect_writer(db_path(home))
    try:
        with transaction(db.conn) as conn:
            names.check_name(conn, new_name, info.id)
            conn.execute("UPDATE runs SET name = ? WHERE id = ?", (new_name, info.id))
    finally:
        db.close()
    return info, new_name


__all__ = ["HousekeepingError", "Removed", "remove_runs", "sweep", "plan_prune", "prune",
           "parse_duration", "active", "tag", "untag", "set_note", "rename", "check_tags", "resolve",
           "FINISHED"]
