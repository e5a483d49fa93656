"""Health bands the monitor's gauges paint, from the health rules' thresholds.

Ternary load balance and routing latency use the numbers of `moedesk.health.thresholds`
(with the run profile's overrides), so a gauge turns red exactly where the alert fires.
Top-k imbalance has no rule of its own (its health rules watch usage std, entropy and
shares), so its bands are for reading only: < 0.1 balanced (bias balancing keeps a
healthy top-k router there), 0.1-0.3 uneven, above 0.3 imbalanced.
"""

from __future__ import annotations

from dataclasses import dataclass

from moedesk.tui.model import RunRow


@dataclass(frozen=True)
class Band:
    """A stretch [lo, hi) of a gauge's scale, painted `colour`, named `label`."""

    lo: float
    hi: float
    colour: str
    label: str


GOOD, LOW, WARN, POOR, BAD = "#4e9a57", "#4a7fb0", "#c9a227", "#d9782d", "#c8443a"
TOPK_IMBALANCE = [Band(0.0, 0.1, GOOD, "balanced"), Band(0.1, 0.3, WARN, "uneven"),
                  Band(0.3, 1.0, BAD, "imbalanced")]


def imbalance_bands(row: RunRow) -> list[Band]:
    if row.kind != "ternary":
        return TOPK_IMBALANCE
    p = row.rule_params("load_balance")
    return [
        Band(0.0, p["uniform"], LOW, "uniform: no specialization"),
        Band(p["uniform"], p["healthy_low"], WARN, "below the healthy band"),
        Band(p["healthy_low"], p["healthy_high"], GOOD, "healthy"),
        Band(p["healthy_high"], p["poor"], WARN, "above the healthy band"),
        Band(p["poor"], p["concerning"], POOR, "poor"),
        Band(p["concerning"], 1.0, BAD, "concerning"),
    ]


def latency_bands(row: RunRow) -> list[Band]:
    p = row.rule_params("routing_latency")
    warn, bad = p["healthy_us"], p["concerning_us"]
    return [Band(1.0, warn, GOOD, "healthy"), Band(warn, bad, WARN, "slow"),
            Band(bad, max(10_000.0, bad * 10), BAD, "concerning")]


def goodness_verdict(row: RunRow, delta: float | None) -> tuple[str, str]:
    """(label, colour) of a Forward-Forward goodness delta (seed 000's health table)."""
    if delta is None:
        return "", ""
    p = row.rule_params("goodness_delta")
    if delta < p.get("concerning", 0.1):
        return "concerning", BAD
    if delta < p.get("healthy", 0.5):
        return "not yet healthy", WARN
    return "healthy", GOOD
