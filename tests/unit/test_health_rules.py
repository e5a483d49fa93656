"""Each health rule on synthetic metric streams: thresholds, scaling, patience, hysteresis."""

from __future__ import annotations

import math

import pytest

from moedesk.health.engine import HealthEngine, RunContext
from moedesk.health.rules import worst_of
from moedesk.health.thresholds import RULES
from moedesk.profiles import flat_settings, profile_from_dict
from moedesk.profiles.schema import TernarySection, TrainSection
from moedesk.runner.supervise import make_engine, run_context
from moedesk.stats import names


def config(kind="topk", num_experts=8, top_k=2, stop_on="critical", **rules) -> dict:
    """A stored config (sections left out take the schema's defaults); no LR warmup, so
    the balance rules start at their own after_step."""
    return {"name": "t", "kind": kind, "seed": 0,
            "moe": {"num_experts": num_experts, "top_k": top_k},
            "ternary": {"num_experts": 243, "active_experts": 16}, "train": {"warmup_steps": 0},
            "health": {"stop_on": stop_on, "rules": rules}}


def feed(engine, stream, start=1):
    """Observe `stream` (a list of value dicts) at steps start, start+1, ...; collect events."""
    fired, cleared = [], []
    for i, values in enumerate(stream):
        f, c = engine.observe(start + i, values, float(start + i))
        fired += f
        cleared += c
    return fired, cleared


def only(engine_rules, name):
    return [a for a in engine_rules if a["rule"] == name]


def test_every_rule_in_the_table_cites_a_source_and_an_action():
    for spec in RULES.values():
        assert spec.source and spec.action and spec.kinds
        assert "enabled" in spec.params


def test_rules_only_run_for_their_kinds():
    dense = make_engine(config("dense")).rule_names
    topk = make_engine(config("topk")).rule_names
    ternary = make_engine(config("ternary")).rule_names
    assert set(dense) == {"nonfinite_loss", "loss_spike", "stalled"}
    assert {"routing_collapse", "usage_entropy", "router_z_loss", "expert_underused"} <= set(topk)
    assert "goodness_delta" not in topk and "load_balance" not in topk
    assert set(ternary) == {"dead_experts", "goodness_delta", "load_balance", "routing_latency",
                            "stalled"}


def test_nan_loss_is_critical_at_once_and_stops_unless_never():
    for stop_on, stops in (("critical", True), ("warning", True), ("never", False)):
        engine = make_engine(config("dense", stop_on=stop_on))
        fired, _ = feed(engine, [{"train/loss": 2.0}] * 3 + [{"train/loss": math.nan}])
        (alert,) = fired
        assert alert["rule"] == "nonfinite_loss" and alert["severity"] == "critical"
        assert alert["step"] == 4 and alert["stops"] is stops
        assert "train/loss is nan" in alert["message"] and alert["action"]


def test_infinite_grad_norm_counts_as_non_finite():
    engine = make_engine(config("dense"))
    fired, _ = feed(engine, [{"train/loss": 2.0, "train/grad_norm": math.inf}])
    assert fired[0]["metric"] == "train/grad_norm" and fired[0]["value"] == math.inf


def test_loss_spike_needs_patience_and_its_own_history():
    engine = make_engine(config("dense"))
    steady = [{"train/loss": 2.0 + 0.05 * (i % 3)} for i in range(30)]
    fired, _ = feed(engine, steady + [{"train/loss": 5.0}] * 3 + steady[:5])
    assert not fired  # three outliers are below patience 4
    fired, cleared = feed(engine, [{"train/loss": 5.0}] * 6 + steady[:6], start=100)
    (alert,) = fired
    assert alert["rule"] == "loss_spike" and alert["step"] == 103 and alert["severity"] == "warning"
    assert alert["threshold"] == pytest.approx(2 * 2.05, rel=0.02)
    assert cleared == [("loss_spike", 109)]  # four healthy readings after the spike


def test_a_long_spike_does_not_raise_its_own_bar():
    engine = make_engine(config("dense"))
    fired, cleared = feed(engine, [{"train/loss": 2.0}] * 30 + [{"train/loss": 4.5}] * 200)
    assert len(fired) == 1 and not cleared


def test_falling_loss_early_in_training_is_no_spike():
    engine = make_engine(config("dense"))
    fired, _ = feed(engine, [{"train/loss": 5.5 * math.exp(-i / 40) + 1.5} for i in range(300)])
    assert not fired


