"""The SQLite store: schema, batched ingest, read-only readers, resume truncation."""

from __future__ import annotations

import math
import re
import sqlite3
from pathlib import Path

import pytest

from moedesk.profiles import profile_to_dict, validate_data
from moedesk.store import Reader, StoreError, connect_writer
from moedesk.store import runs as store_runs
from moedesk.store.ingest import Batch, write_batch
from moedesk.store.migrations import migrations

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def db(home):
    db = connect_writer(home / "moedesk.db")
    yield db
    db.close()


def make_run(db, home, **kw) -> int:
    config = profile_to_dict(validate_data({"name": "t", "kind": "dense", "seed": 1}))
    return store_runs.create_run(db.conn, config=config, profile_path="p.toml", home=home,
                                 **kw).run_id


def test_wal_and_busy_timeout(db):
    assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000


def test_migrations_are_idempotent(home, db):
    """A second (and third) writer applies nothing twice: each migration is recorded once and
    the schema is unchanged."""
    def schema(conn):
        return conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()

    before = schema(db.conn)
    for _ in range(2):
        again = connect_writer(home / "moedesk.db")
        applied = [r[0] for r in again.conn.execute(
            "SELECT name FROM _sqlite_migrations WHERE migration_set = 'moedesk' ORDER BY id")]
        assert applied == [m.name for m in migrations._migrations]
        assert schema(again.conn) == before


def test_create_run_names_it_profile_id(db, home):
    run_id = make_run(db, home)
    reader = Reader(home / "moedesk.db")
    info = reader.run(run_id)
    assert info.name == f"t-{run_id}" and info.status == "queued"
    assert reader.run(info.name).id == run_id
    with pytest.raises(StoreError, match="no run 'nope'"):
        reader.run("nope")
    config = profile_to_dict(validate_data({"name": "t", "kind": "dense", "seed": 1}))
    created = store_runs.create_run(db.conn, config=config, profile_path="p", home=home)
    assert created == (run_id + 1, f"t-{run_id + 1}") == (created.run_id, reader.run(run_id + 1).name)
    named = store_runs.create_run(db.conn, config=config, profile_path="p", home=home, name="mine")
    assert named.name == "mine" == reader.run(named.run_id).name


def test_launch_row_is_what_the_supervisor_starts_from(db, home):
    config = profile_to_dict(validate_data({"name": "t", "kind": "topk", "seed": 1,
                                            "health": {"stop_on": "warning"}}))
    run_id = store_runs.create_run(db.conn, config=config, profile_path="p", home=home).run_id
    forced = store_runs.create_run(db.conn, config=config, profile_path="p", home=home,
                                   stop_on="never").run_id
    row = store_runs.launch_row(db.conn, run_id)
    assert row.config == config and row.run_dir == home / str(run_id) and row.stop_on == "warning"
    assert store_runs.launch_row(db.conn, forced).stop_on == "never"
    with pytest.raises(LookupError, match="no run 99"):
        store_runs.launch_row(db.conn, 99)


def test_batch_is_one_transaction_and_cursor_reads_only_new_rows(db, home):
    run_id = make_run(db, home)
    reader = Reader(home / "moedesk.db")
    batch = Batch()
    batch.add_metrics(1, {"train/loss": 2.0, "train/lr": 0.1}, 1.0)
    batch.add_expert_load(1, {0: [3, 1], 1: [2, 2]}, 1.0)
    write_batch(db.conn, run_id, batch)
    rows, cursor = reader.metrics_since(run_id, 0)
    assert [(r[1], r[2], r[3]) for r in rows] == [(1, "train/loss", 2.0), (1, "train/lr", 0.1)]
    batch = Batch()
    batch.add_metrics(2, {"train/loss": 1.5}, 2.0)
    write_batch(db.conn, run_id, batch)
    rows, cursor2 = reader.metrics_since(run_id, cursor)
    assert [(r[1], r[2]) for r in rows] == [(2, "train/loss")] and cursor2 > cursor
    assert reader.run(run_id).last_step == 2
    assert reader.latest_expert_load(run_id) == (1, {0: [3, 1], 1: [2, 2]})
    # SQL users can unpack the vector with json_each
    cols, out, _ = reader.query("SELECT SUM(j.value) FROM expert_load, json_each(counts) j"
                                " WHERE layer = 0")
    assert out == [(4,)]


