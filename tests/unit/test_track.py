"""The tracking API without processes: events file, tail, Run validation, ExternalRun ingest
on a real SQLite file, load metrics, settings, router counting on a custom module."""

from __future__ import annotations

import json
import math
import os
import sqlite3
from pathlib import Path

import pytest
import torch
from torch import nn

from moedesk.paths import events_file, stop_request_file
from moedesk.runner.external_run import ExternalRun, merge_started, run_context, settings
from moedesk.runner.loadmetrics import LoadMetrics
from moedesk.runner.protocol import decode
from moedesk.runner.tail import EventTail
from moedesk.stats.load import SCALAR_KEYS, load_stats
from moedesk.store import Reader, connect_writer
from moedesk.store import external as store_external
from moedesk.store.ingest import Batch
from moedesk.track.channel import EventWriter
from moedesk.track.router import RouterSet, chosen_experts, watch
from moedesk.track.run import Run, TrackError
from moedesk.track.start import init, program_name

REPO = Path(__file__).resolve().parents[2]


# ---- channel and tail ----------------------------------------------------------------------

def test_writer_lines_are_protocol_events_and_nonfinite_survives(tmp_path):
    writer = EventWriter(tmp_path / "e.jsonl")
    writer.write({"type": "metrics", "step": 1, "wall": 1.0, "values": {"a": 1.5}})
    writer.write({"type": "metrics", "step": 2, "wall": 1.0,
                  "values": {"a": math.nan, "b": math.inf}})
    writer.close()
    lines = (tmp_path / "e.jsonl").read_text().splitlines()
    assert [decode(line).event["values"]["a"] for line in lines][0] == 1.5
    second = decode(lines[1]).event["values"]
    assert math.isnan(second["a"]) and second["b"] == math.inf


def test_packed_metrics_lines_decode_to_exactly_the_values_logged(tmp_path):
    from moedesk.runner.protocol import MetricsPacker

    writer = EventWriter(tmp_path / "e.jsonl")
    cases = [{"train/loss": 2.0000000000000004, 'we"ird\\name': -1e-300, "ünï": 3.0},
             {"a": math.nan, "b": -math.inf, "c": -0.0}, {"big": 1e308, "bigger": 1e308}]
    for values in cases:
        writer.write_metrics(5, 1.25, MetricsPacker(tuple(values)), list(values.values()))
    writer.close()
    lines = (tmp_path / "e.jsonl").read_text().splitlines()
    for line, values in zip(lines, cases, strict=True):
        event = decode(line).event
        assert (event["type"], event["step"], event["wall"]) == ("metrics", 5, 1.25)
        assert list(event["values"]) == list(values)  # names and their order
        for name, value in values.items():
            got = event["values"][name]
            assert (math.isnan(got) if math.isnan(value)
                    else got == value and math.copysign(1, got) == math.copysign(1, value))
        assert "names" not in event and "f64" not in event  # one form for every consumer


@pytest.mark.parametrize("broken", [
    '{"type":"metrics","step":1,"wall":1.0,"names":["a","b"],"f64":"AAAAAAAA8D8="}',  # 1 of 2
    '{"type":"metrics","step":1,"wall":1.0,"names":["a"],"f64":"not base64!"}',
    '{"type":"metrics","step":1,"wall":1.0,"names":"a","f64":"AAAAAAAA8D8="}',
])
def test_a_packed_line_that_does_not_add_up_is_a_log_line(broken):
    decoded = decode(broken)
    assert decoded.event is None and decoded.text == broken
    good = broken.replace('["a","b"]', '["a"]').replace('"names":"a"', '"names":["a"]')
    if "not base64" not in good:
        assert decode(good).event["values"] == {"a": 1.0}


