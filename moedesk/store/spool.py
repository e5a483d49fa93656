"""The spool: what a supervisor could not commit, kept in `RUN_DIR/spool.jsonl`.

One JSON object per line: `{"batch": Batch.to_json()}` or `{"finish": {status,
exit_code, error}}`. The supervisor appends to it while the store is unwritable (a lock
held past its busy timeout, a full disk) and replays it, in order, when the store takes
writes again; if the supervisor dies first, the next command that finds it gone replays
it (`liveness.record_gone`). Batch writes are idempotent (`ingest.write_batch`), so a
replay cut short by a crash is simply replayed again: the file is removed only after its
last record is committed. A torn last line (a kill mid-append) is skipped: it was never
committed, and the checkpoints it covers were not pruned (pruning follows a commit).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from moedesk.store.ingest import MAX_REPLAY_ROWS, Batch, write_batch


def append(path: Path, records: list[dict]) -> None:
    """Append records and flush them to the OS (OSError, e.g. ENOSPC, to the caller)."""
    text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()


def records(path: Path) -> Iterator[dict]:
    """The readable records of a spool, in order; torn or foreign lines are skipped."""
    try:
        f = open(path, encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    with f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


@dataclass
class Replayed:
    rows: int  # rows written (or found already written)
    last_step: int | None  # the newest step the spool reached
    checkpoints: int  # checkpoint rows among them
    finish: dict | None  # the outcome the supervisor could not record, if it spooled one


def replay(conn: sqlite3.Connection, run_id: int, path: Path) -> Replayed | None:
    """Write a spool's batches (merged up to MAX_REPLAY_ROWS per transaction), then remove
    the file. None when there is no spool. sqlite3 errors propagate; the file stays."""
    if not Path(path).exists():
        return None
    done = Replayed(0, None, 0, None)
    pending = Batch()

    def commit() -> None:
        nonlocal pending
        write_batch(conn, run_id, pending)
        done.rows += len(pending)
        done.checkpoints += len(pending.checkpoints)
        if pending.last_step is not None:
            done.last_step = max(done.last_step or 0, pending.last_step)
        pending = Batch()

    for record in records(path):
        if isinstance(record.get("batch"), dict):
            try:
                pending.extend(Batch.from_json(record["batch"]))
            except (TypeError, ValueError, KeyError):
                continue
            if len(pending) >= MAX_REPLAY_ROWS:
                commit()
        elif isinstance(record.get("finish"), dict):
            done.finish = record["finish"]
    if len(pending) or pending.last_step is not None:
        commit()
    Path(path).unlink(missing_ok=True)
    return done


__all__ = ["append", "records", "replay", "Replayed"]