def test_routing_collapse_watches_the_worst_layer_after_warmup():
    engine = make_engine(config(num_experts=4, top_k=2))
    # layer 1 collapsed, layer 0 fine: the layer mean (0.75) would hide it
    collapsed = {"moe/max_token_fraction": 0.75, "moe/L0/max_token_fraction": 0.55,
                 "moe/L1/max_token_fraction": 0.95}
    fired, _ = feed(engine, [collapsed] * 110)
    (alert,) = only(fired, "routing_collapse")
    assert alert["step"] == 102  # after_step 100, patience 3
    assert alert["metric"] == "moe/L1/max_token_fraction" and alert["severity"] == "critical"
    assert alert["stops"] is True and "95% of the tokens" in alert["message"]


def test_routing_collapse_cannot_happen_when_every_token_goes_everywhere():
    assert "routing_collapse" not in make_engine(config(num_experts=2, top_k=2)).rule_names


def test_hysteresis_and_patience_keep_a_hovering_metric_quiet():
    engine = make_engine(config(num_experts=8, top_k=2))
    hover = [{"moe/max_token_fraction": 0.79 if i % 2 else 0.81} for i in range(100)]
    fired, _ = feed(engine, hover)
    assert not only(fired, "routing_collapse")
    # once open, 0.75 (between leave 0.72 and enter 0.8) keeps it open; 0.7 clears it
    engine = make_engine(config(num_experts=8, top_k=2))
    stream = ([{"moe/max_token_fraction": 0.3}] * 100 + [{"moe/max_token_fraction": 0.9}] * 3
              + [{"moe/max_token_fraction": 0.75}] * 20 + [{"moe/max_token_fraction": 0.7}] * 3)
    fired, cleared = feed(engine, stream)
    assert len(only(fired, "routing_collapse")) == 1
    assert cleared == [("routing_collapse", 126)]


def test_expert_share_threshold_scales_with_the_number_of_experts():
    # seed 001: 5% at 8 experts = 0.4 x the fair share; at 16 experts that is 2.5%
    for share, fires in ((0.03, False), (0.02, True)):
        engine = make_engine(config(num_experts=16, top_k=2))
        fired, _ = feed(engine, [{"moe/min_share": share}] * 110)
        assert bool(only(fired, "expert_underused")) is fires
    engine = make_engine(config(num_experts=16, top_k=2))
    fired, _ = feed(engine, [{"moe/min_share": 0.02}] * 110)
    assert only(fired, "expert_underused")[0]["threshold"] == pytest.approx(0.025)


def test_usage_entropy_is_normalized_for_other_expert_counts():
    # 1.5 nats of ln 8 is 72.1% of the maximum; the same share of ln 16 at 16 experts
    limit = 1.5 / math.log(8)
    for norm, fires in ((limit + 0.01, False), (limit - 0.01, True)):
        engine = make_engine(config(num_experts=16, top_k=2))
        fired, _ = feed(engine, [{"moe/entropy_norm": norm}] * 110)
        assert bool(only(fired, "usage_entropy")) is fires
    assert f"of ln 16 = {math.log(16):.2f}" in only(fired, "usage_entropy")[0]["message"]


def test_usage_std_info_then_warning_scaled_by_expert_count():
    engine = make_engine(config(num_experts=8, top_k=2))
    fired, _ = feed(engine, [{"moe/usage_std": 0.04}] * 110 + [{"moe/usage_std": 0.06}] * 10)
    assert [(a["severity"], a["step"]) for a in fired] == [("info", 104), ("warning", 115)]
    engine = make_engine(config(num_experts=4, top_k=2))  # thresholds x2
    fired, _ = feed(engine, [{"moe/usage_std": 0.07}] * 110)
    assert [a["severity"] for a in fired] == ["info"]


def test_dead_experts_one_of_eight_fires_a_few_of_243_do_not():
    # seed 003's "Dead!" example is one expert of 8; the worst layer counts
    engine = make_engine(config(num_experts=8, top_k=2))
    dead = {"moe/dead_experts": 1.0, "moe/L0/dead_experts": 0.0, "moe/L1/dead_experts": 1.0}
    fired, cleared = feed(engine, [dead] * 55 + [{"moe/L1/dead_experts": 0.0}] * 5)
    (alert,) = only(fired, "dead_experts")
    assert alert["step"] == 54 and alert["metric"] == "moe/L1/dead_experts"
    assert "1 of 8 experts" in alert["message"]
    assert cleared == [("dead_experts", 60)]
    # 243 experts: rare-pattern experts may idle (seed 004); past 10% it is a finding
    for count, fires in ((20.0, False), (30.0, True)):
        engine = make_engine(config("ternary"))
        fired, _ = feed(engine, [{"moe/dead_experts": count}] * 55)
        assert bool(fired) is fires


