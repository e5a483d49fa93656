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
import operator
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from itertools import chain, repeat

from moedesk.stats.names import MOE, layer_metric, metric

# scalar statistics of one layer, in the order the TUI shows them
SCALAR_KEYS = ("imbalance", "cv", "max_vio", "entropy_norm", "usage_std", "min_share",
               "max_share", "max_token_fraction", "zero_experts")


def _std(values: Sequence[float], mean: float) -> float:
    deviations = [v - mean for v in values]
    return math.sqrt(sum(map(operator.mul, deviations, deviations)) / len(values))


def _checked(counts: Sequence[float], top_k: int) -> list[float]:
    if len(counts) == 0:
        raise ValueError("load_stats needs at least one expert count")
    if not 1 <= top_k <= len(counts):
        raise ValueError(f"top_k must be in 1..{len(counts)}, got {top_k}")
    counts = list(map(float, counts))
    if min(counts) < 0:
        raise ValueError("expert counts must be >= 0")
    return counts


def _scalars(counts: list[float], top_k: int) -> dict[str, float]:
    # every pass is one C-level map or builtin: an external run's supervisor computes this
    # for every layer of every logged step (bench/track.py), the trainers once per layer
    num_experts = len(counts)
    total = sum(counts)
    zero_experts = counts.count(0.0)
    if total == 0:
        return dict.fromkeys(SCALAR_KEYS[:-1], math.nan) | {"zero_experts": zero_experts}
    mean_count = total / num_experts
    cv = _std(counts, mean_count) / mean_count
    # CV of "every token on the same K experts" is sqrt(E/K - 1); E == K routes every token
    # to every expert, which is uniform by construction
    collapsed_cv = math.sqrt(num_experts / top_k - 1)
    used = counts if zero_experts == 0 else [c for c in counts if c > 0]
    # H = -sum f log f with f = c / S, as log S - sum(c log c) / S (no list of shares)
    entropy = math.log(total) - sum(map(operator.mul, used, map(math.log, used))) / total
    highest = max(counts)
    return {
        "imbalance": cv / collapsed_cv if collapsed_cv > 0 else 0.0,
        "cv": cv,
        "max_vio": highest / mean_count - 1.0,
        "entropy_norm": max(entropy, 0.0) / math.log(num_experts) if num_experts > 1 else 1.0,
        "usage_std": cv / num_experts,  # std of shares = std of counts / S = CV / E
        "min_share": min(counts) / total,
        "max_share": highest / total,
        # each token picks an expert at most once, so c_i <= T and this is at most 1
        "max_token_fraction": highest / total * top_k,
        "zero_experts": zero_experts,
    }


def load_stats(counts: Sequence[float], top_k: int) -> dict:
    """Statistics of one layer's expert counts; see docs/loadstats.md for each formula.

    Returns shares and loads (lists of E floats) plus the scalars in `SCALAR_KEYS` and
    `tokens` (S / K). With S = 0 there is no evidence: shares and loads are zeros, every
    ratio is NaN (so no threshold comparison fires) and `zero_experts` = E.
    """
    counts = _checked(counts, top_k)
    num_experts, total = len(counts), sum(counts)
    if total == 0:
        shares = loads = [0.0] * num_experts
    else:
        shares = list(map(operator.truediv, counts, repeat(total, num_experts)))
        loads = list(map(operator.truediv, counts, repeat(total / num_experts, num_experts)))
    return {"shares": shares, "loads": loads, "tokens": total / top_k,
            **_scalars(counts, top_k)}


def scalar_stats(counts: Sequence[float], top_k: int) -> dict[str, float]:
    """The `SCALAR_KEYS` of `load_stats` as floats: one layer's row of metrics."""
    return {key: float(value) for key, value in _scalars(_checked(counts, top_k), top_k).items()}


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
    rows = list(per_layer.values())
    out: dict[str, float] = {}
    for key in dict.fromkeys(chain.from_iterable(rows)):
        column = [float(row[key]) for row in rows if key in row]
        values = [v for v in column if v == v]
        if key in ("dead_experts", "zero_experts"):
            out[key] = float(sum(values))
        else:
            out[key] = sum(values) / len(values) if values else math.nan
    return out


@lru_cache(maxsize=4096)
def _name(family: str, layer: int | None, key: str) -> str:
    # names repeat every logged step (8 layers x 10 keys); build each once
    return metric(family, key) if layer is None else layer_metric(family, layer, key)


def metric_values(per_layer: Mapping[int, Mapping[str, float]], family: str = MOE
                  ) -> dict[str, float]:
    """Flat metric names (stats/names.py): `family/key` overall, `family/L{i}/key` per layer."""
    values = {_name(family, None, k): v for k, v in aggregate(per_layer).items()}
    for layer, stats in sorted(per_layer.items()):
        values.update({_name(family, layer, k): float(v) for k, v in stats.items()})
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
        if 0 not in counts:  # the usual step: every expert got tokens, no streak goes on
            self.zero_streaks = [0] * len(counts)
            return 0
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