def test_tail_returns_complete_lines_and_the_unterminated_one_only_at_the_end(tmp_path):
    path = tmp_path / "e.jsonl"
    tail = EventTail(path)
    assert tail.read_lines() == []  # not created yet
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b'{"a":1}\n{"b":')
    assert tail.read_lines() == ['{"a":1}']
    os.write(fd, b'2}\n{"c"')
    assert tail.read_lines() == ['{"b":2}']
    assert tail.read_lines() == []
    assert tail.read_lines(final=True) == ['{"c"']
    os.close(fd)
    tail.close()


# ---- Run: what callers get wrong -----------------------------------------------------------

@pytest.fixture
def run(tmp_path):
    folder = tmp_path / "7"
    folder.mkdir()
    r = Run(run_id=7, name="t", run_dir=folder, events=events_file(folder))
    yield r
    if not r.finished:
        r.finish(wait=0)


def events(run: Run) -> list[dict]:
    return [decode(line).event for line in events_file(run.run_dir).read_text().splitlines()]


def test_log_steps_count_up_and_values_become_floats(run):
    run.log({"a": 1, "b": torch.tensor(2.5)})
    run.log({"a": 2}, step=10)
    run.log({"a": 3})
    got = [(e["step"], e["values"]) for e in events(run)]
    assert got == [(1, {"a": 1.0, "b": 2.5}), (10, {"a": 2.0}), (11, {"a": 3.0})]


@pytest.mark.parametrize("values, message", [
    ({"a": "x"}, "'a' = 'x' is not a number"),
    ({"a": [1, 2]}, "'a' = \\[1, 2\\] is not a number"),
    ({3: 1.0}, "metric names must be non-empty strings, got 3"),
    ({"ok": 1.0, None: 2.0}, "metric names must be non-empty strings, got None"),
    ({"": 1.0}, "metric names must be non-empty strings"),
    ([1, 2], "values must be a dict"),
])
def test_log_rejects_what_is_not_a_metric(run, values, message):
    with pytest.raises(TypeError, match=message):
        run.log(values)
    assert not events_file(run.run_dir).exists() or events(run) == []


def test_log_rejects_bad_steps(run):
    with pytest.raises(ValueError, match="step must be >= 0"):
        run.log({"a": 1}, step=-1)
    with pytest.raises(TypeError, match="step must be an integer"):
        run.log({"a": 1}, step=1.5)


def test_expert_load_forms_and_checks(run):
    with pytest.raises(ValueError, match="pass top_k="):
        run.log_expert_load({0: [1, 2]})
    run.log({"a": 1}, step=4)
    run.log_expert_load(torch.tensor([[3, 1], [2, 2]]), top_k=1)  # [layers, experts]
    run.log_expert_load({5: [1.0, 3.0, 0]}, step=6)  # top_k remembered, whole floats
    got = [e for e in events(run) if e["type"] == "expert_load"]
    assert got[0]["step"] == 4 and got[0]["loads"] == {"0": [3, 1], "1": [2, 2]}
    assert got[0]["top_k"] == 1 and got[1]["loads"] == {"5": [1, 3, 0]} and got[1]["step"] == 6
    for bad, message in [({0: [0.5, 1]}, "whole numbers"), ({0: [-1, 2]}, "negative count"),
                         ({0: []}, "has no experts"), ({"x": [1]}, "layers are integers"),
                         ({0: 3}, "must be a sequence")]:
        with pytest.raises((ValueError, TypeError), match=message):
            run.log_expert_load(bad)
    with pytest.raises(ValueError, match="fewer than top_k=3"):
        run.log_expert_load({0: [1, 2]}, top_k=3)


def test_expert_load_sends_its_moe_statistics_in_the_same_append(run):
    # the statistics are computed in the caller, as moedesk's own trainers do, and the two
    # lines are one os.write: a crash keeps the counts and their statistics or neither
    counts = {0: [30, 10, 0, 24], 2: [16, 16, 16, 16]}
    run.log_expert_load(counts, step=3, top_k=2)
    lines = events_file(run.run_dir).read_text().splitlines()
    assert len(lines) == 2
    load, stats = (decode(line).event for line in lines)
    assert load["type"] == "expert_load" and load["stats"] is True and load["step"] == 3
    assert stats["type"] == "metrics" and stats["step"] == 3 and stats["wall"] == load["wall"]
    assert stats["values"] == LoadMetrics().values(counts, 2)
    assert stats["values"]["moe/L0/max_share"] == pytest.approx(30 / 64)
    assert "moe/imbalance" in stats["values"] and "moe/L2/cv" in stats["values"]


