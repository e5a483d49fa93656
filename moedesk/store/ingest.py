"""Batched event writes: one `BEGIN IMMEDIATE` transaction per batch, executemany per table.

The supervisor is each run's only writer; it hands this module whole batches so a
reader sees a step's metrics, expert load and alerts appear together. Writing a batch
twice changes nothing (metrics, expert load and analysis have unique keys and are
inserted OR IGNORE; an alert is inserted unless the same rule already fired at that
step; checkpoints are keyed by step), so a spooled batch can be replayed after a crash
without knowing whether it was committed (runner/spool.py).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from itertools import repeat

from moedesk.store import names
from moedesk.store.analysis import insert_rows as insert_analysis_rows
from moedesk.store.db import transaction

# a replayed spool is written in transactions of about this many rows
MAX_REPLAY_ROWS = 50_000


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
    started: dict | None = None  # the trainer's `started` event (total steps, params, device)
    # an external run's new settings, {"config": config_json, "tags": [...]} (runner/
    # external_run.py): in the batch, so a store outage spools them like any row
    settings: dict | None = None

    def to_json(self) -> dict:
        return {"metrics": self.metrics, "expert_load": self.expert_load,
                "checkpoints": self.checkpoints, "analysis": self.analysis,
                "samples": self.samples, "best_step": self.best_step,
                "alerts": self.alerts, "cleared": self.cleared, "last_step": self.last_step,
                "started": self.started, "settings": self.settings}

    @classmethod
    def from_json(cls, data: dict) -> Batch:
        return cls(*([tuple(r) for r in data.get(k) or []]
                     for k in ("metrics", "expert_load", "checkpoints", "analysis")),
                   samples=[tuple(r) for r in data.get("samples") or []],
                   best_step=data.get("best_step"), alerts=list(data.get("alerts") or []),
                   cleared=[tuple(r) for r in data.get("cleared") or []],
                   last_step=data.get("last_step"), started=data.get("started"),
                   settings=data.get("settings"))

    def extend(self, other: Batch) -> None:
        for name in ("metrics", "expert_load", "checkpoints", "analysis", "samples", "alerts",
                     "cleared"):
            getattr(self, name).extend(getattr(other, name))
        if other.last_step is not None:
            self.last_step = max(self.last_step or 0, other.last_step)
        if other.best_step is not None:
            self.best_step = other.best_step
        self.started = other.started or self.started
        if other.settings is not None:  # the newest config; tags add up
            tags = [*(self.settings or {}).get("tags", ()), *other.settings.get("tags", ())]
            self.settings = {**other.settings, "tags": tags}

    def __len__(self) -> int:
        return (len(self.metrics) + len(self.expert_load) + len(self.checkpoints)
                + len(self.alerts) + len(self.cleared) + len(self.analysis) + len(self.samples)
                + (self.started is not None) + (self.settings is not None))

    def add_metrics(self, step: int, values: dict[str, float], wall: float) -> None:
        # one C-level pass (a flooding trainer sends 100k values a second); SQLite itself
        # stores a NaN as NULL (docs/schema.md), so the values go in as they are
        self.metrics.extend(zip(repeat(step), values, values.values(), repeat(wall)))
        self.last_step = step if self.last_step is None else max(self.last_step, step)

    def add_expert_load(self, step: int, loads: dict, wall: float) -> None:
        for layer, counts in loads.items():
            self.expert_load.append((step, int(layer), json.dumps(counts), wall))
        self.last_step = step if self.last_step is None else max(self.last_step, step)


def write_batch(conn: sqlite3.Connection, run_id: int, batch: Batch) -> None:
    if not len(batch) and batch.last_step is None:
        return
    with transaction(conn):
        if batch.started is not None:
            _record_started(conn, run_id, batch.started)
        if batch.settings is not None:
            _record_settings(conn, run_id, batch.settings)
        if batch.metrics:
            # the run id is a literal (an int): the rows go to executemany as they are,
            # not copied into 5-tuples first
            conn.executemany("INSERT OR IGNORE INTO metrics (run_id, step, name, value, wall)"
                             f" VALUES ({int(run_id)}, ?, ?, ?, ?)", batch.metrics)
        if batch.expert_load:
            conn.executemany("INSERT OR IGNORE INTO expert_load (run_id, step, layer, counts,"
                             " wall)"
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
                         " threshold, message, action, wall, cleared_step)"
                         " SELECT ?,?,?,?,?,?,?,?,?,?,? WHERE NOT EXISTS (SELECT 1 FROM alerts"
                         " WHERE run_id = ? AND rule = ? AND step = ? AND severity = ?)",
                         (run_id, alert["step"], alert["rule"], alert["severity"],
                          alert.get("metric"), alert.get("value"), alert.get("threshold"),
                          alert.get("message"), alert.get("action"), alert["wall"],
                          alert.get("cleared_step"), run_id, alert["rule"], alert["step"],
                          alert["severity"]))
        # `step < cleared` keeps an alert of the same rule fired later in this batch open
        for rule, step in batch.cleared:
            conn.execute("UPDATE alerts SET cleared_step = ? WHERE run_id = ? AND rule = ?"
                         " AND cleared_step IS NULL AND step < ?", (step, run_id, rule, step))
        if batch.last_step is not None:
            conn.execute("UPDATE runs SET last_step = MAX(COALESCE(last_step, 0), ?) WHERE id = ?",
                         (batch.last_step, run_id))


def _record_started(conn: sqlite3.Connection, run_id: int, event: dict) -> None:
    params = event.get("params") or {}
    conn.execute("UPDATE runs SET total_steps = COALESCE(?, total_steps), params_total = ?,"
                 " params_active = ?, device = ? WHERE id = ?",
                 (event.get("total_steps"), params.get("total"), params.get("active"),
                  event.get("device"), run_id))


def _record_settings(conn: sqlite3.Connection, run_id: int, settings: dict) -> None:
    """An external run's new config_json (its name, total steps and stop_on follow it;
    a taken or invalid name becomes NAME-ID, `names.free_name`) and its tags (those that
    break `names.TAG_RULE` left out)."""
    config = settings["config"]
    config = {**config, "name": names.free_name(conn, config["name"], run_id, "external")}
    steps = (config.get("train") or {}).get("steps") or None
    stop_on = (config.get("health") or {}).get("stop_on")
    conn.execute("UPDATE runs SET name = ?, config_json = ?, seed = ?,"
                 " total_steps = COALESCE(?, total_steps), stop_on = COALESCE(?, stop_on)"
                 " WHERE id = ?", (config["name"], json.dumps(config), config.get("seed"),
                                   steps, stop_on, run_id))
    insert_tags(conn, run_id, settings.get("tags") or ())


def insert_tags(conn: sqlite3.Connection, run_id: int, tags) -> None:
    """Add the tags that follow `names.TAG_RULE` to `run_tags` (others are left out)."""
    now = time.time()
    valid = [str(t) for t in tags if names.TAG_RE.fullmatch(str(t))]
    conn.executemany("INSERT OR IGNORE INTO run_tags (run_id, tag, created_at) VALUES (?, ?, ?)",
                     [(run_id, tag, now) for tag in dict.fromkeys(valid)])
