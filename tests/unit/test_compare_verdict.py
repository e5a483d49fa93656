"""The verdict rule on crafted per-seed results: adopt only beyond seed-to-seed noise."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moedesk.compare.verdict import NOISE_MULTIPLIER, Cost, decide, sample_std

SAME_COST = Cost(params_total=100_000, step_time_s=0.05)
MOE_COST = Cost(params_total=200_000, step_time_s=0.07)  # 2x parameters, 1.4x time


def test_clear_consistent_gain_is_adopt():
    v = decide([10.0, 10.2, 9.9], [9.0, 9.1, 8.95], SAME_COST, SAME_COST)
    assert v.decision == "adopt"
    assert v.consistent and v.beyond_noise and v.variant_wins == 3
    assert v.gain == pytest.approx((1.0 + 1.1 + 0.95) / 3)
    pooled = math.sqrt((sample_std([10.0, 10.2, 9.9]) ** 2
                        + sample_std([9.0, 9.1, 8.95]) ** 2) / 2)
    assert v.noise == pytest.approx(pooled)
    assert v.threshold == pytest.approx(NOISE_MULTIPLIER * pooled)


def test_clear_gain_that_costs_more_is_still_adopt_but_says_the_cost():
    v = decide([10.0, 10.2, 9.9], [9.0, 9.1, 8.95], SAME_COST, MOE_COST)
    assert v.decision == "adopt" and v.costs_more
    assert any("2.00x the parameters" in r for r in v.reasons)


def test_gain_inside_the_variance_is_defer_or_never():
    # mean gain 0.1, but seeds vary by ~1: within noise
    base, var = [10.0, 11.5, 9.0], [9.8, 11.4, 8.9]
    v = decide(base, var, SAME_COST, SAME_COST)
    assert v.decision == "defer" and not v.beyond_noise
    v_cost = decide(base, var, SAME_COST, MOE_COST)
    assert v_cost.decision in ("defer", "never")


def test_consistent_but_small_gain_is_not_adopt():
    # the variant wins every seed, but by far less than 2 x the seed-to-seed std
    base, var = [10.0, 12.0, 8.0], [9.9, 11.9, 7.9]
    v = decide(base, var, SAME_COST, SAME_COST)
    assert v.consistent and v.variant_wins == 3
    assert v.threshold > v.gain > 0
    assert v.decision == "defer"


def test_sign_flip_across_seeds_is_not_adopt_even_when_the_mean_gain_is_large():
    v = decide([10.0, 10.0, 10.0], [7.0, 7.0, 10.5], SAME_COST, SAME_COST)
    assert not v.consistent and v.decision == "defer"


def test_worse_beyond_noise_is_never():
    v = decide([9.0, 9.1, 8.95], [10.0, 10.2, 9.9], SAME_COST, SAME_COST)
    assert v.decision == "never" and v.gain < 0 and v.beyond_noise


def test_no_gain_and_more_cost_is_never():
    v = decide([10.0, 10.4, 9.8], [10.1, 10.3, 9.95], SAME_COST, MOE_COST)
    assert v.gain <= 0 and not v.beyond_noise
    assert v.decision == "never" and v.costs_more


def test_a_clear_gain_in_two_seeds_is_not_enough_to_adopt():
    v = decide([10.0, 10.2], [9.0, 9.1], SAME_COST, SAME_COST)
    assert v.beyond_noise and v.gain > 0 and v.n_pairs == 2
    assert v.decision == "defer" and "adopting needs 3 seeds" in v.reasons[0]


def test_one_seed_cannot_adopt():
    v = decide([10.0], [5.0], SAME_COST, SAME_COST)
    assert v.decision == "defer" and v.n_pairs == 1 and math.isnan(v.noise)


def test_incomplete_runs_are_left_out_of_the_pairs():
    v = decide([10.0, None, 10.2, 9.9], [9.0, 8.0, 9.1, None], SAME_COST, SAME_COST)
    assert v.n_pairs == 2
    assert v.gain == pytest.approx((1.0 + 1.1) / 2)
    assert decide([None], [None], SAME_COST, SAME_COST).decision == "defer"


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError):
        decide([1.0, 2.0], [1.0], SAME_COST, SAME_COST)


@pytest.mark.slow
@given(st.lists(st.floats(min_value=1.0, max_value=100.0), min_size=2, max_size=6),
       st.lists(st.floats(min_value=-5.0, max_value=5.0), min_size=6, max_size=6))
def test_adopt_implies_gain_beyond_twice_the_pooled_std_in_every_seed(base, deltas):
    var = [b - d for b, d in zip(base, deltas, strict=False)]
    v = decide(base, var, SAME_COST, SAME_COST)
    if v.decision == "adopt":
        assert v.n_pairs >= 3
        diffs = [b - x for b, x in zip(base, var, strict=False)]
        assert all(d > 0 for d in diffs)
        assert v.gain > NOISE_MULTIPLIER * v.noise
    # identical costs never give "never" unless the variant is worse beyond noise
    if v.decision == "never":
        assert v.gain < 0 and v.beyond_noise
