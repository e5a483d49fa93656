"""Run housekeeping over a real store: remove (crash-safe), prune, tags, notes, names, filter."""

from __future__ import annotations

import os
import sqlite3
import time

import psutil
import pytest
from sqlite_utils import Database

from moedesk.paths import heartbeat_file
from moedesk.profiles import profile_to_dict, validate_data
from moedesk.store import StoreError, connect_writer, open_reader
from moedesk.store import housekeeping as hk
from moedesk.store import runs as store_runs
from moedesk.store.filters import FilterError, parse_filter
from moedesk.store.ingest import Batch, write_batch
from moedesk.store.liveness import HEARTBEAT_STALE_S
from moedesk.store.migrations import migrations
from moedesk.store.names import NameRefused

CONFIG = profile_to_dict(validate_data({"name": "t", "kind": "dense", "seed": 1}))


def make_run(home, status="completed", name=None, steps=5, parent=None) -> int:
    db = connect_writer(home / "moedesk.db")
    run_id = store_runs.create_run(db.conn, config=CONFIG, profile_path="p.toml", home=home,
                                   name=name, parent_id=parent).run_id
    folder = home / str(run_id)
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "step_00000005.pt").write_bytes(b"x" * 1000)
    (folder / "train.log").write_text("Step 5\n")
    batch = Batch()
    for step in range(1, steps + 1):
        batch.add_metrics(step, {"train/loss": 3.0 - step / 10}, float(step))
        batch.add_expert_load(step, {0: [1, 1]}, float(step))
    batch.checkpoints.append((steps, str(folder / "checkpoints" / "step_00000005.pt"), 1000,
                              "x", 1.0))
    batch.alerts.append({"step": 2, "rule": "loss_spike", "severity": "warning", "wall": 1.0})
    batch.samples.append((steps, "The", "The cat", 0.8, 1, 8, 1.0))
    write_batch(db.conn, run_id, batch)
    if status == "running":  # a live supervisor: this very process
        me = psutil.Process()
        store_runs.set_supervisor(db.conn, run_id, me.pid, me.create_time())
        store_runs.mark_running(db.conn, run_id, me.pid)
    elif status != "queued":
        store_runs.finish_run(db.conn, run_id, status, 0, None)
    db.close()
    return run_id


def rows_of(home, run_id) -> dict[str, int]:
    conn = sqlite3.connect(home / "moedesk.db")
    out = {t: conn.execute(f"SELECT COUNT(*) FROM {t} WHERE run_id = ?", (run_id,)).fetchone()[0]
           for t in hk.CHILD_TABLES}
    out["runs"] = conn.execute("SELECT COUNT(*) FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
    conn.close()
    return out


def test_remove_deletes_rows_checkpoints_and_folder_and_never_reuses_the_id(home):
    keep, gone = make_run(home), make_run(home)
    hk.tag(home, gone, ["lab"])
    (removed,) = hk.remove_runs(home, [str(gone)])
    assert removed.run_id == gone and removed.bytes_freed >= 1000
    assert set(rows_of(home, gone).values()) == {0}
    assert not (home / str(gone)).exists() and (home / str(keep)).exists()
    assert rows_of(home, keep)["metrics"] == 5
    with open_reader(home) as reader:
        with pytest.raises(StoreError, match=f"run {gone} \\(t-{gone}\\) was removed on"):
            reader.run(gone)
    assert make_run(home) == gone + 1  # the id of the removed run is not given out again


def test_every_table_holding_run_rows_is_cleared_by_remove(home):
    run_id = make_run(home)
    conn = sqlite3.connect(home / "moedesk.db")
    with_run_id = {t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type ="
                                              " 'table'")
                   if "run_id" in {c[1] for c in conn.execute(f"PRAGMA table_info({t})")}}
    conn.close()
    assert with_run_id == set(hk.CHILD_TABLES)  # a new table with run rows must be listed
    assert rows_of(home, run_id)["samples"] == 1
    hk.remove_runs(home, [run_id])
    assert set(rows_of(home, run_id).values()) == {0}


def test_remove_refuses_an_unresponsive_run(home):
    run_id = make_run(home, status="running")
    beat = heartbeat_file(home / str(run_id))
    beat.write_text("x")
    old = time.time() - HEARTBEAT_STALE_S - 5
    os.utime(beat, (old, old))  # a frozen supervisor: alive, but silent
    with pytest.raises(hk.HousekeepingError, match=f"run {run_id} .* is unresponsive"):
        hk.remove_runs(home, [run_id])
    assert rows_of(home, run_id)["runs"] == 1 and (home / str(run_id) / "train.log").exists()


