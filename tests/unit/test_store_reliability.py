"""The store's reliability parts without processes: unique keys and the migration that
repairs duplicates, idempotent batches and the spool, run ids, what readers show for a
dead or frozen supervisor and what they record, damaged files, and the supervisor's
write path surviving a real lock held past its busy timeout."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import psutil
import pytest
from sqlite_utils import Database

from moedesk.health.engine import HealthEngine, RunContext
from moedesk.paths import heartbeat_file, spool_file
from moedesk.profiles import profile_to_dict, validate_data
from moedesk.runner.checkpoints import prune_plan
from moedesk.runner.commit import OUTAGE_RULE, Committer
from moedesk.runner.ingest import Ingestor
from moedesk.runner.outcome import outcome
from moedesk.store import Reader, StoreDamaged, StoreError, connect_writer, open_reader, spool
from moedesk.store import runs as store_runs
from moedesk.store.db import check_writable
from moedesk.store.ingest import Batch, write_batch
from moedesk.store.liveness import HEARTBEAT_STALE_S, QUEUED_GRACE_S
from moedesk.store.migrations import migrations

DEAD_PID = 2**22 - 3  # above the kernel's default pid_max: never a live process


@pytest.fixture
def db(home):
    db = connect_writer(home / "moedesk.db")
    yield db
    db.close()


def make_run(db, home, **kw) -> int:
    config = profile_to_dict(validate_data({"name": "t", "kind": "dense", "seed": 1}))
    return store_runs.create_run(db.conn, config=config, profile_path="p.toml", home=home,
                                 **kw).run_id


def stored(home: Path, run_id: int) -> sqlite3.Row:
    conn = sqlite3.connect(home / "moedesk.db")
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    finally:
        conn.close()


def full_batch(steps: range) -> Batch:
    batch = Batch()
    for step in steps:
        batch.add_metrics(step, {"train/loss": 1.0 / step, "val/loss": math.nan}, float(step))
        batch.add_expert_load(step, {0: [1, 2], 1: [3, 0]}, float(step))
        batch.analysis.append((step, "routing/L0", json.dumps({"layer": 0}), float(step)))
    batch.checkpoints.append((steps[-1], "c.pt", 10, "ab", 1.0))
    batch.alerts.append({"step": steps[0], "rule": "loss_spike", "severity": "warning",
                         "message": "m", "wall": 1.0})
    batch.cleared.append(("loss_spike", steps[-1]))
    return batch


def counts(conn) -> dict[str, int]:
    return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("metrics", "expert_load", "analysis", "checkpoints", "alerts")}


# ---- one row per key -------------------------------------------------------------------

def test_migration_repairs_duplicates_then_forbids_them(home):
    path = home / "moedesk.db"
    conn = sqlite3.connect(path, isolation_level=None)
    old = Database(conn)
    migrations.apply(old, stop_before="m005_unique_keys")  # a store of the old schema
    rows = [(1, step, "train/loss", float(step), 0.0) for step in (1, 2, 3)]
    conn.executemany("INSERT INTO metrics VALUES (?,?,?,?,?)", rows * 2)  # a double resume
    conn.executemany("INSERT INTO expert_load VALUES (?,?,?,?,?)",
                     [(1, 1, 0, "[1]", 0.0), (1, 1, 0, "[2]", 0.0), (1, 1, 1, "[3]", 0.0)])
    conn.close()
    db = connect_writer(path)  # applies m005_unique_keys
    assert db.conn.execute("SELECT step, value FROM metrics ORDER BY step").fetchall() == \
        [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert db.conn.execute("SELECT layer, counts FROM expert_load ORDER BY layer").fetchall() \
        == [(0, "[1]"), (1, "[3]")]  # the first copy is kept
    with pytest.raises(sqlite3.IntegrityError):
        db.conn.execute("INSERT INTO metrics VALUES (1, 2, 'train/loss', 9.0, 0.0)")
    db.close()


def test_a_batch_written_twice_changes_nothing(db, home):
    run_id = make_run(db, home)
    write_batch(db.conn, run_id, full_batch(range(1, 6)))
    once = counts(db.conn)
    write_batch(db.conn, run_id, full_batch(range(1, 6)))
    assert counts(db.conn) == once
    assert once == {"metrics": 10, "expert_load": 10, "analysis": 5, "checkpoints": 1,
                    "alerts": 1}


def test_spool_replays_in_order_skips_a_torn_line_and_keeps_the_outcome(db, home):
    run_id = make_run(db, home)
    path = spool_file(home / str(run_id))
    path.parent.mkdir(parents=True)
    spool.append(path, [{"batch": full_batch(range(1, 4)).to_json()},
                        {"batch": full_batch(range(4, 8)).to_json()},
                        {"finish": {"status": "stopped", "exit_code": 0, "error": "x"}}])
    with open(path, "a") as f:
        f.write('{"batch": {"metrics": [[8, "train/lo')  # killed mid-append
    copy = path.read_bytes()
    done = spool.replay(db.conn, run_id, path)
    assert not path.exists() and done.last_step == 7 and done.checkpoints == 2
    assert done.finish == {"status": "stopped", "exit_code": 0, "error": "x"}
    path.write_bytes(copy)  # a replay cut short by a crash is replayed again: no duplicates
    spool.replay(db.conn, run_id, path)
    assert counts(db.conn)["metrics"] == 14
    assert stored(home, run_id)["last_step"] == 7


# ---- run references ----------------------------------------------------------------------

@pytest.mark.parametrize("ref", ["99999999999999999999", "²", "１", "-0", "9223372036854775808"])
def test_odd_run_ids_are_names_that_match_no_run(db, home, ref):
    make_run(db, home)
    with pytest.raises(StoreError, match="no run"):
        Reader(home / "moedesk.db").run(ref)


# ---- liveness: what readers show and record --------------------------------------------

def test_dead_supervisors_are_shown_and_recorded_by_the_next_reader(db, home):
    crashed, failed, stuck, fresh = (make_run(db, home) for _ in range(4))
    store_runs.set_supervisor(db.conn, crashed, DEAD_PID, 0.0)
    store_runs.mark_running(db.conn, crashed, DEAD_PID)
    store_runs.record_spawned(db.conn, failed, DEAD_PID, 0.0)  # died before the trainer
    db.conn.execute("UPDATE runs SET queued_at = ? WHERE id = ?",
                    (time.time() - QUEUED_GRACE_S - 1, stuck))  # its launcher died
    shown = {r.id: r.status for r in Reader(home / "moedesk.db").runs()}
    assert shown == {crashed: "crashed", failed: "failed", stuck: "failed", fresh: "queued"}
    assert stored(home, crashed)["status"] == "running"  # a plain Reader writes nothing
    with open_reader(home) as reader:  # what every command opens
        assert {r.id: r.status for r in reader.runs()} == shown
    for run_id, status in ((crashed, "crashed"), (failed, "failed"), (stuck, "failed")):
        row = stored(home, run_id)
        assert row["status"] == status and row["ended_at"] and "supervisor" in row["error"]
    assert stored(home, fresh)["status"] == "queued"


def test_a_live_supervisor_with_an_old_heartbeat_is_unresponsive(db, home):
    run_id = make_run(db, home)
    me = psutil.Process()
    assert store_runs.claim_supervisor(db.conn, run_id, me.pid, me.create_time()) is None
    store_runs.mark_running(db.conn, run_id, me.pid)
    beat = heartbeat_file(home / str(run_id))
    beat.parent.mkdir(parents=True)
    beat.write_text("x")
    assert Reader(home / "moedesk.db").run(run_id).status == "running"
    old = time.time() - HEARTBEAT_STALE_S - 5
    os.utime(beat, (old, old))
    with open_reader(home) as reader:
        assert reader.run(run_id).status == "unresponsive"
    assert stored(home, run_id)["status"] == "running"  # alive: never recorded as ended


def test_claims_are_compare_and_set(db, home):
    run_id = make_run(db, home)
    store_runs.finish_run(db.conn, run_id, "crashed", -9, "x")
    assert store_runs.claim_resume(db.conn, run_id, 0, "c.pt") is True
    assert store_runs.claim_resume(db.conn, run_id, 0, "c.pt") is False  # the second resume
    assert len(db.conn.execute("SELECT * FROM resumes").fetchall()) == 1
    assert store_runs.claim_supervisor(db.conn, run_id, 111, 1.0) is None
    assert "already claimed by supervisor 111" in store_runs.claim_supervisor(
        db.conn, run_id, 222, 2.0)
    assert store_runs.finish_run(db.conn, run_id, "completed", 0, None, owner=222) is False
    assert store_runs.finish_run(db.conn, run_id, "completed", 0, None, owner=111) is True


# ---- damaged files and homes --------------------------------------------------------------

def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[:1500]))
    elif how == "zeroed-header":
        path.write_bytes(bytes(100) + bytes(data[100:]))
    elif how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif how == "schema-not-utf8":
        # bytes that are not UTF-8 in a table's CREATE statement: SQLite's error message
        # quotes them, and Python cannot decode it (once a UnicodeDecodeError escaped)
        at = data.index(b"CREATE TABLE") + 7
        data[at:at + 3] = b"\xff\xfe\xfd"
        path.write_bytes(bytes(data))
    elif how == "middle-pages":
        page = 4096
        for i in range(2 * page, len(data) - page, 3 * page):
            data[i + 8:i + page] = os.urandom(page - 8)
        path.write_bytes(bytes(data))


def damaged_store(home: Path, db_fixture, how: str) -> Path:
    for _ in range(3):
        run_id = make_run(db_fixture, home)
        write_batch(db_fixture.conn, run_id, full_batch(range(1, 400)))
    db_fixture.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db_fixture.close()
    path = home / "moedesk.db"
    damage(path, how)
    return path


@pytest.mark.parametrize("how", ["truncated", "zeroed-header", "garbage", "schema-not-utf8",
                                 "middle-pages"])
def test_a_damaged_store_is_named_by_every_reader_and_refused_by_writers(home, how):
    path = damaged_store(home, connect_writer(home / "moedesk.db"), how)
    message = None
    try:
        with Reader(path) as reader:
            for info in reader.runs():
                reader.series(info.id, "train/loss")
                reader.latest_expert_load(info.id)
    except StoreDamaged as exc:
        message = str(exc)
    if message is None:  # the damage is where no read went: the write check finds it
        with pytest.raises(StoreDamaged) as caught:
            check_writable(connect_writer(path), path)
        message = str(caught.value)
    assert f"the store at {path} is damaged" in message
    assert ".recover" in message and "mv " in message


def test_a_folder_where_the_database_should_be_is_damage(home):
    (home / "moedesk.db").mkdir()
    with pytest.raises(StoreDamaged, match="is a folder"):
        Reader(home / "moedesk.db")
    with pytest.raises(StoreDamaged, match="is a folder"):
        connect_writer(home / "moedesk.db")


@pytest.mark.parametrize("layout", ["home-is-a-file", "home-under-a-file"])
def test_a_home_that_cannot_hold_a_store_is_a_clear_error(tmp_path, layout):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    home = blocker if layout == "home-is-a-file" else blocker / "sub"
    with pytest.raises(StoreError, match=f"cannot (use|create) .*{home}"):
        connect_writer(home / "moedesk.db")
    assert blocker.read_text() == "x"


# ---- query -----------------------------------------------------------------------------

def test_a_runaway_query_stops_at_ctrl_c_and_a_huge_limit_is_clamped(db, home):
    make_run(db, home)
    reader = Reader(home / "moedesk.db")
    assert reader.query("SELECT 1", limit=10**20)[1] == [(1,)]
    # the fallback interrupt only keeps a broken fix from hanging the suite
    fallback = threading.Timer(20, reader.conn.interrupt)
    ctrl_c = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    fallback.start()
    ctrl_c.start()
    started = time.monotonic()
    try:
        with pytest.raises(StoreError, match="interrupted"):
            reader.query("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)"
                         " SELECT COUNT(*) FROM c")
    finally:
        fallback.cancel()
    assert time.monotonic() - started < 10


# ---- the supervisor's write path ---------------------------------------------------------

def hold_write_lock(path: Path, seconds: float) -> threading.Thread:
    ready = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        ready.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=hold)
    thread.start()
    ready.wait()
    return thread


@pytest.mark.slow
def test_a_lock_held_past_the_busy_timeout_is_spooled_and_replayed(home):
    path = home / "moedesk.db"
    setup = connect_writer(path)
    run_id = make_run(setup, home)
    setup.close()
    db = connect_writer(path, busy_timeout_ms=200)  # the supervisor's, scaled down
    (home / str(run_id)).mkdir()
    notes: list[str] = []
    committer = Committer(db.conn, run_id, home / str(run_id), keep=0, note=notes.append)
    ingestor = Ingestor(committer)
    holder = hold_write_lock(path, 1.5)
    for step in range(1, 21):
        ingestor.feed({"type": "metrics", "step": step, "wall": 1.0,
                       "values": {"train/loss": float(step)}})
        ingestor.commit()
    assert committer.down and spool_file(home / str(run_id)).exists()
    assert not committer.outage_exceeded()
    holder.join()
    time.sleep(RETRY_WAIT := 0.6)
    committer.retry_if_due()
    assert not committer.down, notes
    assert not spool_file(home / str(run_id)).exists()
    reader = Reader(path)
    assert [s for s, _ in reader.series(run_id, "train/loss")] == list(range(1, 21))
    (alert,) = reader.alerts(run_id)
    assert alert["rule"] == OUTAGE_RULE and alert["cleared_step"] == 20
    assert "database is locked" in alert["message"] and RETRY_WAIT
    assert any("unwritable" in n for n in notes) and any("again" in n for n in notes)
    committer.limit_s = 0.0
    holder = hold_write_lock(path, 1.0)
    ingestor.feed({"type": "metrics", "step": 21, "wall": 1.0, "values": {"train/loss": 1.0}})
    ingestor.commit()
    time.sleep(0.05)
    assert committer.outage_exceeded()  # the supervisor now stops the trainer
    holder.join()
    assert committer.finish("stopped", 0, "why") is True
    assert stored(home, run_id)["status"] == "stopped"


def test_a_thawed_backlog_fires_the_stalled_rule_at_most_once():
    ctx = RunContext("dense", 1, 1, 0)
    engine = HealthEngine.for_run(ctx, {"stalled": {"min_seconds": 5.0}}, "warning")
    now = [1000.0]
    ingestor = Ingestor(committer=None, engine=engine, clock=lambda: now[0])
    fired = []
    ingestor.on_alert = fired.append
    for step in range(1, 31):  # a healthy run, one step a second
        now[0] += 1.0
        ingestor.feed({"type": "metrics", "step": step, "wall": now[0], "values": {}})
        ingestor.tick()
    frozen_at = now[0]
    now[0] += 150.0  # the supervisor was stopped for 150 s; the trainer went on meanwhile
    for step in range(31, 63):
        ingestor.feed({"type": "metrics", "step": step, "wall": frozen_at + step - 30,
                       "values": {}})
        ingestor.tick()
    assert len([a for a in fired if a["rule"] == "stalled"]) <= 1
    # the first tick after the thaw, before any backlog line: the gap in its own ticks
    # tells the supervisor it was frozen, so not even one stall fires
    now[0] += 150.0
    ingestor.tick()
    ingestor.feed({"type": "metrics", "step": 63, "wall": now[0], "values": {}})
    ingestor.tick()
    assert [a for a in fired if a["rule"] == "stalled"] == []


# ---- checkpoints and outcomes ------------------------------------------------------------

def test_pruning_spares_checkpoints_newer_than_the_store(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for step in (5, 10, 15, 20, 25):
        (folder / f"step_{step:08d}.pt").write_bytes(b"x")
    listed = [(10, "a"), (15, "b")]  # 20 and 25 are on disk, not yet committed
    assert prune_plan(tmp_path, listed, keep=1) == [5, 10]
    assert prune_plan(tmp_path, listed, keep=0) == []


def test_a_stop_arriving_as_the_trainer_finishes_is_no_error(tmp_path):
    finished = {"status": "completed"}
    request = {"mode": "graceful", "time": 1.0}
    assert outcome(finished, -signal.SIGTERM, request, [], tmp_path / "log") == \
        ("completed", None)
    assert outcome(finished, -signal.SIGTERM, None, [], tmp_path / "log")[1] == \
        "trainer exited with code -15 after finishing"
