"""Decoded trainer events -> batched SQLite writes and health evaluation.

`Ingestor` is the supervisor's whole write path: it buffers events, asks the health
engine about each metrics event, and commits at most every `flush_interval` seconds
(or sooner when a batch grows large) in one transaction.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable

from moedesk.runner.protocol import decode
from moedesk.store import runs as store_runs
from moedesk.store.ingest import Batch, write_batch

FLUSH_INTERVAL_S = 0.2
MAX_BATCH_ROWS = 20_000


class Ingestor:
    def __init__(self, conn: sqlite3.Connection, run_id: int, engine=None,
                 on_alert: Callable[[dict], None] | None = None,
                 flush_interval: float = FLUSH_INTERVAL_S):
        self.conn = conn
        self.run_id = run_id
        self.engine = engine
        self.on_alert = on_alert
        self.flush_interval = flush_interval
        self.batch = Batch()
        self.last_flush = time.monotonic()
        self.finished: dict | None = None
        self.started: dict | None = None
        self.last_step = 0
        self.rows_written = 0
        self.log_lines: list[str] = []

    def feed_line(self, line: str) -> None:
        decoded = decode(line)
        if decoded.event is None:
            if decoded.text.strip():
                self.log_lines.append(decoded.text)
            return
        self.feed(decoded.event)

    def feed(self, event: dict) -> None:
        kind = event["type"]
        step = int(event.get("step", self.last_step) or 0)
        wall = float(event.get("wall") or time.time())
        self.last_step = max(self.last_step, step)
        if kind == "metrics":
            values = event["values"]
            self.batch.add_metrics(step, values, wall)
            if self.engine is not None:
                self._apply_health(self.engine.observe(step, values, wall))
        elif kind == "expert_load":
            self.batch.add_expert_load(step, event.get("loads") or {}, wall)
        elif kind == "checkpoint":
            self.batch.checkpoints.append((step, event["path"], event.get("size"),
                                           event.get("sha256"), wall, event.get("metric"),
                                           event.get("score")))
            if event.get("best_step") is not None:
                self.batch.best_step = int(event["best_step"])
            # commit at once: a resume starts from a checkpoint the stored rows reach, so
            # the store should never lag far behind the checkpoints on disk
            self.flush()
        elif kind == "analysis":
            self.batch.analysis.append((step, str(event.get("name") or "analysis"),
                                        json.dumps(event.get("payload")), wall))
        elif kind == "sample":
            self.batch.samples.append((step, str(event.get("prompt", "")),
                                       str(event.get("text", "")), event.get("temperature"),
                                       event.get("seed"), event.get("max_new_tokens"), wall))
        elif kind == "started":
            self.started = event
            self.flush()
            store_runs.record_started_event(self.conn, self.run_id, event)
        elif kind == "finished":
            self.finished = event
        if len(self.batch) >= MAX_BATCH_ROWS:
            self.flush()

    def tick(self, now: float | None = None) -> None:
        """Flush when due and let time-based rules (stalled) look at the clock."""
        if self.engine is not None:
            self._apply_health(self.engine.tick(time.time() if now is None else now))
        if time.monotonic() - self.last_flush >= self.flush_interval:
            self.flush()

    def _apply_health(self, result) -> None:
        fired, cleared = result
        for alert in fired:
            self.batch.alerts.append(alert)
            if self.on_alert is not None:
                self.on_alert(alert)
        for rule, step in cleared:
            self.batch.cleared.append((rule, step))

    def flush(self) -> None:
        if len(self.batch) or self.batch.last_step is not None:
            write_batch(self.conn, self.run_id, self.batch)
            self.rows_written += len(self.batch)
            self.batch = Batch()
        self.last_flush = time.monotonic()