def test_a_run_resumed_between_the_read_and_the_remove_is_kept(home, monkeypatch):
    run_id = make_run(home, status="crashed")
    resolve = hk.resolve

    def resolve_then_resume(*args):
        found = resolve(*args)
        db = connect_writer(home / "moedesk.db")  # another command's resume claims it now
        assert store_runs.claim_resume(db.conn, run_id, 5, "c.pt")
        db.close()
        return found

    monkeypatch.setattr(hk, "resolve", resolve_then_resume)
    with pytest.raises(hk.HousekeepingError, match="became queued meanwhile"):
        hk.remove_runs(home, [run_id])
    assert rows_of(home, run_id)["runs"] == 1 and (home / str(run_id) / "train.log").exists()


def test_remove_refuses_an_active_run_and_removes_nothing(home):
    done, live = make_run(home), make_run(home, status="running")
    with pytest.raises(hk.HousekeepingError, match=f"run {live} .* is running: stop it first"):
        hk.remove_runs(home, [done, live])
    assert rows_of(home, done)["runs"] == 1 and (home / str(done)).exists()


def test_a_crash_inside_the_transaction_changes_nothing(home, monkeypatch):
    run_id = make_run(home)
    before = rows_of(home, run_id)
    # the last table of the delete fails: the rows already deleted come back
    monkeypatch.setattr(hk, "CHILD_TABLES", (*hk.CHILD_TABLES, "no_such_table"))
    with pytest.raises(sqlite3.OperationalError):
        hk.remove_runs(home, [run_id])
    monkeypatch.undo()
    assert rows_of(home, run_id) == before and (home / str(run_id) / "train.log").exists()


def test_a_crash_after_the_commit_leaves_only_an_unlisted_folder_swept_next_time(home, monkeypatch):
    first, second = make_run(home), make_run(home)

    def crash(*_):
        raise KeyboardInterrupt  # killed between the commit and the folder's deletion

    monkeypatch.setattr(hk, "_delete_folder", crash)
    with pytest.raises(KeyboardInterrupt):
        hk.remove_runs(home, [first])
    with open_reader(home) as reader:
        assert [r.id for r in reader.runs()] == [second]  # not listed, not half-listed
    assert (home / str(first)).exists()
    (home / hk.TRASH / "9-1").mkdir(parents=True)  # a deletion cut short in the trash
    monkeypatch.undo()
    hk.remove_runs(home, [second])
    assert not (home / str(first)).exists() and not list((home / hk.TRASH).iterdir())


def test_sweep_never_deletes_a_folder_that_is_not_a_removed_run(home):
    run_id = make_run(home)
    (home / "77").mkdir()
    (home / "notes").mkdir()
    hk.sweep(home)
    assert (home / "77").is_dir() and (home / "notes").is_dir() and (home / str(run_id)).is_dir()


def test_removing_a_parent_keeps_its_fork(home):
    parent = make_run(home)
    child = make_run(home, parent=parent)
    hk.remove_runs(home, [parent])
    with open_reader(home) as reader:
        info = reader.run(child)
    assert info.row["parent_id"] is None and rows_of(home, child)["metrics"] == 5


def test_prune_by_status_age_and_keep_last(home):
    ids = {s: [make_run(home, status=s) for _ in range(3)] for s in ("failed", "completed")}
    live = make_run(home, status="running")
    failed = hk.plan_prune(home, statuses=("failed",))
    assert [r.id for r in failed] == ids["failed"]
    kept = hk.plan_prune(home, statuses=("failed", "completed"), keep_last=2)
    assert [r.id for r in kept] == ids["failed"] + ids["completed"][:1]
    assert hk.plan_prune(home, older_than_s=3600) == []
    later = time.time() + 7200
    assert live not in [r.id for r in hk.plan_prune(home, older_than_s=3600, now=later)]
    with pytest.raises(hk.HousekeepingError, match="--status: got 'running'"):
        hk.plan_prune(home, statuses=("running",))
    with pytest.raises(hk.HousekeepingError, match="say what to prune"):
        hk.plan_prune(home)
    removed = hk.prune(home, statuses=("failed",), keep_last=1)
    assert [r.run_id for r in removed] == ids["failed"][:2]
    with open_reader(home) as reader:
        assert [r.id for r in reader.runs()] == [ids["failed"][2], *ids["completed"], live]


