"""Expert-load statistics: exact values on uniform and collapsed loads, bounds on any routing."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moedesk.stats import names
from moedesk.stats.load import (
    SCALAR_KEYS,
    DeadExpertTracker,
    aggregate,
    group_loads,
    groups,
    load_stats,
    metric_values,
    scalar_stats,
)


def test_uniform_load_is_perfectly_balanced():
    stats = load_stats([100] * 8, top_k=2)
    assert stats["imbalance"] == 0 and stats["cv"] == 0 and stats["max_vio"] == 0
    assert stats["entropy_norm"] == pytest.approx(1.0)
    assert stats["usage_std"] == 0
    assert stats["min_share"] == stats["max_share"] == 1 / 8
    assert stats["max_token_fraction"] == pytest.approx(2 / 8)  # each token uses 2 of 8
    assert stats["zero_experts"] == 0 and stats["tokens"] == 400
    assert stats["loads"] == [1.0] * 8


@pytest.mark.parametrize("num_experts", [2, 4, 8, 64])
def test_top1_collapse_onto_one_expert(num_experts):
    stats = load_stats([0] * (num_experts - 1) + [500], top_k=1)
    assert stats["imbalance"] == pytest.approx(1.0)
    assert stats["max_vio"] == pytest.approx(num_experts - 1)
    assert stats["cv"] == pytest.approx(math.sqrt(num_experts - 1))
    assert stats["entropy_norm"] == 0
    assert stats["max_token_fraction"] == 1 and stats["max_share"] == 1
    assert stats["min_share"] == 0 and stats["zero_experts"] == num_experts - 1


def test_top2_collapse_onto_the_same_two_experts():
    stats = load_stats([300, 300, 0, 0, 0, 0, 0, 0], top_k=2)
    assert stats["imbalance"] == pytest.approx(1.0)
    assert stats["max_vio"] == pytest.approx(8 / 2 - 1)
    assert stats["max_token_fraction"] == pytest.approx(1.0)  # every token uses expert 0
    assert stats["entropy_norm"] == pytest.approx(math.log(2) / math.log(8))
    assert stats["usage_std"] == pytest.approx(math.sqrt((2 * 0.375**2 + 6 * 0.125**2) / 8))


def test_skewed_load_matches_a_hand_computation():
    # the shape of seed 003's "Experts Not Balanced" example: two experts dominate
    counts = [45, 32] + [3] * 6
    stats = load_stats(counts, top_k=2)
    shares = [c / 95 for c in counts]
    mean = sum(shares) / 8
    assert stats["usage_std"] == pytest.approx(math.sqrt(sum((f - mean) ** 2 for f in shares) / 8))
    assert stats["usage_std"] > 0.05  # seed 003's "poor balance"
    assert stats["max_share"] == pytest.approx(45 / 95)
    assert stats["max_token_fraction"] == pytest.approx(2 * 45 / 95)
    assert stats["cv"] == pytest.approx(stats["usage_std"] * 8)
    assert stats["imbalance"] == pytest.approx(stats["cv"] / math.sqrt(3))


def test_empty_counts_give_no_evidence():
    stats = load_stats([0, 0, 0, 0], top_k=2)
    assert stats["zero_experts"] == 4 and stats["tokens"] == 0
    for key in ("imbalance", "cv", "max_vio", "entropy_norm", "usage_std", "min_share",
                "max_share", "max_token_fraction"):
        assert math.isnan(stats[key]), key
    assert stats["shares"] == [0.0] * 4


def test_k_equal_to_e_is_uniform_by_construction():
    stats = load_stats([10, 10, 10], top_k=3)
    assert stats["imbalance"] == 0 and stats["max_token_fraction"] == pytest.approx(1.0)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        load_stats([], top_k=1)
    with pytest.raises(ValueError):
        load_stats([1, 2], top_k=3)
    with pytest.raises(ValueError):
        load_stats([1, -2], top_k=1)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(num_experts=st.integers(2, 16), data=st.data())
def test_any_real_routing_stays_within_bounds(num_experts, data):
    top_k = data.draw(st.integers(1, num_experts))
    tokens = data.draw(st.integers(1, 60))
    rng = random.Random(data.draw(st.integers(0, 2**32 - 1)))
    counts = [0] * num_experts
    for _ in range(tokens):  # each token picks K distinct experts
        for e in rng.sample(range(num_experts), top_k):
            counts[e] += 1
    stats = load_stats(counts, top_k)
    assert -1e-9 <= stats["imbalance"] <= 1 + 1e-9
    assert -1e-9 <= stats["entropy_norm"] <= 1 + 1e-9
    assert 0 < stats["max_token_fraction"] <= 1 + 1e-9
    assert stats["max_vio"] == pytest.approx(max(stats["loads"]) - 1)
    assert sum(stats["shares"]) == pytest.approx(1.0)
    assert stats["tokens"] == tokens


def test_aggregate_means_layers_and_sums_dead_experts():
    per_layer = {0: {"imbalance": 0.2, "dead_experts": 1.0},
                 3: {"imbalance": 0.4, "dead_experts": 2.0},
                 5: {"imbalance": math.nan, "dead_experts": 0.0}}
    overall = aggregate(per_layer)
    assert overall["imbalance"] == pytest.approx(0.3)  # the NaN layer has no evidence
    assert overall["dead_experts"] == 3
    values = metric_values(per_layer)
    assert values["moe/imbalance"] == pytest.approx(0.3)
    assert values["moe/L3/imbalance"] == 0.4 and values["moe/L0/dead_experts"] == 1.0
    assert math.isnan(values["moe/L5/imbalance"])


def test_dead_expert_tracker_needs_a_full_window_of_zeros():
    tracker = DeadExpertTracker(window=3)
    assert tracker.update([5, 0, 0, 2]) == 0
    assert tracker.update([5, 0, 1, 2]) == 0
    assert tracker.update([5, 0, 0, 2]) == 1 and tracker.dead_experts() == [1]
    resumed = DeadExpertTracker(window=3)
    resumed.load_state_dict(tracker.state_dict())
    assert resumed.update([5, 0, 0, 0]) == 1  # expert 1 still dead, 2 and 3 not yet
    assert resumed.update([5, 3, 0, 0]) == 1  # expert 1 revived, expert 2 reached 3 zeros
    assert resumed.update([5, 3, 0, 0]) == 2 and resumed.dead_experts() == [2, 3]
    with pytest.raises(ValueError):
        DeadExpertTracker(window=0)


def test_group_loads_are_the_mean_load_ratio_of_each_group():
    counts = [6, 2, 0, 0, 4, 4, 8]  # groups of 3: [6, 2, 0], [0, 4, 4], [8]
    assert groups(counts, 3) == [[6, 2, 0], [0, 4, 4], [8]]
    loads = load_stats(counts, 1)["loads"]
    got = group_loads(counts, 3)
    want = [sum(g) / len(g) for g in groups(loads, 3)]
    assert got == pytest.approx(want)
    assert got == pytest.approx([8 / 24 * 7 / 3, 8 / 24 * 7 / 3, 8 / 24 * 7])
    assert group_loads([0, 0, 0, 0], 2) == [0.0, 0.0]  # no evidence: no load
    with pytest.raises(ValueError):
        groups(counts, 0)


def test_scalar_stats_is_the_scalar_row_of_load_stats():
    counts = [30, 0, 10, 5]
    row = scalar_stats(counts, 2)
    full = load_stats(counts, 2)
    assert list(row) == list(SCALAR_KEYS)
    assert all(row[k] == full[k] for k in SCALAR_KEYS) and row["zero_experts"] == 1.0


def test_every_load_statistic_has_a_catalogued_metric_name():
    for key in (*SCALAR_KEYS, "dead_experts"):
        assert names.metric(names.MOE, key) in names.ALL, key
    values = metric_values({2: scalar_stats([1, 2, 3], 1)})
    assert set(values) - set(names.ALL) == {names.layer_metric(names.MOE, 2, k)
                                            for k in SCALAR_KEYS}


def test_per_layer_names_parse_back():
    name = names.layer_metric(names.MOE, 12, "usage_std")
    assert name == "moe/L12/usage_std"
    assert names.parse_layer(name) == (names.MOE, 12, "usage_std")
    assert names.parse_layer(name).overall == names.MOE_USAGE_STD
    for other in ("moe/usage_std", "moe/Lx/usage_std", "moe/L/usage_std", "train/loss",
                  "a/L1/b/c"):
        assert names.parse_layer(other) is None, other
    assert names.split(names.ROUTE_LATENCY_US) == ("route", "latency_us")
    with pytest.raises(ValueError):
        names.split(name)
    assert len(set(names.ALL)) == len(names.ALL)
    assert {n.partition("/")[0] for n in names.ALL} == set(names.FAMILIES)