def test_router_z_loss_level_and_fast_rise():
    engine = make_engine(config())
    fired, _ = feed(engine, [{"moe/z_loss": 0.02}] * 25)
    assert [a["step"] for a in only(fired, "router_z_loss")] == [22]
    assert "< 0.01" in fired[0]["message"]
    # below the limit but tripling within a few steps: "rapidly increasing z-loss"
    engine = make_engine(config())
    fired, _ = feed(engine, [{"moe/z_loss": 0.002}] * 60 + [{"moe/z_loss": 0.008}] * 3)
    (alert,) = only(fired, "router_z_loss")
    assert alert["step"] == 63 and "x its mean" in alert["message"]
    # a rise among tiny values (a router still near uniform) is not an alarm
    engine = make_engine(config())
    fired, _ = feed(engine, [{"moe/z_loss": 0.0001}] * 40 + [{"moe/z_loss": 0.0009}] * 5)
    assert not fired


def test_goodness_delta_info_below_healthy_warning_below_concerning():
    engine = make_engine(config("ternary"))
    fired, cleared = feed(engine, [{"ff/goodness_delta": 0.3}] * 60
                          + [{"ff/goodness_delta": 0.05}] * 5 + [{"ff/goodness_delta": 0.8}] * 5)
    assert [(a["severity"], a["step"]) for a in fired] == [("info", 54), ("warning", 65)]
    assert cleared == [("goodness_delta", 70)]


def test_load_balance_band_escalates_and_clears_only_back_inside_the_band():
    engine = make_engine(config("ternary"))
    stream = ([{"moe/imbalance": 0.3}] * 50 + [{"moe/imbalance": 0.6}] * 5
              + [{"moe/imbalance": 0.9}] * 5 + [{"moe/imbalance": 0.45}] * 10
              + [{"moe/imbalance": 0.35}] * 5)
    fired, cleared = feed(engine, stream)
    assert [(a["severity"], a["step"]) for a in fired] == [("warning", 55), ("critical", 60)]
    assert fired[1]["stops"] is True
    assert cleared == [("load_balance", 75)]  # 0.45 is still above the healthy band


def test_load_balance_uniform_then_imbalanced_clears_before_it_fires_again():
    engine = make_engine(config("ternary"))
    fired, cleared = feed(engine, [{"moe/imbalance": 0.05}] * 60 + [{"moe/imbalance": 0.6}] * 6)
    assert fired[0]["step"] == 54
    assert "no specialization" in fired[0]["message"] and "poor balance" in fired[1]["message"]
    assert cleared == [("load_balance", 61)] and fired[1]["step"] == 66 > 61


def test_routing_latency_uses_a_median_so_one_slow_step_is_quiet():
    engine = make_engine(config("ternary"))
    spiky = [{"route/latency_us": 5000.0 if i % 4 == 0 else 40.0} for i in range(100)]
    fired, _ = feed(engine, spiky)
    assert not fired
    fired, _ = feed(engine, [{"route/latency_us": 800.0}] * 20, start=200)
    assert [a["severity"] for a in fired] == ["info", "warning"]


def test_before_after_step_nothing_counts():
    engine = make_engine(config("ternary"))
    fired, _ = feed(engine, [{"ff/goodness_delta": 0.0}] * 49)
    assert not fired


def test_balance_rules_wait_for_the_router_to_settle_after_the_lr_warmup():
    # the shipped top2 profile routes 96% of one layer's tokens to one expert at step 60
    # (warmup 100) and is balanced by step 150: no alert may stop it for that
    cfg = config(num_experts=8, top_k=2)
    cfg["train"] = {"warmup_steps": 100}
    engine = make_engine(cfg)
    collapsed = {"moe/max_token_fraction": 0.96, "moe/min_share": 0.0}
    fired, _ = feed(engine, [collapsed] * 199)
    assert not fired
    fired, _ = feed(engine, [collapsed] * 5, start=200)
    assert {a["rule"] for a in fired} == {"routing_collapse", "expert_underused"}
    # with no balancing (no bias, no aux loss) nothing undoes a collapse: no waiting
    cfg["moe"].update(bias_balancing=False, aux_loss_weight=0.0)
    fired, _ = feed(make_engine(cfg), [collapsed] * 30)
    assert [(a["rule"], a["step"]) for a in only(fired, "routing_collapse")] == [
        ("routing_collapse", 22)]
    # the ternary kind has no LR schedule: its rules keep their own after_step
    cfg = config("ternary")
    cfg["train"] = {"warmup_steps": 500}
    fired, _ = feed(make_engine(cfg), [{"moe/imbalance": 0.95}] * 60)
    assert fired