def test_parse_duration():
    assert hk.parse_duration("90s") == 90 and hk.parse_duration("7d") == 7 * 86400
    assert hk.parse_duration("1d12h") == 36 * 3600 and hk.parse_duration("2w") == 14 * 86400
    for bad in ("", "7", "d", "7 days", "-1h", "1h x"):
        with pytest.raises(ValueError, match="--older-than: got"):
            hk.parse_duration(bad)


def test_tags_notes_and_renames(home):
    run_id = make_run(home)
    other = make_run(home, name="other")
    assert hk.tag(home, run_id, ["lab", "b/1", "lab"])[1] == ["b/1", "lab"]
    assert hk.untag(home, run_id, ["b/1", "absent"])[1] == ["lab"]
    for bad in ("has space", "tag:lab", "[/]", "", "-x", "x" * 65):
        with pytest.raises(hk.HousekeepingError, match="a tag is 1-64"):
            hk.tag(home, run_id, [bad])
    hk.set_note(home, run_id, "  lr sweep, best so far  ")
    with open_reader(home) as reader:
        assert reader.run(run_id).row["note"] == "lr sweep, best so far"
        assert reader.tags() == {run_id: ["lab"]}
    hk.set_note(home, run_id, None)
    assert hk.rename(home, run_id, "baseline")[1] == "baseline"
    with open_reader(home) as reader:
        assert reader.run("baseline").id == run_id and reader.run(run_id).row["note"] is None
    for bad, why in (("other", f"taken by run {other}"), ("12", "is a number"),
                     ("", "must not be empty"), (" x", "starts or ends with a space"),
                     ("a\nb", "control characters"), ("x" * 101, "at most 100")):
        with pytest.raises(NameRefused, match=why):
            hk.rename(home, run_id, bad)
    assert hk.rename(home, run_id, "baseline")[1] == "baseline"  # its own name is fine


def test_new_runs_refuse_taken_and_numeric_names_and_suffix_a_clashing_default(home):
    make_run(home, name="mine")
    with pytest.raises(NameRefused, match="taken by run 1"):
        make_run(home, name="mine")
    with pytest.raises(NameRefused, match="is a number"):
        make_run(home, name="7")
    make_run(home, name="t-3")  # run 2 named by hand what run 3's default would be
    assert make_run(home) == 3 and open_reader(home).run(3).name == "t-3-2"


def test_migration_renames_duplicate_and_numeric_names_then_enforces_uniqueness(home):
    db = Database(home / "moedesk.db")
    migrations.apply(db, stop_before="m007_housekeeping")
    for name in ("dup", "dup", "7", "dup-2", "ok"):
        db.execute("INSERT INTO runs (name, kind, config_json, status) VALUES (?, 'dense', '{}',"
                   " 'completed')", (name,))
    db.conn.commit()
    db.close()
    db = connect_writer(home / "moedesk.db")  # applies m007_housekeeping
    names = [r[0] for r in db.conn.execute("SELECT name FROM runs ORDER BY id")]
    assert names == ["dup", "dup-2-2", "7-3", "dup-2", "ok"]
    with pytest.raises(sqlite3.IntegrityError):
        db.conn.execute("UPDATE runs SET name = 'ok' WHERE id = 1")
    db.close()


def test_filter_syntax():
    f = parse_filter("tag:lab status:failed,crashed -kind:dense sweep")
    run = {"name": "sweep-3", "kind": "topk", "status": "crashed", "tags": ["lab", "x"]}
    assert f.matches(**run)
    assert not f.matches(**{**run, "tags": ["x"]})
    assert not f.matches(**{**run, "kind": "dense"})
    assert not f.matches(**{**run, "status": "completed"})
    assert not f.matches(**{**run, "name": "other"})
    assert parse_filter("LAB").matches(name="n", kind="dense", status="ok", tags=["lab"])
    assert parse_filter("tag:Lab").matches(name="n", kind="d", status="s", tags=["lab"]) is False
    assert not parse_filter("")
    with pytest.raises(FilterError, match="unknown key 'colour'; allowed keys: tag, status"):
        parse_filter("colour:red")
    with pytest.raises(FilterError, match="nothing after 'tag:'"):
        parse_filter("tag:")
    assert parse_filter("tag: colour:r", partial=True).matches(name="colour:r", kind="", status="")


def test_store_without_the_housekeeping_migration_reads_as_no_tags(home):
    db = Database(home / "moedesk.db")
    migrations.apply(db, stop_before="m007_housekeeping")
    db.close()
    with open_reader(home) as reader:
        assert reader.tags() == {} and reader.removed_ids() == set()
    assert os.path.exists(home / "moedesk.db")
