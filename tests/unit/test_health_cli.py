"""`moedesk alerts` over a real store, and `[health.RULE]` overrides from profile to engine."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from moedesk.cli import app
from moedesk.profiles import load_profile, parse_overrides, profile_to_dict
from moedesk.runner.commit import Committer
from moedesk.runner.ingest import Ingestor
from moedesk.runner.protocol import TRAINER_ALERT_RULE
from moedesk.runner.supervise import make_engine
from moedesk.store import connect_writer
from moedesk.store import runs as store_runs
from moedesk.train.speed import BF16_EMULATED_RULE, bf16_alert
from tests.conftest import PROFILES


def make_alerts(home) -> None:
    """Run 1: a NaN loss (open critical); run 2: a load-balance warning that cleared."""
    db = connect_writer(home / "moedesk.db")
    for name, kind, stream in (("tiny_dense", "dense", [{"train/loss": 2.0},
                                                        {"train/loss": math.inf}]),
                               ("tiny_ternary", "ternary", [{"moe/imbalance": 0.9}] * 60
                                + [{"moe/imbalance": 0.3}] * 5)):
        config = profile_to_dict(load_profile(PROFILES / f"{name}.toml"))
        assert config["kind"] == kind
        run_id, _ = store_runs.create_run(db.conn, config=config, profile_path=name, home=home)
        ingestor = Ingestor(Committer(db.conn, run_id, home / str(run_id), keep=0), make_engine(config))
        for step, values in enumerate(stream, start=1):
            ingestor.feed({"type": "metrics", "step": step, "wall": float(step),
                           "values": values})
        ingestor.commit()
    db.close()


@pytest.mark.slow
def test_alerts_lists_every_runs_alerts_with_state_and_action(home):
    make_alerts(home)
    result = CliRunner().invoke(app, ["alerts", "--home", str(home)])
    assert result.exit_code == 0, result.output
    text = result.output.replace("\n", " ")
    assert "run 1 step 2 critical nonfinite_loss (open)" in text
    assert "train/loss is inf" in text
    assert "run 2 step 54 critical load_balance (cleared at step 65)" in text
    assert "suggested actions:" in text and "Lower train.lr" in text


@pytest.mark.slow
def test_alerts_of_one_run_open_only_and_json(home):
    make_alerts(home)
    runner = CliRunner()
    result = runner.invoke(app, ["alerts", "2", "--json", "--home", str(home)])
    rows = json.loads(result.output)
    # straight to 0.9: one critical alert, not a warning and then a critical
    assert [(a["run_id"], a["rule"], a["severity"], a["cleared_step"]) for a in rows] == [
        (2, "load_balance", "critical", 65)]
    result = runner.invoke(app, ["alerts", "--open", "--json", "--home", str(home)])
    (alert,) = json.loads(result.output)
    assert alert["rule"] == "nonfinite_loss" and alert["value"] == "inf"  # valid JSON
    result = runner.invoke(app, ["alerts", "2", "--open", "--home", str(home)])
    assert "no alerts open" in result.output


def test_alerts_of_an_unknown_run_is_a_clear_error(home):
    make_alerts(home)
    result = CliRunner().invoke(app, ["alerts", "nope", "--home", str(home)])
    assert result.exit_code == 2 and "no run 'nope'" in result.output
    assert "Traceback" not in result.output


def test_set_overrides_reach_the_engine():
    profile = load_profile(PROFILES / "tiny_topk.toml", parse_overrides([
        "health.routing_collapse.after_step=0", "health.routing_collapse.patience=1",
        "health.usage_entropy.enabled=false", "health.stop_on=never"]))
    engine = make_engine(profile_to_dict(profile))
    assert "usage_entropy" not in engine.rule_names and engine.stop_on == "never"
    fired, _ = engine.observe(1, {"moe/max_token_fraction": 0.95}, 1.0)
    assert [(a["rule"], a["stops"]) for a in fired] == [("routing_collapse", False)]


def test_a_trainers_own_alert_is_stored_with_its_rule_and_action(home):
    alert = bf16_alert(load_profile(PROFILES / "tiny_dense.toml", {"train.bf16": True}).train,
                       torch.device("cpu"), has_bf16=False)
    db = connect_writer(home / "moedesk.db")
    config = profile_to_dict(load_profile(PROFILES / "tiny_dense.toml"))
    run_id, _ = store_runs.create_run(db.conn, config=config, profile_path="tiny_dense",
                                      home=home)
    ingestor = Ingestor(Committer(db.conn, run_id, home / str(run_id), keep=0),
                        make_engine(config))
    ingestor.feed({"type": "alert", "step": 0, "wall": 1.0, **alert})
    ingestor.feed({"type": "alert", "step": 0, "wall": 2.0, "title": "no rule named"})
    ingestor.commit()
    db.close()
    result = CliRunner().invoke(app, ["alerts", "--json", "--home", str(home)])
    rows = json.loads(result.output)
    assert [(a["rule"], a["severity"]) for a in rows] == [
        (BF16_EMULATED_RULE, "warning"), (TRAINER_ALERT_RULE, "warning")]
    assert rows[0]["message"].startswith("bf16 is emulated on this CPU: ")
    assert "bf16 = false" in rows[0]["action"] and rows[1]["action"] is None
