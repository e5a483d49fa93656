"""Health rules on real runs through the real CLI and supervisor.

One data home holds them all, started together so the two cores stay busy: a top-k run
built to collapse (routing collapse stops it), a diverging learning rate (non-finite
loss: failed, last good checkpoint kept), and the healthy tiny run of each kind, which
must raise no warning or critical alert at all.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal

import pytest
import torch

from moedesk.runner.checkpoints import list_checkpoints, verify_checkpoint
from moedesk.store import Reader
from tests.conftest import PROFILES, moedesk, wait_for

HEALTHY = [p for p in ("tiny_dense", "tiny_topk", "tiny_ternary") if (PROFILES / f"{p}.toml").exists()]
DIVERGING = ["--set", "train.lr=100.0", "--set", "train.grad_clip=0", "--set",
             "train.warmup_steps=0", "--set", "train.steps=60", "--set", "checkpoint.every=5",
             "--set", "checkpoint.keep=0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{label: run id} of runs that have all ended, in one shared home."""
    home = tmp_path_factory.mktemp("health") / "home"
    home.mkdir()
    started = {}
    plan = [("collapse", "profiles/topk_collapse.toml", [])]
    plan += [("diverging", "profiles/tiny_dense.toml", DIVERGING)]
    plan += [(name, f"profiles/{name}.toml", []) for name in HEALTHY]
    for label, profile, extra in plan:
        out = moedesk("run", profile, *extra, "--set", "train.threads=1", "--detach",
                      home=home, check=True)
        started[label] = int(out.stdout.split("started run ")[1].split()[0])
    wait_for(lambda: all(r.status not in ("queued", "running")
                         for r in Reader(home / "moedesk.db").runs()),
             timeout=400, interval=0.5, what="every health run to end")
    return home, started


def alerts_of(home, run_id, *severities):
    found = Reader(home / "moedesk.db").alerts(run_id)
    return [a for a in found if not severities or a["severity"] in severities]


def test_collapsing_router_fires_routing_collapse_and_is_stopped(runs):
    home, ids = runs
    info = Reader(home / "moedesk.db").run(ids["collapse"])
    collapse = [a for a in alerts_of(home, info.id) if a["rule"] == "routing_collapse"]
    assert len(collapse) == 1, alerts_of(home, info.id)  # fired once, no storm
    (alert,) = collapse
    assert alert["severity"] == "critical" and alert["value"] > 0.8
    assert alert["cleared_step"] is None
    # the action fits topk_collapse.toml (no balancing, aux 0, top-1) and cites no seed
    assert "or raise moe.aux_loss_weight from 0 to 0.05" in alert["action"]
    assert "set moe.top_k from 1 to 2" in alert["action"] and "seed 0" not in alert["action"]
    # critical meets the default stop_on: the supervisor stopped it with a checkpoint
    assert info.status == "stopped", info.row["error"]
    assert info.row["error"].startswith("stopped by health rule routing_collapse")
    assert info.last_step < info.total_steps
    assert list_checkpoints(info.row["run_dir"])[-1].step >= alert["step"]
    shown = moedesk("alerts", str(info.id), "--json", home=home, check=True)
    assert "routing_collapse" in {a["rule"] for a in json.loads(shown.stdout)}


def test_diverging_learning_rate_fires_non_finite_loss_and_keeps_a_good_checkpoint(runs):
    home, ids = runs
    info = Reader(home / "moedesk.db").run(ids["diverging"])
    assert info.status == "failed" and "non-finite" in info.row["error"]
    (alert,) = alerts_of(home, info.id, "critical")
    assert alert["rule"] == "nonfinite_loss" and alert["step"] == info.last_step
    # the newest checkpoint predates the bad step, verifies, and loads without moedesk
    ckpt = list_checkpoints(info.row["run_dir"])[-1]
    assert ckpt.step < alert["step"]
    verify_checkpoint(ckpt)
    state = torch.load(io.BytesIO(ckpt.path.read_bytes()), map_location="cpu", weights_only=False)
    assert state["step"] == ckpt.step
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    text = moedesk("alerts", str(info.id), home=home, check=True).stdout
    assert "critical nonfinite_loss" in text and "Lower train.lr" in text


@pytest.mark.parametrize("profile", HEALTHY)
def test_healthy_tiny_runs_raise_no_warning_or_critical_alert(runs, profile):
    home, ids = runs
    info = Reader(home / "moedesk.db").run(ids[profile])
    assert info.status == "completed", info.row["error"]
    assert alerts_of(home, info.id, "warning", "critical") == []
    # the rules did look: the metrics they read were there on every logged step
    latest = Reader(home / "moedesk.db").latest_metrics(info.id)
    watched = {"dense": "train/loss", "topk": "moe/max_token_fraction",
               "ternary": "ff/goodness_delta"}[info.kind]
    assert watched in latest and math.isfinite(latest[watched][1])


def test_a_frozen_trainer_fires_stalled_and_clears_when_it_moves_again(home):
    moedesk("run", "profiles/tiny_dense.toml", "--set", "train.steps=100000", "--set",
            "train.threads=1", "--set", "health.stalled.min_seconds=2", "--set",
            "health.stalled.factor=5", "--detach", home=home, check=True)
    reader = Reader(home / "moedesk.db")
    wait_for(lambda: reader.run(1).last_step >= 25, timeout=120, what="steps")
    trainer = reader.run(1).row["trainer_pid"]
    os.kill(trainer, signal.SIGSTOP)  # hung: alive, but no step comes
    try:
        (alert,) = wait_for(lambda: alerts_of(home, 1, "warning"), timeout=30, what="stalled")
        assert alert["rule"] == "stalled" and alert["step"] == reader.run(1).last_step
        assert "no new step for" in alert["message"] and alert["cleared_step"] is None
        assert reader.run(1).status == "running"  # a warning does not stop the run
    finally:
        os.kill(trainer, signal.SIGCONT)
    wait_for(lambda: alerts_of(home, 1)[0]["cleared_step"] is not None, timeout=30,
             what="the stall to clear")
    moedesk("stop", "1", home=home, check=True)
    wait_for(lambda: reader.run(1).status == "stopped", timeout=60, what="stop")
    assert len(alerts_of(home, 1)) == 1  # one stall, one alert
