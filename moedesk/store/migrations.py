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
def m003_samples(db: Database) -> None:
    """Continuations the trainer samples every `[train] sample_every` steps (`sample` events)."""
    db["samples"].create({"run_id": int, "step": int, "prompt": str, "text": str,
                          "temperature": float, "seed": int, "max_new_tokens": int,
                          "wall": float}, not_null={"run_id", "step", "prompt", "text"})
    db.execute("CREATE INDEX samples_run_step ON samples(run_id, step)")


@migrations()
def m004_checkpoint_best(db: Database) -> None:
    """The keep-best mark: `best` = 1 on a run's best checkpoint, and each one's score."""
    db["checkpoints"].add_column("best", int, not_null_default=0)
    db["checkpoints"].add_column("metric", str)
    db["checkpoints"].add_column("score", float)


# one row per key: a second writer (a double resume before the one-writer claim) left
# every (run, step, name) twice; keep the first copy, then make a duplicate impossible
UNIQUE_KEYS = (("metrics", "metrics_run_name_step", ("run_id", "name", "step")),
               ("expert_load", "expert_load_run_step", ("run_id", "step", "layer")),
               ("analysis", "analysis_run_name_step", ("run_id", "name", "step")))


@migrations()
def m005_unique_keys(db: Database) -> None:
    """Drop duplicated rows (keeping the first) and make each table's key a unique index:
    metrics (run_id, name, step), expert_load (run_id, step, layer), analysis (run_id,
    name, step). Replaces the plain indexes of the same names."""
    for table, index, cols in UNIQUE_KEYS:
        key = ", ".join(cols)
        db.execute(f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM (SELECT rowid,"
                   f" ROW_NUMBER() OVER (PARTITION BY {key} ORDER BY rowid) AS n FROM {table})"
                   " WHERE n > 1)")
        db.execute(f"DROP INDEX IF EXISTS {index}")
        db.execute(f"CREATE UNIQUE INDEX {index} ON {table}({key})")


@migrations()
def m006_run_liveness(db: Database) -> None:
    """`runs.queued_at` (when a run was last queued: a queued run with no supervisor past
    a grace period failed to start) and `resumes.gap_from`/`gap_to` (steps a resume could
    not restore because no checkpoint the stored rows reach was left)."""
    db["runs"].add_column("queued_at", float)
    db["resumes"].add_column("gap_from", int)
    db["resumes"].add_column("gap_to", int)


@migrations()
def m007_housekeeping(db: Database) -> None:
    """Run housekeeping (moedesk rm, prune, tag, note, rename; store/housekeeping.py):
    a note per run, tags, tombstones of removed runs (their ids are never reused), and
    unique run names (existing duplicates and numeric names become NAME-ID first)."""
    db.execute("ALTER TABLE runs ADD COLUMN note TEXT")
    db["run_tags"].create({"run_id": int, "tag": str, "created_at": float},
                          pk=("run_id", "tag"), not_null={"run_id", "tag"},
                          foreign_keys=[("run_id", "runs", "id")])
    db.execute("CREATE INDEX run_tags_tag ON run_tags(tag, run_id)")
    db["removed_runs"].create({"id": int, "name": str, "kind": str, "status": str,
                               "created_at": float, "removed_at": float}, pk="id")
    # the rule of store/names.py, frozen here as of this migration: a later duplicate or
    # a purely numeric name becomes NAME-ID (then NAME-ID-2, ... should that be taken)
    taken: set[str] = set()
    rows = db.execute("SELECT id, name FROM runs ORDER BY id").fetchall()
    every = {name for _, name in rows}
    for run_id, name in rows:
        if name in taken or name.isdigit():
            new, n = f"{name}-{run_id}", 1
            while new in taken or new in every:
                n += 1
                new = f"{name}-{run_id}-{n}"
            db.execute("UPDATE runs SET name = ? WHERE id = ?", (new, run_id))
            every.add(new)
            name = new
        taken.add(name)
    db.execute("CREATE UNIQUE INDEX runs_name ON runs(name)")


# the sqlite_stat1 row of m008: rows, rows per run, rows per (run, metric), per (run, metric, step)
METRICS_SHAPE = "1000000 20000 1000 1"


@migrations()
def m008_metrics_planner_stats(db: Database) -> None:
    """Queries by metric name across runs (`WHERE name = 'val/loss'`) skip-scan the
    `(run_id, name, step)` index instead of reading every row: SQLite does that only when
    its statistics say each run_id has many rows. One `sqlite_stat1` row states the shape
    of every moedesk store (many rows per run, hundreds to thousands per run and metric);
    a name-first index would do the same at a heavy cost to ingest (docs/benchmarks.md,
    bench/store_scale.py). A later `ANALYZE` replaces it with measured figures."""
    db.execute("PRAGMA analysis_limit = 100")  # ANALYZE creates sqlite_stat1; keep it cheap
    db.execute("ANALYZE")
    db.execute("DELETE FROM sqlite_stat1 WHERE tbl = 'metrics'")
    db.execute("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES"
               " ('metrics', 'metrics_run_name_step', ?)", (METRICS_SHAPE,))
    db.execute("ANALYZE sqlite_schema")  # load it now, on this connection
