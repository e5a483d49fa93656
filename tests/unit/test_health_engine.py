"""The health engine: the stall clock, replays after a resume, alert invariants, the store."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moedesk.health.engine import RULE_METRICS, stops_at
from moedesk.health.rules import RANK
from moedesk.profiles import profile_to_dict, validate_data
from moedesk.runner.commit import Committer
from moedesk.runner.ingest import Ingestor
from moedesk.runner.supervise import make_engine
from moedesk.store import Reader, connect_writer
from moedesk.store import runs as store_runs
from tests.unit.test_health_rules import config, feed


def test_stops_at_follows_the_runs_stop_on():
    assert stops_at("critical", "critical") and not stops_at("warning", "critical")
    assert stops_at("warning", "warning") and not stops_at("info", "warning")
    assert not stops_at("critical", "never")


def stepping(engine, steps, interval=1.0, t0=1000.0):
    for step in range(1, steps + 1):
        engine.observe(step, {"train/loss": 2.0}, t0 + step * interval)
    return t0 + steps * interval


def test_stalled_fires_once_after_the_floor_and_clears_on_the_next_step():
    engine = make_engine(config("dense"))
    assert engine.tick(5000.0) == ([], [])  # no step yet: no usual step time to compare with
    last = stepping(engine, 30)
    assert engine.tick(last + 100) == ([], [])  # 20 x 1 s is under the 120 s floor
    fired, _ = engine.tick(last + 121)
    (alert,) = fired
    assert alert["rule"] == "stalled" and alert["step"] == 30 and alert["severity"] == "warning"
    assert alert["threshold"] == 120.0 and "after step 30" in alert["message"]
    assert engine.tick(last + 500) == ([], [])  # one alert per stall
    fired, cleared = engine.observe(31, {"train/loss": 2.0}, last + 501)
    assert cleared == [("stalled", 31)] and not fired


def test_stalled_limit_is_a_multiple_of_the_usual_step_time():
    engine = make_engine(config("dense", stalled={"min_seconds": 5, "factor": 3}))
    last = stepping(engine, 30, interval=2.0)
    assert engine.tick(last + 5.9) == ([], [])  # limit max(5, 3 x 2 s) = 6 s
    assert engine.tick(last + 6.1)[0][0]["threshold"] == 6.0


def test_replay_restores_open_states_without_firing_again():
    stream = [{"moe/imbalance": 0.3}] * 50 + [{"moe/imbalance": 0.9}] * 10
    whole = make_engine(config("ternary"))
    fired, _ = feed(whole, stream + [{"moe/imbalance": 0.3}] * 10)
    assert [a["step"] for a in fired] == [55]
    # resumed at step 60: the replayed engine neither re-fires nor forgets to clear
    resumed = make_engine(config("ternary"))
    resumed.replay([(i + 1, v, float(i + 1)) for i, v in enumerate(stream)], now=1e9,
                   open_rules=["load_balance", "stalled"])
    fired, cleared = feed(resumed, [{"moe/imbalance": 0.3}] * 10, start=61)
    assert not fired
    # the stale stall (not reopened by the replay) clears at the first new step
    assert cleared == [("stalled", 61), ("load_balance", 65)]


def test_replay_does_not_count_the_downtime_as_a_stall():
    engine = make_engine(config("dense"))
    engine.replay([(s, {"train/loss": 2.0}, 1000.0 + s) for s in range(1, 31)], now=99_999.0)
    assert engine.tick(99_999.0 + 60) == ([], [])


values = st.floats(min_value=0.0, max_value=1.2, allow_nan=False)
events = st.lists(st.fixed_dictionaries({
    "moe/imbalance": values, "ff/goodness_delta": values, "moe/dead_experts": st.sampled_from(
        [0.0, 0.0, 1.0]), "route/latency_us": st.floats(0, 900)}), min_size=1, max_size=150)


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(events, st.integers(0, 60))
def test_alerts_never_storm_whatever_the_metrics_do(stream, after_step):
    """Per rule: a new alert only after a clear or at a strictly higher severity, and a
    clear always at a later step than the alert it ends."""
    cfg = config("ternary", load_balance={"after_step": after_step, "patience": 2},
                 goodness_delta={"after_step": after_step, "patience": 1})
    engine = make_engine(cfg)
    open_: dict[str, tuple[int, str]] = {}
    for step, event in enumerate(stream, start=1):
        fired, cleared = engine.observe(step, event, float(step))
        for rule, at in cleared:
            assert rule in open_ and at > open_[rule][0]
            del open_[rule]
        for alert in fired:
            before = open_.get(alert["rule"])
            assert before is None or RANK[alert["severity"]] > RANK[before[1]]
            assert alert["stops"] == (alert["severity"] == "critical")
            open_[alert["rule"]] = (alert["step"], alert["severity"])
    assert set(open_) == set(engine.open)


def make_run(home, kind="ternary"):
    db = connect_writer(home / "moedesk.db")
    data = {"name": "h", "kind": kind, "seed": 1}
    run_id, _ = store_runs.create_run(db.conn, config=profile_to_dict(validate_data(data)),
                                   profile_path="p.toml", home=home)
    return db, run_id


def test_ingested_alerts_open_and_clear_in_the_store_even_within_one_batch(home):
    db, run_id = make_run(home)
    engine = make_engine(config("ternary"))
    ingestor = Ingestor(Committer(db.conn, run_id, home / str(run_id), keep=0), engine)
    # uniform -> healthy band -> uniform again, all inside one batch: two alerts, the
    # first cleared, the second still open
    stream = [0.3] * 50 + [0.05] * 5 + [0.3] * 5 + [0.05] * 5
    for step, value in enumerate(stream, start=1):
        ingestor.feed({"type": "metrics", "step": step, "wall": float(step),
                       "values": {"moe/imbalance": value}})
    ingestor.commit()
    alerts = Reader(home / "moedesk.db").alerts(run_id)
    assert [(a["step"], a["cleared_step"]) for a in alerts] == [(55, 60), (65, None)]
    assert alerts[0]["rule"] == "load_balance" and alerts[0]["action"]
    assert Reader(home / "moedesk.db").worst_open_alert() == {run_id: "warning"}


def test_health_history_reads_back_what_a_replay_needs(home):
    db, run_id = make_run(home, "dense")
    ingestor = Ingestor(Committer(db.conn, run_id, home / str(run_id), keep=0),
                        make_engine(config("dense")))
    for step in range(1, 4):
        ingestor.feed({"type": "metrics", "step": step, "wall": 10.0 + step,
                       "values": {"train/loss": math.nan if step == 3 else 2.0,
                                  "train/lr": 0.1, "moe/L0/imbalance": 0.2}})
    ingestor.feed({"type": "metrics", "step": 3, "wall": 13.5, "values": {"val/loss": 2.5}})
    ingestor.commit()
    history, open_rules = store_runs.health_history(db.conn, run_id, RULE_METRICS)
    assert [s for s, _, _ in history] == [1, 2, 3]
    assert set(history[0][1]) == {"train/loss", "moe/L0/imbalance"}  # train/lr is not read
    assert math.isnan(history[2][1]["train/loss"]) and history[2][1]["val/loss"] == 2.5
    assert open_rules == ["nonfinite_loss"]


def test_the_metrics_events_of_one_step_reach_the_rules_as_one(home):
    # an external run logs its curves and its expert load's statistics as two events of
    # one step; an own trainer sends one. The rules see one observation either way.
    db, run_id = make_run(home, "dense")
    engine = make_engine(config("dense"))
    seen: list[tuple[int, dict]] = []
    observe = engine.observe

    def recording(step, values, wall):
        seen.append((step, dict(values)))
        return observe(step, values, wall)

    engine.observe = recording
    ingestor = Ingestor(Committer(db.conn, run_id, home / str(run_id), keep=0), engine)
    ingestor.feed({"type": "metrics", "step": 1, "wall": 1.0, "values": {"train/loss": 2.0}})
    ingestor.feed({"type": "metrics", "step": 1, "wall": 1.0,
                   "values": {"moe/L0/imbalance": 0.2, "train/loss": math.nan}})
    assert seen == []  # step 1 may still have events to come
    ingestor.feed({"type": "metrics", "step": 2, "wall": 2.0, "values": {"train/loss": 1.9}})
    assert [step for step, _ in seen] == [1]
    assert set(seen[0][1]) == {"train/loss", "moe/L0/imbalance"}
    assert math.isnan(seen[0][1]["train/loss"])  # the later event's value wins
    ingestor.commit()  # a commit shows the rules what they have not seen
    assert seen[1] == (2, {"train/loss": 1.9})
    alerts = Reader(home / "moedesk.db").alerts(run_id)
    assert [(a["rule"], a["step"]) for a in alerts] == [("nonfinite_loss", 1)]
    db.close()
