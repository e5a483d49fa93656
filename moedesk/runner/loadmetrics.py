"""The `moe/*` metrics of a run whose trainer sends expert counts but no statistics.

moedesk's own trainers compute the load statistics of each logged step themselves and
send them as metrics. An external run (moedesk.track) sends only the counts; its
supervisor turns each `expert_load` event into the same metric names with the same
functions (`moedesk.stats.load`), so the health rules and the TUI read them unchanged:
`moe/L{i}/{key}` per layer, `moe/{key}` over layers, and `dead_experts` from a
`DeadExpertTracker` per layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from moedesk.profiles.schema import MoESection
from moedesk.stats.load import DeadExpertTracker, metric_values, scalar_stats

# runs that have no profile take the profile schema's default window (moe.dead_window)
DEFAULT_DEAD_WINDOW = MoESection().dead_window


class LoadMetrics:
    def __init__(self, dead_window: int = DEFAULT_DEAD_WINDOW):
        self.dead_window = dead_window
        self.trackers: dict[int, DeadExpertTracker] = {}

    def values(self, loads: Mapping[int, Sequence[float]], top_k: int) -> dict[str, float]:
        """The metrics of one logged step's counts ({layer: counts}); ValueError on counts
        that are no expert load (negative, empty, top_k out of range)."""
        per_layer: dict[int, dict[str, float]] = {}
        for layer, counts in loads.items():
            row = scalar_stats(counts, min(top_k, len(counts)) if counts else top_k)
            tracker = self.trackers.get(layer)
            if tracker is None:
                tracker = self.trackers[layer] = DeadExpertTracker(self.dead_window)
            row["dead_experts"] = float(tracker.update(counts))
            per_layer[layer] = row
        return metric_values(per_layer, "moe")
