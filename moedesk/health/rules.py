"""Health rules as small state machines: metric values in, a `Reading` out.

Each rule looks at one metrics event and says which severity levels its metric meets
right now (`Reading.hits`), or None when the event carries no evidence (metric absent,
NaN statistics of an empty step, before `after_step`). Turning readings into alerts
(patience, fire once per state, clearing) is the engine's `Latch`, shared by every rule.

Hysteresis: a level is entered at its threshold but left only past its `leave` value
(10% on the healthy side unless the seeds give a band), so a metric hovering at a
threshold does not flap. Pure Python: no torch, no store; metric names come from the
catalogue `moedesk.stats.names`.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache

from moedesk.health.thresholds import RULES, SEVERITIES
from moedesk.stats import names

RANK = {s: i for i, s in enumerate(SEVERITIES)}
HYSTERESIS = 0.1


@dataclass(frozen=True)
class Level:
    severity: str
    enter: float
    leave: float  # an active state ends only once the value is back past this


@dataclass
class Reading:
    metric: str
    value: float
    condition: str = ""  # which bad state ("high", "low", ...) the hits belong to
    hits: list[tuple[str, float]] = field(default_factory=list)  # (severity, threshold) ascending
    note: str = ""  # extra words for the alert message


@dataclass
class RunContext:
    """What rules need to know about the run besides its metrics; built from the run's
    Profile by `moedesk.runner.supervise.run_context` (health reads no profiles)."""

    kind: str
    num_experts: int  # topk: moe.num_experts; ternary: ternary.num_experts
    top_k: int  # topk: moe.top_k; ternary: ternary.active_experts
    warmup_steps: int = 0  # the LR warmup (dense, topk): routers settle during it
    balanced: bool = True  # topk: bias balancing or an aux loss can undo an early collapse
    # the resolved profile as dotted keys ("moe.top_k" -> 2): what suggested actions are
    # fitted to (thresholds.RuleSpec.action); empty = general advice
    settings: dict = field(default_factory=dict)


def above(value: float, levels: list[Level], active: str | None,
          sign: float = 1.0) -> list[tuple[str, float]]:
    """Levels met by a value that is bad when high (`below`: when low); `active` = the
    severity already fired, whose levels (and lower ones) hold until `leave`."""
    return [(lv.severity, lv.enter) for lv in levels
            if sign * (value - lv.enter) > 0 or (active is not None and sign * (value - lv.leave) > 0
                                                 and RANK[lv.severity] <= RANK[active])]


def below(value: float, levels: list[Level], active: str | None) -> list[tuple[str, float]]:
    return above(value, levels, active, sign=-1.0)


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@lru_cache(maxsize=64)
def _layer_names(metric_names: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    # {overall: its per-layer names} of one set of names; a run logs the same set each step
    grouped: dict[str, list[str]] = {}
    for name in metric_names:
        overall = names.overall_of(name)
        if overall is not None:
            grouped.setdefault(overall, []).append(name)
    return {overall: tuple(layer_names) for overall, layer_names in grouped.items()}


class Observed(dict):
    """One metrics event's values, whose per-layer names are grouped by overall metric on
    first use: five rules ask for a worst layer of the same event, and one lookup (cached
    by the event's set of names) serves them all."""

    __slots__ = ("_key", "_layers")

    def key(self) -> tuple[str, ...]:
        """The event's names, in order: what per-name-set caches are keyed by (built once)."""
        try:
            return self._key
        except AttributeError:
            self._key = tuple(self)
            return self._key

    def _grouped(self) -> dict[str, tuple[str, ...]]:
        try:
            return self._layers
        except AttributeError:
            self._layers = _layer_names(self.key())
            return self._layers

    def layers(self, metric: str) -> list[tuple[str, float]]:
        """(name, value) of each FAMILY/L{i}/KEY of the overall `metric` FAMILY/KEY."""
        return [(name, self[name]) for name in self._grouped().get(metric, ())]

    def has(self, metric: str) -> bool:
        """Whether the event holds `metric` itself or any of its layers."""
        return metric in self or metric in self._grouped()


def worst_of(values: dict, metric: str, pick=max) -> tuple[str, float] | None:
    """(name, value) of the worst layer's value of an overall `metric` (FAMILY/KEY; its
    layers are FAMILY/L{i}/KEY), else the overall value: one collapsed layer of two would
    hide in the layer mean."""
    if not isinstance(values, Observed):
        values = Observed(values)
    layer = [(name, v) for name, v in values.layers(metric) if finite(v)]
    if layer:
        return pick(layer, key=lambda item: item[1])
    overall = values.get(metric)
    return (metric, float(overall)) if finite(overall) else None


class Rule:
    """Base: parameters from the table (+ overrides); `read` is the per-rule logic."""

    name = ""
    settles = False  # a routing-balance rule (see __init__)
    # the overall metrics the rule reads (a FAMILY/KEY also by its FAMILY/L{i}/KEY layers):
    # an event with none of them is no evidence, `read` returns None, and the engine skips
    # the rule (tests/unit/test_health_rules.py checks every rule keeps to its inputs)
    inputs: tuple[str, ...] = ()

    def __init__(self, params: dict, ctx: RunContext, explicit: frozenset = frozenset()):
        self.spec = RULES[self.name]
        self.params = params
        self.ctx = ctx
        self.patience = max(1, int(params.get("patience", 1)))
        self.after_step = int(params.get("after_step", 0))
        # routing-balance rules wait for a balanced router to settle (at least twice the LR
        # warmup); with no balancing nothing undoes a collapse, so there is no point waiting.
        # A profile that sets after_step itself means exactly that step.
        if self.settles and ctx.kind == "topk" and "after_step" not in explicit:
            if ctx.balanced:
                self.after_step = max(self.after_step, 2 * ctx.warmup_steps)
            else:
                self.after_step = int(params["after_step_unbalanced"])

    def applies(self) -> bool:
        return self.ctx.kind in self.spec.kinds and bool(self.params.get("enabled", True))

    def assess(self, step: int, values: dict, active: tuple[str, str] | None) -> Reading | None:
        if step < self.after_step:
            return None
        return self.read(values, active)

    def read(self, values: dict, active: tuple[str, str] | None) -> Reading | None:
        raise NotImplementedError

    @staticmethod
    def active_in(active: tuple[str, str] | None, condition: str) -> str | None:
        """The fired severity when the open alert is in `condition`, else None."""
        return active[1] if active is not None and active[0] == condition else None

    def message(self, reading: Reading, severity: str, threshold: float | None) -> str:
        op = "<" if reading.condition == "low" else ">"
        text = f"{self.spec.title}: {reading.metric} = {reading.value:.4g} {op} {threshold:.4g}"
        if self.patience > 1:
            text += f" for {self.patience} logged steps"
        return text + (f" ({reading.note})" if reading.note else "")


class NonFiniteLoss(Rule):
    name = "nonfinite_loss"
    inputs = (names.TRAIN_LOSS, names.VAL_LOSS, names.TRAIN_GRAD_NORM)

    def read(self, values, active):
        seen = [m for m in self.inputs if m in values]
        if not seen:
            return None
        for metric in seen:
            if not finite(values[metric]):
                return Reading(metric, float(values[metric]), "nonfinite", [("critical", math.nan)])
        return Reading(seen[0], float(values[seen[0]]), "nonfinite")

    def message(self, reading, severity, threshold):
        return (f"{self.spec.title}: {reading.metric} is {reading.value}; the trainer stops and "
                "its last checkpoint holds the last good state")


class LossSpike(Rule):
    """KillLossSpike: loss above `factor` x the mean of the last `window` normal losses."""

    name = "loss_spike"
    inputs = (names.TRAIN_LOSS,)

    def __init__(self, params, ctx, explicit=frozenset()):
        super().__init__(params, ctx, explicit)
        self.window: deque[float] = deque(maxlen=max(1, int(params["window"])))

    def read(self, values, active):
        loss = values.get(names.TRAIN_LOSS)
        if not finite(loss):
            return None  # absent, or non-finite: nonfinite_loss speaks for that
        if len(self.window) < int(self.params["min_history"]):
            self.window.append(loss)
            return Reading(names.TRAIN_LOSS, loss, "high")
        mean = sum(self.window) / len(self.window)
        threshold = float(self.params["factor"]) * mean
        hits = above(loss, [Level("warning", threshold, threshold * (1 - HYSTERESIS))],
                     self.active_in(active, "high"))
        if not hits:
            self.window.append(loss)  # outliers stay out, so a spike cannot raise its own bar
        return Reading(names.TRAIN_LOSS, loss, "high", hits,
                       f"{loss / mean:.2f}x the mean of the last {len(self.window)} losses")


class ExpertUnderused(Rule):
    name = "expert_underused"
    inputs = (names.MOE_MIN_SHARE,)
    settles = True

    def read(self, values, active):
        found = worst_of(values, names.MOE_MIN_SHARE, pick=min)
        if found is None:
            return None
        threshold = float(self.params["min_share_at_8"]) * 8 / self.ctx.num_experts
        hits = below(found[1], [Level("warning", threshold, threshold * (1 + HYSTERESIS))],
                     self.active_in(active, "low"))
        return Reading(*found, "low", hits, f"fair share is {1 / self.ctx.num_experts:.3g}")


class RoutingCollapse(Rule):
    name = "routing_collapse"
    inputs = (names.MOE_MAX_TOKEN_FRACTION,)
    settles = True

    def applies(self):
        # with k >= E every token goes to every expert: nothing can collapse (seed 002)
        return super().applies() and self.ctx.top_k < self.ctx.num_experts

    def read(self, values, active):
        found = worst_of(values, names.MOE_MAX_TOKEN_FRACTION)
        if found is None:
            return None
        threshold = float(self.params["max_token_fraction"])
        hits = above(found[1], [Level("critical", threshold, threshold * (1 - HYSTERESIS))],
                     self.active_in(active, "high"))
        return Reading(*found, "high", hits,
                       f"one expert takes {found[1]:.0%} of the tokens; fair is "
                       f"{self.ctx.top_k / self.ctx.num_experts:.0%}")


class DeadExperts(Rule):
    """More than `max_dead_fraction` of a layer's experts got no token over the trainer's
    dead window (the worst layer; 1 of 8 experts fires at the default 10%)."""

    name = "dead_experts"
    inputs = (names.MOE_DEAD_EXPERTS,)
    settles = True

    def read(self, values, active):
        found = worst_of(values, names.MOE_DEAD_EXPERTS)
        if found is None:
            return None
        limit = float(self.params["max_dead_fraction"]) * self.ctx.num_experts
        hits = above(found[1], [Level("warning", limit, limit)], self.active_in(active, "high"))
        return Reading(*found, "high", hits)

    def message(self, reading, severity, threshold):
        return (f"{self.spec.title}: {reading.value:.0f} of {self.ctx.num_experts} experts "
                f"({reading.metric}) got no token over the trainer's dead window, more than "
                f"{float(self.params['max_dead_fraction']):.0%}")


class UsageStd(Rule):
    """Seed 003's std of expert shares; its thresholds hold at 8 experts, where the fair
    share is 1/8, so they scale by 8/E (the same coefficient of variation)."""

    name = "usage_std"
    inputs = (names.MOE_USAGE_STD,)
    settles = True

    def read(self, values, active):
        found = worst_of(values, names.MOE_USAGE_STD)
        if found is None:
            return None
        scale = 8 / self.ctx.num_experts
        levels = [Level(sev, t * scale, t * scale * (1 - HYSTERESIS)) for sev, t in
                  (("info", float(self.params["good_at_8"])),
                   ("warning", float(self.params["poor_at_8"])))]
        return Reading(*found, "high", above(found[1], levels, self.active_in(active, "high")))


class UsageEntropy(Rule):
    """Entropy below 1.5 nats of ln 8 = 2.08; compared as the share of ln E it is."""

    name = "usage_entropy"
    inputs = (names.MOE_ENTROPY_NORM,)
    settles = True

    def applies(self):
        return super().applies() and self.ctx.num_experts > 1

    def read(self, values, active):
        found = worst_of(values, names.MOE_ENTROPY_NORM, pick=min)
        if found is None:
            return None
        threshold = float(self.params["min_nats_at_8"]) / math.log(8)
        hits = below(found[1], [Level("warning", threshold, threshold * (1 + HYSTERESIS))],
                     self.active_in(active, "low"))
        nats = found[1] * math.log(self.ctx.num_experts)
        return Reading(*found, "low", hits,
                       f"{nats:.2f} nats of ln {self.ctx.num_experts} = "
                       f"{math.log(self.ctx.num_experts):.2f}")


class RouterZLoss(Rule):
    """Weighted z-loss above `max`, or above `rise_factor` x its recent mean (rising fast)."""

    name = "router_z_loss"
    inputs = (names.MOE_Z_LOSS,)

    def __init__(self, params, ctx, explicit=frozenset()):
        super().__init__(params, ctx, explicit)
        self.window: deque[float] = deque(maxlen=max(1, int(params["window"])))

    def read(self, values, active):
        value = values.get(names.MOE_Z_LOSS)
        if not finite(value):
            return None
        limit = float(self.params["max"])
        open_ = self.active_in(active, "unstable")
        hits = above(value, [Level("warning", limit, limit * (1 - HYSTERESIS))], open_)
        note = f"healthy < {limit:g}"
        # a rise among values far below the limit (a router still near uniform) is no alarm
        floor = float(self.params["rise_floor"])
        if not hits and value > floor and len(self.window) >= max(2, self.window.maxlen // 2):
            mean = sum(self.window) / len(self.window)
            rise = float(self.params["rise_factor"]) * mean
            if mean > 0 and above(value, [Level("warning", rise, rise * (1 - HYSTERESIS))], open_):
                hits = [("warning", rise)]
                note = f"{value / mean:.1f}x its mean over the last {len(self.window)} logged steps"
        # every value joins the window: "rising fast" ends once the level stops climbing
        self.window.append(value)
        return Reading(names.MOE_Z_LOSS, value, "unstable", hits, note)


class GoodnessDelta(Rule):
    name = "goodness_delta"
    inputs = (names.FF_GOODNESS_DELTA,)

    def read(self, values, active):
        value = values.get(names.FF_GOODNESS_DELTA)
        if not finite(value):
            return None
        healthy, concerning = float(self.params["healthy"]), float(self.params["concerning"])
        levels = [Level("info", healthy, healthy * (1 + HYSTERESIS)),
                  Level("warning", concerning, healthy)]
        return Reading(names.FF_GOODNESS_DELTA, value, "low",
                       below(value, levels, self.active_in(active, "low")),
                       f"healthy > {healthy:g}, concerning < {concerning:g}")


class LoadBalance(Rule):
    """The imbalance score against seed 000/004's band; a state ends back inside the band."""

    name = "load_balance"
    inputs = (names.MOE_IMBALANCE,)

    def read(self, values, active):
        value = values.get(names.MOE_IMBALANCE)
        if not finite(value):
            return None
        p = {k: float(v) for k, v in self.params.items() if k != "enabled"}
        band = f"healthy {p['healthy_low']:g}-{p['healthy_high']:g}"
        high = above(value, [Level("warning", p["poor"], p["healthy_high"]),
                             Level("critical", p["concerning"], p["poor"])],
                     self.active_in(active, "high"))
        if high:
            return Reading(names.MOE_IMBALANCE, value, "high", high, f"poor balance; {band}")
        low = below(value, [Level("warning", p["uniform"], p["healthy_low"])],
                    self.active_in(active, "low"))
        return Reading(names.MOE_IMBALANCE, value, "low", low,
                       f"near-uniform use, no specialization; {band}")


class RoutingLatency(Rule):
    """The median of the last `window` latencies, so one slow step (GC, a busy core) is not
    an alert; only a sustained slowdown is."""

    name = "routing_latency"
    inputs = (names.ROUTE_LATENCY_US,)

    def __init__(self, params, ctx, explicit=frozenset()):
        super().__init__(params, ctx, explicit)
        self.window: deque[float] = deque(maxlen=max(1, int(params["window"])))

    def read(self, values, active):
        value = values.get(names.ROUTE_LATENCY_US)
        if not finite(value):
            return None
        self.window.append(value)
        median = statistics.median(self.window)
        healthy, concerning = float(self.params["healthy_us"]), float(self.params["concerning_us"])
        levels = [Level("info", healthy, healthy * (1 - HYSTERESIS)),
                  Level("warning", concerning, concerning * (1 - HYSTERESIS))]
        return Reading(names.ROUTE_LATENCY_US, median, "high",
                       above(median, levels, self.active_in(active, "high")),
                       f"median of the last {len(self.window)} logged steps, in us per "
                       "routed token or sample")


RULE_CLASSES: tuple[type[Rule], ...] = (NonFiniteLoss, LossSpike, ExpertUnderused,
                                        RoutingCollapse, DeadExperts, UsageStd, UsageEntropy,
                                        RouterZLoss, GoodnessDelta, LoadBalance, RoutingLatency)
