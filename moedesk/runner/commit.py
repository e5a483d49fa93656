"""The supervisor's writes to the store, and what it does when the store refuses them.

`Committer.write(batch)` commits a batch in one transaction. When SQLite refuses (a lock
held past the supervisor's busy timeout, a full disk, an I/O error), nothing is lost and
the supervisor keeps reading the trainer: the batch goes to the run's spool
(`store/spool.py`; in memory if even that cannot be written), and the store is retried
with exponential backoff (`RETRY_FIRST_S` doubling to `RETRY_MAX_S`). The first write
that succeeds replays the spool, in order, and records what happened as a cleared
`store_unwritable` alert (and in train.log). If the store stays unwritable for
`OUTAGE_LIMIT_S` (env `MOEDESK_STORE_OUTAGE_LIMIT_S`), `outage_exceeded` tells the
supervisor to stop the trainer cleanly (it checkpoints); the outcome is spooled too, so
the next command records it.

Checkpoints are pruned here, after the commit that lists the newer one: the rows up to a
checkpoint are in the store before an older checkpoint is deleted, so a resume always
has a checkpoint the stored rows reach (`runner/checkpoints.py` `prune_plan`).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from moedesk.paths import spool_file
from moedesk.runner.checkpoints import checkpoint_path, delete_checkpoint, prune_plan
from moedesk.store import runs as store_runs
from moedesk.store import spool
from moedesk.store.ingest import Batch, write_batch

RETRY_FIRST_S = 0.5
RETRY_MAX_S = 8.0
OUTAGE_LIMIT_S = 120.0
OUTAGE_RULE = "store_unwritable"


def outage_limit() -> float:
    """The documented limit, or the environment's (tests use a few seconds)."""
    try:
        return float(os.environ.get("MOEDESK_STORE_OUTAGE_LIMIT_S", OUTAGE_LIMIT_S))
    except ValueError:
        return OUTAGE_LIMIT_S


