"""The one ETA (runner/eta.py): smoothed, robust to a slow step, following real changes."""

from __future__ import annotations

import math

from moedesk.runner.eta import WINDOW, eta_seconds, step_seconds


def test_no_samples_no_estimate_and_a_finished_run_needs_nothing():
    assert step_seconds([]) is None and eta_seconds(5, 100, []) is None
    assert eta_seconds(5, None, [(5, 0.1)]) is None
    assert eta_seconds(100, 100, []) == 0.0
    assert step_seconds([(1, None), (2, math.nan), (3, math.inf), (4, 0.0)]) is None


def test_one_slow_step_barely_moves_the_estimate():
    steady = [(s, 0.1) for s in range(1, 31)]
    base = eta_seconds(30, 1030, steady)
    assert math.isclose(base, 100.0)
    # a checkpoint or an evaluation caught in one timed span: 50x slower once
    spiked = steady + [(31, 5.0)]
    assert math.isclose(eta_seconds(31, 1030, spiked), 99.9)
    # the last sample alone (the old TUI) would have said 4,995 s


def test_a_real_slowdown_shows_within_half_a_window():
    samples = [(s, 0.1) for s in range(1, 41)]
    for s in range(41, 41 + WINDOW // 2 + 1):
        samples.append((s, 1.0))
    assert step_seconds(samples) == 1.0
    assert step_seconds(samples[:41 + WINDOW // 2 - 2]) == 0.1


def test_samples_are_weighted_by_the_steps_they_cover():
    # log_every = 10: each sample covers 10 steps; a lone per-step sample weighs 1
    # (an unweighted median of these five samples would be 3.0)
    samples = [(10, 0.2), (20, 0.2), (21, 3.0), (22, 3.0), (23, 3.0)]
    assert step_seconds(samples) == 0.2
    assert math.isclose(eta_seconds(23, 123, samples), 100 * 0.2)


def test_order_of_arrival_does_not_matter():
    samples = [(s, 0.1 + (s % 3) * 0.01) for s in range(1, 25)]
    assert step_seconds(samples) == step_seconds(list(reversed(samples)))
