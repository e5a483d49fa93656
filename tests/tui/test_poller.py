"""The poller reads incrementally with cursors and starts over when a resume truncated a run."""

from __future__ import annotations

import json
from pathlib import Path

from moedesk.paths import db_path
from moedesk.profiles import load_profile, profile_to_dict
from moedesk.profiles.schema import MoESection
from moedesk.store import connect_writer
from moedesk.store import runs as store_runs
from moedesk.store.ingest import Batch, write_batch
from moedesk.tui.model import FLAT_ROW
from moedesk.tui.poller import FULL_TICK_EVERY, Poller
from tests.conftest import PROFILES
from tests.tui.fixtures import FIXED_NOW, TOPK_EXPERTS, TOPK_LAYERS


def spy_metrics(poller: Poller, calls: list):
    real = poller.reader.metrics_since

    def metrics_since(run_id, after_rowid=0, names=None):
        rows, cursor = real(run_id, after_rowid, names)
        calls.append((run_id, after_rowid, len(rows)))
        return rows, cursor

    poller.reader.metrics_since = metrics_since


def append_steps(home: Path, run_id: int, steps: range, loss: float) -> None:
    db = connect_writer(db_path(home))
    batch = Batch()
    for step in steps:
        batch.add_metrics(step, {"train/loss": loss, "train/lr": 1e-3}, FIXED_NOW + step)
        batch.add_expert_load(step, {str(layer): [10] * TOPK_EXPERTS
                                     for layer in range(TOPK_LAYERS)}, FIXED_NOW + step)
    write_batch(db.conn, run_id, batch)
    db.close()


def test_runs_list_has_effective_status_loss_and_health(canned):
    poller = Poller(canned.path)
    result = poller.poll()
    rows = {r.id: r for r in result.runs}
    assert rows[canned.crashed].status == "crashed"  # row says running; supervisor is dead
    assert rows[canned.topk].status == "running"  # our own pid plays its supervisor
    assert rows[canned.topk].health == "warning"
    assert rows[canned.ternary].health == "critical"  # the cleared warning no longer counts
    assert rows[canned.dense].health is None
    assert rows[canned.dense].loss is not None and rows[canned.failed].loss is None
    assert rows[canned.topk].top_k == 2 and rows[canned.topk].num_experts == 8
    assert rows[canned.ternary].num_experts == 243 and rows[canned.ternary].cluster_size == 16
    # nothing changed: the next tick reports no new list and no changed run
    again = poller.poll()
    assert again.runs is None and again.changed == []


def test_watched_run_fetches_only_new_rows(canned):
    poller = Poller(canned.path)
    data = poller.watch(canned.topk)
    poller.poll()
    assert data.series["train/loss"].count == 60
    assert data.load_step == 60 and sorted(data.load_layers) == [0, 1]
    assert data.load_layers[1][7] == 0.0  # the starved expert, as a load ratio
    assert data.log_total == 2
    first_cursor = data.metric_cursor
    calls: list = []
    spy_metrics(poller, calls)

    assert poller.poll().changed == []  # no commit since: the tick reads no rows at all
    assert calls == []
    for _ in range(FULL_TICK_EVERY):  # now and then a full tick, which finds nothing new
        assert poller.poll().changed == []
    assert calls == [(canned.topk, first_cursor, 0)]

    append_steps(canned.path, canned.topk, range(61, 66), loss=1.5)
    with open(Path(canned.path) / str(canned.topk) / "train.log", "a") as log:
        log.write("12:11:00 Step 65/200\n12:11:01 partial line without newline")
    result = poller.poll()
    assert result.changed == [canned.topk]
    # the second fetch started at the old cursor and got exactly the 10 new rows
    assert calls[-1] == (canned.topk, first_cursor, 10)
    assert data.series["train/loss"].count == 65
    assert data.series["train/loss"].last == (65, 1.5)
    assert data.load_step == 65 and data.load_layers[0] == [1.0] * TOPK_EXPERTS
    assert list(data.log_lines)[-1] == "12:11:00 Step 65/200"  # the partial line waits
    assert len(data.timeline) == 65


def test_resume_truncation_resets_the_cached_series(canned):
    poller = Poller(canned.path)
    data = poller.watch(canned.topk)
    poller.poll()
    generation = data.generation
    db = connect_writer(db_path(canned.path))
    store_runs.truncate_for_resume(db.conn, canned.topk, 30, "ckpt-30.pt")
    db.close()
    append_steps(canned.path, canned.topk, range(31, 41), loss=9.0)
    poller.poll()
    buf = data.series["train/loss"]
    assert data.generation > generation
    assert buf.count == 40  # 30 kept + 10 relogged; nothing from the old 31..60 remains
    assert buf.last == (40, 9.0)
    xs, lows, highs = buf.envelope(400)
    assert xs == sorted(set(xs)) and xs[-1] == 40
    assert highs[-10:] == lows[-10:] == [9.0] * 10
    assert data.load_step == 40 and len(data.timeline) == 40