class Committer:
    def __init__(self, conn: sqlite3.Connection, run_id: int, run_dir: Path, keep: int,
                 note: Callable[[str], None] = lambda _: None, owner: int | None = None):
        self.conn = conn
        self.run_id = run_id
        self.run_dir = Path(run_dir)
        self.keep = keep
        self.note = note  # a line for train.log
        self.owner = owner  # the supervisor pid that owns the run's row
        self.spool_path = spool_file(self.run_dir)
        self.held: list[dict] = []  # records that not even the spool could take
        self.down_since: float | None = None
        self.error: str | None = None
        self.retry_at = 0.0
        self.backoff = RETRY_FIRST_S
        self.spooled_rows = 0
        self.rows_written = 0
        self.last_step = 0
        self.limit_s = outage_limit()

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def outage_s(self, now: float | None = None) -> float:
        return 0.0 if self.down_since is None else (now or time.monotonic()) - self.down_since

    def outage_exceeded(self) -> bool:
        return self.down and self.outage_s() > self.limit_s

    # writing

    def write(self, batch: Batch) -> None:
        """Commit `batch`, or spool it while the store is unwritable; never raises."""
        if not len(batch) and batch.last_step is None:
            return
        if batch.last_step is not None:
            self.last_step = max(self.last_step, batch.last_step)
        if self.down and time.monotonic() < self.retry_at:
            self._spool({"batch": batch.to_json()}, len(batch))
            return
        if self.down and not self._recover():
            self._spool({"batch": batch.to_json()}, len(batch))
            return
        try:
            write_batch(self.conn, self.run_id, batch)
        except sqlite3.Error as exc:
            self._failed(exc)
            self._spool({"batch": batch.to_json()}, len(batch))
            return
        self.rows_written += len(batch)
        if batch.checkpoints:
            self.prune()

    def retry_if_due(self) -> None:
        """Called on every supervisor tick: try the store again when the backoff is up."""
        if self.down and time.monotonic() >= self.retry_at:
            self._recover()

    def finish(self, status: str, exit_code: int | None, error: str | None,
               patience_s: float = 30.0) -> bool:
        """Record the run's end, retrying for `patience_s` while the store is down; if it
        never comes back, spool the outcome for the next command. True when recorded."""
        deadline = time.monotonic() + patience_s
        while True:
            if not self.down or self._recover():
                try:
                    store_runs.finish_run(self.conn, self.run_id, status, exit_code, error,
                                          owner=self.owner)
                    return True
                except sqlite3.Error as exc:
                    self._failed(exc)
            if time.monotonic() >= deadline:
                break
            time.sleep(min(self.backoff, max(0.0, deadline - time.monotonic())))
            self.retry_at = 0.0
        self._spool({"finish": {"status": status, "exit_code": exit_code, "error": error}}, 0)
        self.note(f"could not record the outcome ({status}): the store is still unwritable"
                  f" ({self.error}); it is spooled in {self.spool_path} for the next command")
        return False

    # pruning

    def prune(self) -> None:
        """Delete the checkpoints beyond `checkpoint.keep` (rows first, then files)."""
        try:
            steps = prune_plan(self.run_dir, store_runs.checkpoint_rows(self.conn, self.run_id),
                               self.keep)
            store_runs.drop_checkpoint_rows(self.conn, self.run_id, steps)
        except sqlite3.Error:
            return  # kept for now; the next commit prunes them
        for step in steps:
            try:
                delete_checkpoint(checkpoint_path(self.run_dir, step))
            except OSError:
                continue

    # the outage

    def _failed(self, exc: sqlite3.Error) -> None:
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        self.error = str(exc)
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.backoff = RETRY_FIRST_S
            self.note(f"the store is unwritable ({exc}); spooling events to {self.spool_path}"
                      f" and retrying (the trainer is stopped after {self.limit_s:.0f} s)")
        else:
            self.backoff = min(self.backoff * 2, RETRY_MAX_S)
        self.retry_at = time.monotonic() + self.backoff

    def _spool(self, record: dict, rows: int) -> None:
        self.spooled_rows += rows
        if not self.held:
            try:
                spool.append(self.spool_path, [record])
                return
            except OSError:
                pass
        self.held.append(record)  # the disk is full too: keep it until the store is back

    def _recover(self) -> bool:
        """Replay the spool and what is held in memory; True when the store is back."""
        try:
            if self.held:
                try:
                    spool.append(self.spool_path, self.held)
                    self.held = []
                except OSError:
                    for record in self.held:
                        if "batch" in record:
                            write_batch(self.conn, self.run_id, Batch.from_json(record["batch"]))
                    self.held = []
            replayed = spool.replay(self.conn, self.run_id, self.spool_path)
            seconds = self.outage_s()
            write_batch(self.conn, self.run_id, self._outage_alert(seconds))
        except (sqlite3.Error, OSError) as exc:
            if isinstance(exc, sqlite3.Error):
                self._failed(exc)
            else:
                self.retry_at = time.monotonic() + self.backoff
            return False
        rows = self.spooled_rows
        self.note(f"the store takes writes again after {seconds:.1f} s; {rows:,} spooled rows"
                  " replayed")
        self.down_since, self.error, self.spooled_rows = None, None, 0
        if replayed is not None and replayed.checkpoints:
            self.prune()
        return True

    def _outage_alert(self, seconds: float) -> Batch:
        step = self.last_step
        message = (f"the store was unwritable for {seconds:.0f} s ({self.error}); "
                   f"{self.spooled_rows:,} rows were spooled to {self.spool_path} and replayed")
        return Batch(alerts=[{"step": step, "rule": OUTAGE_RULE, "severity": "warning",
                              "metric": None, "value": seconds, "threshold": None,
                              "message": message, "wall": time.time(), "cleared_step": step,
                              "action": "Find what holds the database's write lock or fills"
                                        " its disk (docs/architecture.md, Faults)."}])


__all__ = ["Committer", "OUTAGE_LIMIT_S", "OUTAGE_RULE", "outage_limit"]