def test_profile_overrides_change_thresholds_and_disable_rules():
    off = make_engine(config("ternary", goodness_delta={"enabled": False}))
    assert "goodness_delta" not in off.rule_names
    strict = make_engine(config("ternary", load_balance={"poor": 0.25,
                                                                      "after_step": 0}))
    fired, _ = feed(strict, [{"moe/imbalance": 0.3}] * 5)
    assert [a["step"] for a in fired] == [5]


def test_the_engine_is_built_from_a_typed_context_without_a_profile():
    engine = HealthEngine.for_run(RunContext("topk", num_experts=4, top_k=2),
                                  {"routing_collapse": {"after_step": 0, "patience": 1}},
                                  stop_on="critical")
    fired, _ = engine.observe(1, {"moe/max_token_fraction": 0.95}, 1.0)
    assert [(a["rule"], a["severity"], a["stops"]) for a in fired] == [
        ("routing_collapse", "critical", True)]
    # k >= E: nothing can collapse, so the rule is not built at all
    assert "routing_collapse" not in HealthEngine.for_run(RunContext("topk", 2, 2)).rule_names


def test_run_context_reads_the_profile_not_restated_defaults():
    ternary = profile_from_dict({"name": "t", "kind": "ternary", "seed": 0})
    assert run_context(ternary) == RunContext("ternary", TernarySection().num_experts,
                                              TernarySection().active_experts,
                                              settings=flat_settings(ternary))
    topk = profile_from_dict({"name": "t", "kind": "topk", "seed": 0,
                              "moe": {"num_experts": 16, "top_k": 4}})
    assert run_context(topk) == RunContext("topk", 16, 4, TrainSection().warmup_steps, True,
                                           settings=flat_settings(topk))
    assert run_context(topk).settings["moe.top_k"] == 4  # what the actions are fitted to
    unbalanced = profile_from_dict({"name": "t", "kind": "topk", "seed": 0, "moe": {
        "bias_balancing": False, "aux_loss_weight": 0.0}})
    assert run_context(unbalanced).balanced is False


def test_worst_of_reads_the_layers_of_that_metric_only():
    values = {"moe/min_share": 0.1, "moe/L0/min_share": 0.2, "moe/L1/min_share": 0.05,
              "route/L2/min_share": 0.0, "moe/L3/max_share": 0.0, "moe/L4/min_share": math.nan,
              "moe/L5/x/min_share": 0.0}
    assert worst_of(values, names.MOE_MIN_SHARE, pick=min) == ("moe/L1/min_share", 0.05)
    assert worst_of(values, names.MOE_MIN_SHARE) == ("moe/L0/min_share", 0.2)
    assert worst_of({"moe/min_share": 0.1}, names.MOE_MIN_SHARE) == ("moe/min_share", 0.1)
    assert worst_of({"moe/min_share": math.nan}, names.MOE_MIN_SHARE) is None


def test_every_rule_reads_a_catalogued_metric():
    assert all(spec.metric in names.ALL for spec in RULES.values())


def test_every_rule_reads_only_its_inputs_so_the_engine_may_skip_it():
    # the engine skips a rule when an event holds none of its `inputs` (engine._rules_for);
    # that is only right if the rule ignores every other metric. Every other rule's inputs,
    # overall and per layer, at a value any reader would report, must give no reading.
    from moedesk.health.rules import RULE_CLASSES
    from moedesk.health.thresholds import rule_params

    everything = {m for cls in RULE_CLASSES for m in cls.inputs}
    assert all(cls.inputs for cls in RULE_CLASSES)
    for cls in RULE_CLASSES:
        ctx = RunContext(next(iter(RULES[cls.name].kinds)), 8, 2)
        rule = cls(rule_params(cls.name, {}), ctx)
        others = everything - set(cls.inputs)
        values = {m: 1e9 for m in others}
        values |= {f"{family}/L0/{key}": 1e9 for family, key in map(names.split, others)
                   if family == names.MOE}
        for _ in range(3):  # past any warm-up of a window
            assert rule.read(values, None) is None, cls.name
        own = {m: 1e9 for m in cls.inputs}
        assert rule.read(own, None) is not None, cls.name  # and it does read its inputs


def test_the_engine_skips_rules_without_evidence_and_keeps_their_state():
    engine = make_engine(config("topk"))
    fired, _ = feed(engine, [{"train/loss": 2.0}] * 5 + [{"other/x": 1.0}] * 3
                    + [{"train/loss": math.nan}])
    assert [a["rule"] for a in fired] == ["nonfinite_loss"]
    from moedesk.health.rules import Observed

    assert engine._rules_for(Observed({"other/x": 1.0})) == []
    assert [r.name for r in engine._rules_for(Observed({"moe/L3/cv": 0.1}))] == []
    assert {r.name for r in engine._rules_for(Observed({"moe/L3/min_share": 0.1}))} == {
        "expert_underused"}