def test_unwatch_forgets_and_missing_database_is_not_an_error(tmp_path):
    poller = Poller(tmp_path / "empty")
    result = poller.poll()
    assert result.runs is None and result.error is None
    poller.watch(3)
    poller.watch(3)
    poller.unwatch(3)
    assert poller.data(3) is not None  # one watcher left
    poller.unwatch(3)
    assert poller.data(3) is None


def test_runs_list_reads_each_runs_stored_profile_and_survives_a_damaged_one(tmp_path):
    db = connect_writer(db_path(tmp_path))
    flat = load_profile(PROFILES / "tiny_ternary.toml", {
        "ternary.topology": "flat", "health.load_balance.poor": 0.3})
    topk = load_profile(PROFILES / "tiny_topk.toml", {"moe.num_experts": 4, "moe.top_k": 1})
    ids = [store_runs.create_run(db.conn, config=profile_to_dict(p), profile_path="p",
                                 home=tmp_path).run_id for p in (flat, topk, topk)]
    db.conn.execute("UPDATE runs SET config_json = '{\"kind\": ' WHERE id = ?", (ids[2],))
    db.conn.commit()
    db.close()
    rows = {r.id: r for r in Poller(tmp_path).poll().runs}
    assert (rows[ids[0]].top_k, rows[ids[0]].num_experts, rows[ids[0]].cluster_size) == (
        flat.ternary.active_experts, flat.ternary.num_experts, FLAT_ROW)
    assert json.loads(rows[ids[0]].health_rules) == {"load_balance": {"poor": 0.3}}
    assert (rows[ids[1]].top_k, rows[ids[1]].num_experts, rows[ids[1]].cluster_size) == (1, 4, 0)
    # an unreadable config: the schema's own defaults for the kind, never a crash
    assert (rows[ids[2]].top_k, rows[ids[2]].num_experts) == (MoESection().top_k,
                                                             MoESection().num_experts)
def test_alerts_are_read_by_cursor_and_clearing_is_seen(canned):
    poller = Poller(canned.path)
    data = poller.watch(canned.ternary)
    poller.poll()
    assert [a["rule"] for a in data.alerts] == ["goodness_delta", "routing_latency"]
    assert [a["rule"] for a in data.open_alerts()] == ["routing_latency"]
    cleared_id, open_id = (a["id"] for a in data.alerts)
    calls: list = []
    real = poller.reader.alerts

    def alerts(run_id=None, open_only=False, after_id=0):
        rows = real(run_id, open_only, after_id)
        if run_id == canned.ternary:
            calls.append((after_id, [a["id"] for a in rows]))
        return rows

    poller.reader.alerts = alerts
    db = connect_writer(db_path(canned.path))
    batch = Batch()
    batch.add_metrics(81, {"ff/goodness_delta": 1.2}, FIXED_NOW + 81)
    batch.alerts.append({"step": 81, "rule": "load_balance", "severity": "warning",
                         "metric": "moe/imbalance", "value": 0.6, "threshold": 0.5,
                         "message": "imbalance 0.6 > 0.5", "action": "", "wall": FIXED_NOW})
    write_batch(db.conn, canned.ternary, batch)
    poller.poll()
    # the cleared alert before the oldest open one is never read again
    assert calls == [(open_id - 1, [open_id, open_id + 1])]
    assert [a["rule"] for a in data.open_alerts()] == ["routing_latency", "load_balance"]

    batch = Batch()
    batch.add_metrics(90, {"ff/goodness_delta": 1.3}, FIXED_NOW + 90)
    batch.cleared.append(("routing_latency", 90))
    write_batch(db.conn, canned.ternary, batch)
    versions = data.versions["alerts"]
    poller.poll()
    assert calls[-1][0] == open_id - 1  # the open alert may have cleared: read from it
    assert data.versions["alerts"] > versions
    assert [a["rule"] for a in data.open_alerts()] == ["load_balance"]
    assert next(a for a in data.alerts if a["id"] == open_id)["cleared_step"] == 90
    assert cleared_id < open_id and data.alert_cursor == open_id + 1
    batch = Batch()
    batch.add_metrics(91, {"ff/goodness_delta": 1.3}, FIXED_NOW + 91)
    write_batch(db.conn, canned.ternary, batch)
    db.close()
    poller.poll()
    assert calls[-1][0] == open_id  # now only alerts from the open load_balance on


def test_a_damaged_row_is_reported_and_the_other_runs_go_on(canned):
    db = connect_writer(db_path(canned.path))
    with db.conn:
        db.conn.execute("INSERT INTO expert_load (run_id, step, layer, counts, wall)"
                        " VALUES (?, 61, 0, 'not json', 0)", (canned.topk,))
    db.close()
    poller = Poller(canned.path)
    topk, ternary = poller.watch(canned.topk), poller.watch(canned.ternary)
    result = poller.poll()
    assert result.error is not None and f"run {canned.topk}: cannot read" in result.error
    assert result.runs is not None and len(result.runs) == 5  # the list still refreshed
    assert ternary.load_step == 80 and canned.ternary in result.changed
    assert topk.row is not None and topk.load_step is None
    append_steps(canned.path, canned.ternary, range(81, 83), loss=1.0)
    again = poller.poll()
    assert again.error is None  # the same problem is reported once, not on every tick
    assert ternary.series["train/loss"].last == (82, 1.0)
