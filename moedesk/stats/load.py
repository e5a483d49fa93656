"""Expert-load statistics: the one definition used by the trainers, the reports and the TUI.

Input is one layer's per-expert counts over a window (a logged step): c_i = the number of
(token, slot) pairs routed to expert i, E experts, K experts chosen per token, so the sum
S = T*K for T tokens when nothing is dropped. `load_stats` gives one layer's shares, load
ratios and scalars, `aggregate` the overall row, `metric_values` their metric names,
`group_loads` the load of consecutive groups (ternary clusters), `DeadExpertTracker` the
experts idle for a whole window. Pure Python (no torch, no numpy) so the health rules and
the TUI can import it. docs/loadstats.md states every formula.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from moedesk.stats.names import MOE, layer_metric, metric

# scalar statistics of one layer, in the order the TUI shows them
SCALAR_KEYS = ("imbalance", "cv", "max_vio", "entropy_norm", "usage_std", "min_share",
               "max_share", "max_token_fraction", "zero_experts")


def _population_std(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def load_stats(counts: Sequence[float], top_k: int) -> dict:
    """Statistics of one layer's expert counts; see docs/loadstats.md for each formula.

    Returns shares and loads (lists of E floats) plus the scalars in `SCALAR_KEYS` and
    `tokens` (S / K). With S = 0 there is no evidence: shares and loads are zeros, every
    ratio is NaN (so no threshold comparison fires) and `zero_experts` = E.
    """
    num_experts = len(counts)
    if num_experts == 0:
        raise ValueError("load_stats needs at least one expert count")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in 1..{num_experts}, got {top_k}")
    if any(c < 0 for c in counts):
        raise ValueError("expert counts must be >= 0")
    counts = [float(c) for c in counts]
    total = sum(counts)
    zero_experts = sum(1 for c in counts if c == 0)
    if total == 0:
        nan = math.nan
        return {"shares": [0.0] * num_experts, "loads": [0.0] * num_experts, "tokens": 0.0,
                "imbalance": nan, "cv": nan, "max_vio": nan, "entropy_norm": nan,
                "usage_std": nan, "min_share": nan, "max_share": nan,
                "max_token_fraction": nan, "zero_experts": zero_experts}
    mean_count = total / num_experts
    shares = [c / total for c in counts]
    loads = [c / mean_count for c in counts]
    cv = _population_std(counts) / mean_count
    # CV of "every token on the same K experts" is sqrt(E/K - 1); E == K routes every token
    # to every expert, which is uniform by construction
    collapsed_cv = math.sqrt(num_experts / top_k - 1)
    imbalance = cv / collapsed_cv if collapsed_cv > 0 else 0.0
    entropy = -sum(f * math.log(f) for f in shares if f > 0)
    entropy_norm = entropy / math.log(num_experts) if num_experts > 1 else 1.0
    max_share = max(shares)
    return {
        "shares": shares,
        "loads": loads,
        "tokens": total / top_k,
        "imbalance": imbalance,
        "cv": cv,
        "max_vio": max(loads) - 1.0,
        "entropy_norm": entropy_norm,
        "usage_std": _population_std(shares),
        "min_share": min(shares),
        "max_share": max_share,
        # each token picks an expert at most once, so c_i <= T and this is at most 1
        "max_token_fraction": max_share * top_k,
        "zero_experts": zero_experts,
    }


def scalar_stats(counts: Sequence[float], top_k: int) -> dict[str, float]:
    """The `SCALAR_KEYS` of `load_stats` as floats: one layer's row of metrics."""
    stats = load_stats(counts, top_k)
    return {key: float(stats[key]) for key in SCALAR_KEYS}


def groups(values: Sequence, size: int) -> list[list]:
    """Consecutive groups of `size` values (ternary clusters); the last may be shorter."""
    if size < 1:
        raise ValueError(f"group size must be >= 1, got {size}")
    return [list(values[i:i + size]) for i in range(0, len(values), size)]


def group_loads(counts: Sequence[float], size: int) -> list[float]:
    """Load ratio of each group of `size` consecutive experts: its share of S over its fair
    share (its experts / E), i.e. the mean load ratio of its members; zeros when S = 0."""
    total = sum(counts)
    parts = groups(counts, size)
    if total <= 0:
        return [0.0] * len(parts)
    return [sum(g) / total * len(counts) / len(g) for g in parts]


def aggregate(per_layer: Mapping[int, Mapping[str, float]]) -> dict[str, float]:
    """The overall row: the mean of each scalar over layers, `dead_experts` summed.

    NaN layers (no tokens) are left out of the means; a key is NaN when no layer has it.
    """
    out: dict[str, float] = {}
    keys: list[str] = []
    for stats in per_layer.values():
        keys.extend(k for k in stats if k not in keys)
    for key in keys:
        values = [float(s[key]) for s in per_layer.values()
                  if key in s and not math.isnan(float(s[key]))]
        if key in ("dead_experts", "zero_experts"):
            out[key] = float(sum(values))
        else:
            out[key] = sum(values) / len(values) if values else math.nan
    return out


def metric_values(per_layer: Mapping[int, Mapping[str, float]], family: str = MOE
                  ) -> dict[str, float]:
    """Flat metric names (stats/names.py): `family/key` overall, `family/L{i}/key` per layer."""
    values = {metric(family, k): v for k, v in aggregate(per_layer).items()}
    for layer, stats in sorted(per_layer.items()):
        values.update({layer_metric(family, layer, k): float(v) for k, v in stats.items()})
    return values


class DeadExpertTracker:
    """Counts experts that got zero tokens in each of the last `window` updates.

    An expert is dead once its zero-count streak reaches `window`; before `window`
    updates nothing can be dead, so a young run does not raise false alarms.
    """

    def __init__(self, window: int):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self.zero_streaks: list[int] = []

    def update(self, counts: Iterable[float]) -> int:
        """Feed one logged step's counts; returns the number of dead experts."""
        counts = list(counts)
        if len(self.zero_streaks) != len(counts):
            self.zero_streaks = [0] * len(counts)
        self.zero_streaks = [streak + 1 if c == 0 else 0
                             for streak, c in zip(self.zero_streaks, counts, strict=True)]
        return self.dead_count()

    def dead_count(self) -> int:
        return sum(1 for streak in self.zero_streaks if streak >= self.window)

    def dead_experts(self) -> list[int]:
        return [i for i, streak in enumerate(self.zero_streaks) if streak >= self.window]

    def state_dict(self) -> dict:
        return {"zero_streaks": list(self.zero_streaks)}

    def load_state_dict(self, state: dict) -> None:
        # the window comes from the (possibly edited) config, the streaks from the run
        self.zero_streaks = [int(s) for s in state["zero_streaks"]]