def test_nan_is_stored_as_null(db, home):
    run_id = make_run(db, home)
    batch = Batch()
    batch.add_metrics(1, {"train/loss": math.nan}, 1.0)
    write_batch(db.conn, run_id, batch)
    assert Reader(home / "moedesk.db").series(run_id, "train/loss") == [(1, None)]


def test_reader_is_read_only(db, home):
    make_run(db, home)
    reader = Reader(home / "moedesk.db")
    with pytest.raises(StoreError, match="read-only"):
        reader.query("DELETE FROM runs")
    with pytest.raises(StoreError, match="read-only"):
        reader.query("CREATE TABLE x (a)")
    with pytest.raises(sqlite3.OperationalError):
        reader.conn.execute("UPDATE runs SET name = 'x'")


def test_query_caps_rows(db, home):
    for _ in range(5):
        make_run(db, home)
    cols, rows, truncated = Reader(home / "moedesk.db").query("SELECT id FROM runs", limit=3)
    assert cols == ["id"] and len(rows) == 3 and truncated


def test_missing_database_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="no moedesk database"):
        Reader(tmp_path / "absent.db")


def test_running_run_with_dead_supervisor_reads_as_crashed(db, home):
    run_id = make_run(db, home)
    store_runs.set_supervisor(db.conn, run_id, 2**22 - 3, 0.0)  # no such process
    store_runs.mark_running(db.conn, run_id, 2**22 - 3)
    assert Reader(home / "moedesk.db").run(run_id).status == "crashed"


def test_truncate_for_resume_drops_later_rows_and_records_the_resume(db, home):
    run_id = make_run(db, home)
    batch = Batch()
    for step in range(1, 41):
        batch.add_metrics(step, {"train/loss": float(step)}, float(step))
        batch.add_expert_load(step, {0: [1, 1]}, float(step))
    batch.checkpoints += [(20, "a.pt", 1, "x", 1.0), (40, "b.pt", 1, "y", 1.0)]
    batch.alerts.append({"step": 30, "rule": "loss_spike", "severity": "warning", "wall": 1.0})
    write_batch(db.conn, run_id, batch)
    store_runs.finish_run(db.conn, run_id, "stopped", 0, None)
    store_runs.truncate_for_resume(db.conn, run_id, 20, "a.pt")
    reader = Reader(home / "moedesk.db")
    assert [s for s, _ in reader.series(run_id, "train/loss")] == list(range(1, 21))
    assert [c["step"] for c in reader.checkpoints(run_id)] == [20]
    assert reader.alerts(run_id) == []
    info = reader.run(run_id)
    assert info.status == "queued" and info.last_step == 20
    assert info.row["resumed_from_step"] == 20
    assert [r["from_step"] for r in reader.resumes(run_id)] == [20]


def test_schema_doc_lists_every_column(db):
    doc = (REPO / "docs" / "schema.md").read_text()
    for (table,) in db.conn.execute("SELECT name FROM sqlite_master WHERE type='table'"
                                    " AND name NOT LIKE '\\_%' ESCAPE '\\'"):
        section = re.search(rf"### `{table}`(.*?)(?=\n### |\Z)", doc, re.S)
        assert section, f"docs/schema.md has no section for {table}"
        for col in db[table].columns:
            assert f"`{col.name}`" in section.group(1), f"{table}.{col.name} undocumented"


def test_half_created_database_reads_as_absent(tmp_path):
    sqlite3.connect(tmp_path / "moedesk.db").close()  # the file exists, the schema not yet
    with pytest.raises(StoreError, match="being created"):
        Reader(tmp_path / "moedesk.db")


def test_queries_by_metric_name_skip_scan_instead_of_reading_every_row(db, home):
    # m004's statistics: the planner seeks each run's part of (run_id, name, step)
    reader = Reader(home / "moedesk.db")

    def plan(sql):
        return " ".join(r[3] for r in reader.conn.execute("EXPLAIN QUERY PLAN " + sql))

    assert "ANY(run_id) AND name=? AND step=?" in plan(
        "SELECT run_id, value FROM metrics WHERE name = 'train/loss' AND step = 100")
    assert "ANY(run_id) AND name=?" in plan(
        "SELECT run_id, MIN(value) FROM metrics WHERE name = 'val/loss' GROUP BY run_id")
    assert "(run_id=? AND name=?)" in plan(
        "SELECT step, value FROM metrics WHERE run_id = 3 AND name = 'train/loss'")
