"""Batched event writes: one `BEGIN IMMEDIATE` transaction per batch, executemany per table.

The supervisor is each run's only writer; it hands this module whole batches so a
reader sees a step's metrics, expert load and alerts appear together.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass, field

from moedesk.store.analysis import insert_rows as insert_analysis_rows
from moedesk.store.db import transaction


@dataclass
class Batch:
    metrics: list[tuple] = field(default_factory=list)  # (step, name, value, wall)
    expert_load: list[tuple] = field(default_factory=list)  # (step, layer, counts_json, wall)
    # (step, path, size, sha256, wall[, metric, score]): keep-best runs add the last two
    checkpoints: list[tuple] = field(default_factory=list)
    analysis: list[tuple] = field(default_factory=list)  # (step, name, payload_json, wall)
    # (step, prompt, text, temperature, seed, max_new_tokens, wall)
    samples: list[tuple] = field(default_factory=list)
    best_step: int | None = None  # the checkpoint the trainer now marks best
    alerts: list[dict] = field(default_factory=list)
    cleared: list[tuple] = field(default_factory=list)  # (alert_rule, cleared_step)
    last_step: int | None = None

    def __len__(self) -> int:
        return (len(self.metrics) + len(self.expert_load) + len(self.checkpoints)
                + len(self.alerts) + len(self.cleared) + len(self.analysis) + len(self.samples))

    def add_metrics(self, step: int, values: dict[str, float], wall: float) -> None:
        for name, value in values.items():
            # SQLite stores NaN as NULL; documented in docs/schema.md
            self.metrics.append((step, name, None if math.isnan(value) else value, wall))
        self.last_step = step if self.last_step is None else max(self.last_step, step)

    def add_expert_load(self, step: int, loads: dict, wall: float) -> None:
        for layer, counts in loads.items():
            self.expert_load.append((step, int(layer), json.dumps(counts), wall))
        self.last_step = step if self.last_step is None else max(self.last_step, step)


def write_batch(conn: sqlite3.Connection, run_id: int, batch: Batch) -> None:
    if not len(batch) and batch.last_step is None:
        return
    with transaction(conn):
        if batch.metrics:
            conn.executemany("INSERT INTO metrics (run_id, step, name, value, wall)"
                             " VALUES (?, ?, ?, ?, ?)",
                             [(run_id, *row) for row in batch.metrics])
        if batch.expert_load:
            conn.executemany("INSERT INTO expert_load (run_id, step, layer, counts, wall)"
                             " VALUES (?, ?, ?, ?, ?)",
                             [(run_id, *row) for row in batch.expert_load])
        if batch.checkpoints:
            conn.executemany("INSERT OR REPLACE INTO checkpoints (run_id, step, path, size,"
                             " sha256, wall, metric, score) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             [(run_id, *row, *(None,) * (7 - len(row)))
                              for row in batch.checkpoints])
        if batch.best_step is not None:
            conn.execute("UPDATE checkpoints SET best = (step = ?) WHERE run_id = ?",
                         (batch.best_step, run_id))
        if batch.samples:
            conn.executemany("INSERT INTO samples (run_id, step, prompt, text, temperature,"
                             " seed, max_new_tokens, wall) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             [(run_id, *row) for row in batch.samples])
        if batch.analysis:
            insert_analysis_rows(conn, run_id, batch.analysis)
        for alert in batch.alerts:
            conn.execute("INSERT INTO alerts (run_id, step, rule, severity, metric, value,"
                         " threshold, message, action, wall) VALUES (?,?,?,?,?,?,?,?,?,?)",
                         (run_id, alert["step"], alert["rule"], alert["severity"],
                          alert.get("metric"), alert.get("value"), alert.get("threshold"),
                          alert.get("message"), alert.get("action"), alert["wall"]))
        # `step < cleared` keeps an alert of the same rule fired later in this batch open
        for rule, step in batch.cleared:
            conn.execute("UPDATE alerts SET cleared_step = ? WHERE run_id = ? AND rule = ?"
                         " AND cleared_step IS NULL AND step < ?", (step, run_id, rule, step))
        if batch.last_step is not None:
            conn.execute("UPDATE runs SET last_step = MAX(COALESCE(last_step, 0), ?) WHERE id = ?",
                         (batch.last_step, run_id))
