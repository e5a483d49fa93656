"""Suggested actions fit the run: no setting it already has, no seed numbers, the right knobs."""

from __future__ import annotations

import re

import pytest

from moedesk.health.thresholds import RULES
from moedesk.profiles import flat_settings, load_profile, profile_from_dict
from moedesk.runner.supervise import make_engine
from tests.conftest import PROFILES

SHIPPED = sorted(PROFILES.glob("*.toml"))
CHANGE = re.compile(r"(?:set|raise|lower) ([a-z_]+\.[a-z_]+) from (\S+) to (\S+?)(?: \(|;|\.$)")


def settings(kind="topk", **sections) -> dict:
    data = {"name": "t", "kind": kind, "seed": 0}
    for key, value in sections.items():
        section, name = key.split("__")
        data.setdefault(section, {})[name] = value
    return flat_settings(profile_from_dict(data))


def action(rule, s, condition="high"):
    """The action as its sentences read mid-text (the first letter is capitalized)."""
    text = RULES[rule].action(s["kind"], s, condition)
    return text[0].lower() + text[1:]


def shown(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return f"{value:.3g}"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_no_action_suggests_what_the_run_has_or_cites_a_seed(path, shipped_overrides):
    s = flat_settings(load_profile(path, shipped_overrides(path)))
    for name, spec in RULES.items():
        if s["kind"] not in spec.kinds:
            continue
        for condition in ("high", "low", ""):
            text = spec.action(s["kind"], s, condition)
            text = text[0].lower() + text[1:]
            assert not re.search(r"seed \d", text), (name, text)
            for key, was, to in CHANGE.findall(text):
                assert key in s, (name, key)
                assert was == shown(s[key]), (name, text)  # "from" is what the run has
                assert to != was, (name, text)


def test_collapse_never_suggests_top_k_2_to_a_top_2_run():
    top2 = action("routing_collapse", settings(moe__top_k=2, moe__num_experts=8))
    assert "top_k" not in top2
    top1 = action("routing_collapse", settings(moe__top_k=1, moe__num_experts=8))
    assert "set moe.top_k from 1 to 2" in top1


def test_balance_advice_follows_the_balancing_settings():
    on = action("routing_collapse", settings(moe__aux_loss_weight=0.01))
    assert "raise moe.aux_loss_weight from 0.01 to 0.05" in on
    assert "raise moe.bias_update_speed from 0.001 to 0.002" in on
    assert "bias_balancing" not in on and "router_init_std" not in on  # 0.01 is already small
    off = action("usage_std", settings(moe__bias_balancing=False, moe__aux_loss_weight=0.05))
    assert "set moe.bias_balancing from false to true" in off
    assert "raise moe.aux_loss_weight from 0.05 to 0.1" in off
    wide = action("routing_collapse", settings(moe__router_init_std=0.1))
    assert "set moe.router_init_std from 0.1 to 0.02" in wide


def test_unstable_training_advice_reads_lr_and_clipping():
    s = settings("dense", train__lr=3e-3, train__grad_clip=0.0)
    text = action("nonfinite_loss", s)
    assert "lower train.lr from 0.003 to 0.001" in text
    assert "set train.grad_clip from 0 to 1" in text and "aux_loss_weight" not in text
    clipped = action("nonfinite_loss", settings("dense", train__grad_clip=0.5))
    assert "grad_clip" not in clipped
    spike = action("loss_spike", settings("topk", train__lr=1e-3, moe__z_loss_weight=0.0))
    assert "lower train.lr from 0.001 to 0.0005" in spike
    assert "set moe.z_loss_weight from 0 to 0.001" in spike
    assert "z_loss" not in action("loss_spike", settings("topk", moe__z_loss_weight=0.001))


def test_goodness_delta_names_the_ternary_knobs_not_a_learning_rate():
    s = settings("ternary")
    text = action("goodness_delta", s, "low")
    assert "raise ternary.update_fraction from 0.05 to 0.1" in text
    assert "raise ternary.corruption from 0.1 to 0.2" in text
    assert "ternary.target_activity (0.5)" in text
    assert "train.lr" not in text and "learning rate" not in text.replace("trits' learning", "")
    ref = action("goodness_delta", settings("ternary", ternary__hebbian_rule="reference",
                                            ternary__target_activity=0.0), "low")
    assert 'set ternary.hebbian_rule from "reference" to "contrastive"' in ref
    assert "set ternary.target_activity from 0 to 0.5" in ref


def test_load_balance_advice_depends_on_the_side_of_the_band():
    s = settings("ternary", ternary__load_balance_alpha=0.1)
    assert "raise ternary.load_balance_alpha from 0.1 to 0.2" in action("load_balance", s, "high")
    assert "lower ternary.load_balance_alpha from 0.1 to 0.01" in action("load_balance", s, "low")
    off = settings("ternary", ternary__load_balance_alpha=0.0)
    assert "is 0" in action("load_balance", off, "low")


def test_routing_latency_never_recommends_the_slower_hierarchical_selection():
    hier = action("routing_latency", settings("ternary", ternary__topology="hierarchical"))
    assert 'set ternary.topology from "hierarchical" to "flat"' in hier
    flat = action("routing_latency", settings("ternary", ternary__topology="flat"))
    assert "topology" not in flat and "hierarchical" not in flat
    assert "starving the run of CPU" in flat
    spin = action("routing_latency", settings("topk", train__threads=0))
    assert "set train.threads from 0 to 1" in spin and "ternary" not in spin


def test_the_alert_carries_the_action_fitted_to_its_run():
    config = {"name": "t", "kind": "topk", "seed": 0, "moe": {"num_experts": 8, "top_k": 2},
              "train": {"warmup_steps": 0},
              "health": {"rules": {"routing_collapse": {"after_step": 0, "patience": 1}}}}
    (alert,) = make_engine(config).observe(1, {"moe/max_token_fraction": 0.95}, 1.0)[0]
    assert alert["rule"] == "routing_collapse"
    assert "top_k" not in alert["action"] and "moe.aux_loss_weight from 0.01 to 0.05" in \
        alert["action"]
    assert not re.search(r"seed \d", alert["message"] + alert["action"])


def test_without_settings_the_advice_is_general():
    for name, spec in RULES.items():
        text = spec.action()
        assert text and text.endswith(".") and not CHANGE.search(text), (name, text)