def test_alert_levels_and_finished_run(run):
    with pytest.raises(ValueError, match="allowed values: info, warning, critical"):
        run.alert("x", level="fatal")
    run.alert("loss plateau", "no progress in 100 steps", level="info")
    run.finish(exit_code=2, wait=0)
    last = events(run)[-1]
    assert last["type"] == "finished" and last["status"] == "failed" and last["exit_code"] == 2
    with pytest.raises(TrackError, match="is finished"):
        run.log({"a": 1})
    run.finish()  # a second finish is a no-op
    assert [e["type"] for e in events(run)].count("finished") == 1


def test_should_stop_follows_the_stop_request_file(run):
    assert not run.should_stop
    stop_request_file(run.run_dir).write_text("{}")
    assert run.should_stop
    run.finish(wait=0)
    assert events(run)[-1]["status"] == "stopped"


def test_with_block_exception_fails_the_run(tmp_path):
    r = Run(run_id=1, name="t", run_dir=tmp_path, events=events_file(tmp_path))
    with pytest.raises(ZeroDivisionError), r:
        1 / 0  # noqa: B018
    last = [decode(x).event for x in events_file(tmp_path).read_text().splitlines()][-1]
    assert last["status"] == "failed" and "ZeroDivisionError" in last["reason"]


@pytest.mark.parametrize("kwargs, message", [
    ({"name": ""}, "name must be a non-empty string"),
    ({"tags": "abc"}, "tags must be a list"),
    ({"total_steps": 0}, "total_steps must be an integer >= 1"),
    ({"stop_on": "sometimes"}, "stop_on got 'sometimes'; allowed values: warning, critical, never"),
    ({"moe": {"experts": 8}}, "moe.experts is unknown; allowed keys: num_experts"),
    ({"moe": {"num_experts": 2, "top_k": 3}}, "top_k=3 is more than moe.num_experts=2"),
    ({"health": {"routing_collapse": {"max_token_fraction": "high"}}}, "must be a number"),
    ({"health": {"nope": {}}}, "unknown key"),
    ({"config": 3}, "config must be a dict"),
])
def test_init_rejects_bad_arguments_before_creating_anything(tmp_path, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        init(home=tmp_path, **kwargs)
    assert not (tmp_path / "moedesk.db").exists()


def test_the_moe_shape_can_come_from_the_config():
    from moedesk.track.start import _shape_from_config

    assert _shape_from_config({"num_local_experts": 8, "num_experts_per_tok": 2}) == \
        {"num_experts": 8, "top_k": 2}
    assert _shape_from_config({"moe": {"num_experts": 16, "top_k": 4}, "lr": 1}) == \
        {"num_experts": 16, "top_k": 4}
    assert _shape_from_config({"top_k": 9, "num_experts": 4}) == {}  # not a shape
    assert _shape_from_config({"top_k": True}) == {}


def test_program_name():
    assert program_name(["/x/train.py", "--lr"]) == "train"
    assert program_name(["/x/pkg/__main__.py"]) == "pkg"
    assert program_name(["-c"]) == "python"


# ---- the supervisor side, fed directly --------------------------------------------------

@pytest.fixture
def ext(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    db = connect_writer(home / "moedesk.db")
    config = settings(stop_on="critical")
    run_id, name = store_external.create_external_run(db.conn, home=home, config=config,
                                                      default_stem="job", stop_on="critical")
    folder = home / str(run_id)
    folder.mkdir()
    config["name"] = name
    yield ExternalRun(db.conn, run_id, config, folder), home
    db.close()


def feed(run: ExternalRun, *evs: dict) -> None:
    for e in evs:
        run.feed_line(json.dumps(e))
    run.ingestor.commit()


def test_expert_load_becomes_rows_moe_metrics_and_the_run_shape(ext):
    run, home = ext
    counts = [30, 10, 0, 24]
    feed(run, {"type": "started", "step": 0, "name": "mine", "tags": ["a"], "total_steps": 50,
               "config": {"lr": 0.1, "seed": 4}},
         {"type": "metrics", "step": 1, "wall": 1.0, "values": {"train/loss": 2.0}},
         {"type": "expert_load", "step": 1, "wall": 1.0, "loads": {"3": counts}, "top_k": 2})
    with Reader(home / "moedesk.db") as reader:
        info = reader.run(run.run_id)
        assert info.name == "mine" and info.total_steps == 50 and info.row["seed"] == 4
        assert info.config["moe"] == {"num_experts": 4, "top_k": 2}
        assert info.config["config"] == {"lr": 0.1, "seed": 4}
        rows, _ = reader.metrics_since(run.run_id, 0)
        values = {name: value for _, _, name, value in rows}
        loads, _ = reader.expert_load_since(run.run_id, 0)
    expected = load_stats(counts, 2)
    for key in SCALAR_KEYS:
        assert values[f"moe/L3/{key}"] == pytest.approx(expected[key])
    assert values["moe/L3/dead_experts"] == 0  # one zero step is not dead (window 20)
    assert values["train/loss"] == 2.0
    assert [(step, layer, c) for step, layer, c in loads] == [(1, 3, counts)]
    assert store_external.run_tags(run.conn, run.run_id) == ["a"]
    assert run_context(run.config).kind == "topk" and run_context(run.config).num_experts == 4


def test_statistics_sent_with_the_counts_are_stored_once_and_bare_counts_get_them(ext):
    run, home = ext
    counts = [30, 10, 0, 24]
    sent = LoadMetrics().values({0: counts}, 2)
    feed(run, {"type": "expert_load", "step": 1, "wall": 1.0, "loads": {"0": counts},
               "top_k": 2, "stats": True},
         {"type": "metrics", "step": 1, "wall": 1.0, "values": sent},
         # a hand-written event (another language, no moedesk.track): the supervisor
         # computes the same statistics itself
         {"type": "expert_load", "step": 2, "wall": 2.0, "loads": {"0": counts}, "top_k": 2})
    with Reader(home / "moedesk.db") as reader:
        rows, _ = reader.metrics_since(run.run_id, 0)
    by_step: dict[int, dict[str, float]] = {}
    for _, step, name, value in rows:
        assert name not in by_step.setdefault(step, {}), f"{name} stored twice at step {step}"
        by_step[step][name] = value
    assert set(by_step[1]) == set(sent) == set(by_step[2])
    for name, value in sent.items():
        assert by_step[1][name] == pytest.approx(value, nan_ok=True)
        assert by_step[2][name] == pytest.approx(value, nan_ok=True)


def test_collapse_on_an_external_run_fires_and_requests_a_stop(ext):
    run, home = ext
    feed(run, {"type": "started", "step": 0, "moe": {"balanced": False}})
    for step in range(1, 31):
        feed(run, {"type": "expert_load", "step": step, "wall": float(step),
                   "loads": {"0": [64, 0, 0, 0]}, "top_k": 1})
    with Reader(home / "moedesk.db") as reader:
        rules = [a["rule"] for a in reader.alerts(run.run_id)]
    assert "routing_collapse" in rules and "dead_experts" in rules
    assert run.health_stop and run.health_stop[0]["rule"] == "routing_collapse"
    assert stop_request_file(run.run_dir).exists()
    # unbalanced: the rule waits 20 steps, then its patience of 3
    assert run.health_stop[0]["step"] == 22


def test_user_alerts_and_garbage_lines(ext):
    run, home = ext
    feed(run, {"type": "alert", "step": 3, "title": "plateau", "text": "flat", "level": "info"})
    run.feed_line("not json at all")
    run.feed_line('{"type": "bogus"}')
    with Reader(home / "moedesk.db") as reader:
        alert = reader.alerts(run.run_id)[0]
    assert (alert["rule"], alert["severity"], alert["message"]) == ("user", "info", "plateau: flat")
    assert run.ingestor.log_lines == ["not json at all", '{"type": "bogus"}']


def test_bad_settings_in_a_started_event_are_ignored_with_a_note(ext):
    run, _ = ext
    feed(run, {"type": "started", "step": 0, "stop_on": "often", "health": {"x": 1}})
    assert run.config["health"] == {"stop_on": "critical", "rules": {}}
    assert "stop_on" in run.notes[-1] and "health.x" in run.notes[-1]


def test_settings_and_rows_are_spooled_while_the_store_is_locked(tmp_path):
    """A store that refuses writes never takes the supervisor down: the run's new settings
    travel in the batch (Batch.settings) and are spooled and replayed with its rows."""
    home = tmp_path / "home"
    home.mkdir()
    db = connect_writer(home / "moedesk.db", busy_timeout_ms=50)
    config = settings(stop_on="critical")
    run_id, name = store_external.create_external_run(db.conn, home=home, config=config,
                                                      default_stem="job", stop_on="critical")
    folder = home / str(run_id)
    folder.mkdir()
    run = ExternalRun(db.conn, run_id, {**config, "name": name}, folder)
    blocker = sqlite3.connect(home / "moedesk.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        feed(run, {"type": "started", "step": 0, "name": "renamed", "tags": ["t1", "bad tag"],
                   "config": {"lr": 0.5}},
             {"type": "metrics", "step": 1, "wall": 1.0, "values": {"train/loss": 2.0}},
             {"type": "expert_load", "step": 1, "wall": 1.0, "loads": {"0": [3, 1]}, "top_k": 1})
        assert run.committer.down and (folder / "spool.jsonl").exists()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    run.committer.retry_at = 0.0
    run.committer.retry_if_due()
    assert not run.committer.down and not (folder / "spool.jsonl").exists()
    with Reader(home / "moedesk.db") as reader:
        info = reader.run(run_id)
        rows, _ = reader.metrics_since(run_id, 0)
        alerts = reader.alerts(run_id)
    assert info.name == "renamed" and info.config["config"] == {"lr": 0.5}
    assert info.config["moe"] == {"num_experts": 2, "top_k": 1}
    assert store_external.run_tags(db.conn, run_id) == ["t1"]  # the invalid tag left out
    assert {name for _, _, name, _ in rows} >= {"train/loss", "moe/L0/cv"}
    assert [a["rule"] for a in alerts] == ["store_unwritable"]
    db.close()


def test_a_batch_survives_the_spool_whole():
    batch = Batch(samples=[(3, "p", "t", 0.8, 1, 16, 1.0)], best_step=3,
                  settings={"config": {"name": "x"}, "tags": ["a"]})
    batch.add_metrics(3, {"a": 1.0}, 1.0)
    again = Batch.from_json(json.loads(json.dumps(batch.to_json())))
    assert again == batch and len(again) == len(batch) == 3


def test_malformed_events_are_logged_not_stored_and_never_raise(ext):
    run, home = ext
    feed(run, {"type": "metrics", "step": "x", "values": {"a": 1}},
         {"type": "expert_load", "step": 2, "loads": {"0": [1, -4]}, "top_k": 1},
         {"type": "expert_load", "step": 2, "loads": {"0": "many"}, "top_k": 1},
         {"type": "alert", "step": "soon", "title": "t"},
         {"type": "metrics", "step": 3, "wall": 1.0, "values": {"a": 1}})
    with Reader(home / "moedesk.db") as reader:
        rows, _ = reader.metrics_since(run.run_id, 0)
        loads, _ = reader.expert_load_since(run.run_id, 0)
    assert [(step, name) for _, step, name, _ in rows] == [(3, "a")] and loads == []
    assert len(run.ingestor.log_lines) == 4
    assert any("was not stored" in n for n in run.notes)


def test_merge_started_keeps_a_watch_name():
    named = settings(name="given", command=["python", "x.py"], cwd="/tmp", program="x")
    merged = merge_started(named, {"name": "from-init", "config": {"a": 1}, "total_steps": 9})
    assert merged["name"] == "given" and merged["config"] == {"a": 1}
    assert merged["external"]["command"] == ["python", "x.py"]
    assert merged["train"]["steps"] == 9
    unnamed = settings(program="x")
    assert merge_started(unnamed, {"name": "from-init"})["name"] == "from-init"


def test_load_metrics_dead_experts_need_the_window():
    metrics = LoadMetrics(dead_window=3)
    seen = [metrics.values({0: [5, 0]}, 1)["moe/L0/dead_experts"] for _ in range(3)]
    assert seen == [0.0, 0.0, 1.0]


# ---- routers ---------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def one_thread():
    # a busy machine makes torch's thread pool spin: one thread is faster for tiny tensors
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TinyRouter(nn.Module):
    """A moedesk-independent router: logits, gates and ids, like most MoE code."""

    def __init__(self, dim=8, experts=4, k=2):
        super().__init__()
        self.proj = nn.Linear(dim, experts, bias=False)
        self.k = k

    def forward(self, x):
        logits = self.proj(x)
        gates, ids = logits.softmax(-1).topk(self.k, dim=-1)
        return logits, gates, ids


def test_router_counts_training_forwards_only():
    routers = RouterSet()
    module = TinyRouter()
    watch(routers, module, top_k=2)
    x = torch.randn(5, 3, 8)
    module.train()
    _, _, ids = module(x)
    module(x)
    with torch.no_grad():
        module(x)  # not training: no gradients
    module.eval()
    module(x)
    counts = routers.take()[0]
    assert sum(counts) == 2 * 15 * 2
    assert counts == torch.bincount(ids.reshape(-1), minlength=4).mul(2).tolist()
    assert routers.take() == {}  # emptied


@pytest.mark.slow  # torch.utils.checkpoint imports torch._dynamo: seconds
def test_router_skips_the_recompute_of_activation_checkpointing():
    from torch.utils.checkpoint import checkpoint

    routers = RouterSet()
    module = TinyRouter()
    watch(routers, module, top_k=2)
    x = torch.randn(6, 8, requires_grad=True)
    logits, gates, _ = checkpoint(module, x, use_reentrant=False)
    (gates.sum() + logits.sum()).backward()  # re-runs the forward inside backward
    assert sum(routers.take()[0]) == 6 * 2


def test_router_contract_from_logits_and_out_of_range_ids():
    ids, experts = chosen_experts(torch.tensor([[0.1, 0.9, 0.0]]), 1, None)
    assert ids.tolist() == [[1]] and experts == 3
    routers = RouterSet()
    module = nn.Identity()
    watch(routers, module, top_k=2, num_experts=3)
    module.train()
    with torch.enable_grad():
        module(torch.tensor([[0, 2], [-1, 1]]))  # -1: a dropped slot
    assert routers.take()[0] == [1, 1, 1]


def test_watch_needs_top_k_and_distinct_layers():
    routers = RouterSet()
    with pytest.raises(ValueError, match="pass top_k="):
        watch(routers, nn.Linear(4, 4))
    watch(routers, TinyRouter(), top_k=2, layer=1)
    with pytest.raises(ValueError, match="layer 1 is watched already"):
        watch(routers, TinyRouter(), top_k=2, layer=1)
    with pytest.raises(TypeError, match="expected a torch.nn.Module"):
        watch(routers, "router", top_k=2)
