"""The public schema of runs/moedesk.db, as an ordered list of migrations.

Never edit a migration that has shipped: add a new one. docs/schema.md documents
every table and column; tests/unit/test_store.py checks the two agree.
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("moedesk")


@migrations()
def m001_initial(db: Database) -> None:
    db["runs"].create({
        "id": int, "name": str, "kind": str, "profile_path": str, "config_json": str,
        "status": str, "seed": int, "total_steps": int, "last_step": int,
        "supervisor_pid": int, "supervisor_started": float, "trainer_pid": int,
        "created_at": float, "started_at": float, "ended_at": float,
        "exit_code": int, "error": str, "parent_id": int, "parent_step": int,
        "resumed_from_step": int, "run_dir": str, "params_total": int,
        "params_active": int, "device": str, "stop_on": str,
    }, pk="id", not_null={"name", "kind", "config_json", "status"},
        defaults={"status": "queued", "last_step": 0},
        foreign_keys=[("parent_id", "runs", "id")])
    db.execute("CREATE INDEX runs_status ON runs(status)")
    db["metrics"].create({"run_id": int, "step": int, "name": str, "value": float, "wall": float},
                         not_null={"run_id", "step", "name"})
    db.execute("CREATE INDEX metrics_run_name_step ON metrics(run_id, name, step)")
    db["expert_load"].create({"run_id": int, "step": int, "layer": int, "counts": str,
                              "wall": float}, not_null={"run_id", "step", "layer", "counts"})
    db.execute("CREATE INDEX expert_load_run_step ON expert_load(run_id, step)")
    db["alerts"].create({
        "id": int, "run_id": int, "step": int, "rule": str, "severity": str, "metric": str,
        "value": float, "threshold": float, "message": str, "action": str, "wall": float,
        "cleared_step": int,
    }, pk="id", not_null={"run_id", "rule", "severity"})
    db.execute("CREATE INDEX alerts_run ON alerts(run_id, id)")
    db["checkpoints"].create({"run_id": int, "step": int, "path": str, "size": int,
                              "sha256": str, "wall": float}, not_null={"run_id", "step", "path"})
    db.execute("CREATE UNIQUE INDEX checkpoints_run_step ON checkpoints(run_id, step)")
    db["resumes"].create({"run_id": int, "from_step": int, "checkpoint": str, "wall": float},
                         not_null={"run_id", "from_step"})


@migrations()
def m002_analysis(db: Database) -> None:
    """Analysis results the trainer emits (`analysis` events), e.g. routing histograms."""
    db["analysis"].create({"run_id": int, "step": int, "name": str, "payload": str,
                           "wall": float}, not_null={"run_id", "step", "name", "payload"})
    db.execute("CREATE INDEX analysis_run_name_step ON analysis(run_id, name, step)")


@migrations()
def m003_external(db: Database) -> None:
    """Tags of runs (`moedesk watch --tag`, `moedesk.init(tags=...)`); external runs
    themselves need no new column: kind `external`, their settings in `config_json`."""
    db.execute("CREATE TABLE IF NOT EXISTS tags (run_id INTEGER NOT NULL, tag TEXT NOT NULL,"
               " wall REAL)")
    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS tags_run_tag ON tags(run_id, tag)")
