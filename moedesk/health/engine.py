"""The health engine: runs every rule of a run's kind over its metrics as they arrive.

The supervisor builds one with `HealthEngine.for_run(ctx, overrides, stop_on)` from the
run's `Profile` (`runner.supervise.make_engine`: this part reads no profiles), calls
`observe(step, values, wall)` for each metrics event and `tick(now)` regularly; both
return `(fired, cleared)`: alert dicts to store, and `(rule, step)` pairs of states that
ended. An alert whose severity reaches the run's `stop_on` carries `stops=True`.

The metric rules live in `rules.py`; here are what they share: `Latch` (fire once per
state, patience, clearing) and the clock-driven `Stalled` rule.

A resumed run replays its stored history up to the checkpoint step (`replay`), so the
engine's windows and open states are what an uninterrupted run would have had: an
alert still open in the store is not fired twice and clears when its state ends.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from moedesk.health.rules import RANK, RULE_CLASSES, Observed, Reading, Rule, RunContext
from moedesk.health.thresholds import RULES, STOP_ON, rule_params
from moedesk.stats import names

Result = tuple[list[dict], list[tuple[str, int]]]
RELEVANT_CACHE = 64  # sets of metric names whose rules an engine remembers


def stops_at(severity: str, stop_on: str) -> bool:
    """Whether an alert of `severity` stops a run whose stop_on is `stop_on`."""
    if stop_on == "never":
        return False
    return RANK[severity] >= RANK[stop_on]


class Stalled:
    """No new step for `factor` x the usual interval between steps (median of the last
    `window`), and at least `min_seconds`. Driven by the clock through `check`."""

    name = "stalled"

    def __init__(self, params: dict, ctx: RunContext):
        self.spec = RULES[self.name]
        self.params = params
        self.ctx = ctx
        self.intervals: deque[float] = deque(maxlen=max(1, int(params["window"])))
        self.last_step: int | None = None
        self.last_wall: float | None = None

    def applies(self) -> bool:
        return self.ctx.kind in self.spec.kinds and bool(self.params.get("enabled", True))

    def saw_step(self, step: int, wall: float) -> bool:
        """Record a step's arrival; True when it is a new step (the run is moving)."""
        if self.last_step is not None and step <= self.last_step:
            return False
        if self.last_wall is not None and wall >= self.last_wall:
            self.intervals.append(wall - self.last_wall)
        self.last_step, self.last_wall = step, wall
        return True

    def restart_clock(self, now: float) -> None:
        """After a replay: the time spent stopped is not a stall."""
        if self.last_wall is not None:
            self.last_wall = now

    def limit(self) -> float | None:
        if not self.intervals:
            return None  # no usual step time yet (startup can legitimately take long)
        usual = statistics.median(self.intervals)
        return max(float(self.params["min_seconds"]), float(self.params["factor"]) * usual)

    def check(self, now: float) -> Reading | None:
        limit = self.limit()
        if limit is None or self.last_wall is None:
            return None
        waited = now - self.last_wall
        usual = statistics.median(self.intervals)
        hits = [("warning", limit)] if waited > limit else []
        return Reading(names.SYS_STEP_S, waited, "stalled", hits,
                       f"usual step interval {usual:.3g} s")

    def message(self, reading: Reading, severity: str, threshold: float | None) -> str:
        return (f"stalled: no new step for {reading.value:.0f} s after step {self.last_step} "
                f"(limit {threshold:.0f} s; {reading.note})")


@dataclass
class Latch:
    """Fire when a state is entered (after `patience` readings), again only after it cleared.

    A higher severity of the same state fires once more (warning -> critical); lower
    ones never re-fire while the state lasts. A state clears after `patience` healthy
    readings on a later step than it fired. A change of condition ("low" -> "high")
    clears the old state, and the new one needs its own `patience` readings.
    """

    patience: int
    fired: tuple[str, str] | None = None  # (condition, severity) of the open alert
    fired_step: int = -1
    condition: str = ""
    streaks: dict[str, int] = field(default_factory=dict)  # severity -> consecutive readings
    healthy: int = 0

    def update(self, step: int, reading: Reading) -> tuple[tuple[str, float] | None, bool]:
        """(severity and threshold to fire, or None; whether the open state cleared)."""
        cleared = False
        if not reading.hits:
            self.streaks.clear()
            self.healthy += 1
            if self.fired is not None and self.healthy >= self.patience and step > self.fired_step:
                self.fired, cleared = None, True
            return None, cleared
        self.healthy = 0
        if reading.condition != self.condition:
            self.condition = reading.condition
            self.streaks.clear()
            if self.fired is not None and step > self.fired_step:
                self.fired, cleared = None, True
                return None, cleared
        met = {sev for sev, _ in reading.hits}
        self.streaks = {sev: self.streaks.get(sev, 0) + 1 for sev in met}
        floor = RANK[self.fired[1]] if self.fired is not None else -1
        for severity, threshold in reversed(reading.hits):
            if RANK[severity] > floor and self.streaks[severity] >= self.patience:
                self.fired, self.fired_step = (reading.condition, severity), step
                return (severity, threshold), cleared
        return None, cleared


class HealthEngine:
    def __init__(self, rules: list[Rule], stalled: Stalled | None, stop_on: str = "critical"):
        if stop_on not in STOP_ON:
            raise ValueError(f"stop_on must be one of {', '.join(STOP_ON)}, got {stop_on!r}")
        self.rules = rules
        self.stalled = stalled
        self.stop_on = stop_on
        self.latches = {r.name: Latch(r.patience) for r in rules}
        self.stall_latch = Latch(1)
        self.last_step = 0
        self.open: dict[str, str] = {}  # rule -> severity of its open alert
        self.stale: set[str] = set()  # open in the store, not in this engine: clear them
        self._relevant: dict[tuple[str, ...], list[Rule]] = {}  # names -> rules (_rules_for)

    @classmethod
    def for_run(cls, ctx: RunContext, overrides: dict | None = None,
                stop_on: str = "critical") -> HealthEngine:
        """The rules of a run's kind: `overrides` are its profile's `[health.RULE]` tables
        (`health.rules`), applied over the threshold table's defaults."""
        overrides = overrides or {}
        rules = [c(rule_params(c.name, overrides), ctx, frozenset(overrides.get(c.name) or {}))
                 for c in RULE_CLASSES]
        stalled = Stalled(rule_params("stalled", overrides), ctx)
        return cls([r for r in rules if r.applies()], stalled if stalled.applies() else None,
                   stop_on)

    @property
    def rule_names(self) -> list[str]:
        return [r.name for r in self.rules] + (["stalled"] if self.stalled else [])

    def _alert(self, rule, reading: Reading, severity: str, threshold: float | None,
               step: int, wall: float) -> dict:
        spec = RULES[rule.name]
        self.open[rule.name] = severity
        return {"step": step, "rule": rule.name, "severity": severity, "metric": reading.metric,
                "value": reading.value,
                "threshold": None if threshold is None or math.isnan(threshold) else threshold,
                "message": rule.message(reading, severity, threshold),
                "action": spec.action(rule.ctx.kind, rule.ctx.settings, reading.condition),
                "wall": wall, "stops": stops_at(severity, self.stop_on)}

    def observe(self, step: int, values: dict[str, float], wall: float) -> Result:
        """Evaluate one metrics event; returns (alerts fired, (rule, step) cleared)."""
        fired: list[dict] = []
        cleared: list[tuple[str, int]] = []
        values = Observed(values)  # the rules' worst-layer lookups group the names once
        if self.stale and step > self.last_step:
            cleared += [(rule, step) for rule in sorted(self.stale)]
            self.stale.clear()
        self.last_step = max(self.last_step, step)
        if self.stalled is not None and self.stalled.saw_step(step, wall):
            _, ended = self.stall_latch.update(step, Reading(names.SYS_STEP_S, 0.0, "stalled"))
            if ended:
                self.open.pop("stalled", None)
                cleared.append(("stalled", step))
        for rule in self._rules_for(values):
            latch = self.latches[rule.name]
            reading = rule.assess(step, values, latch.fired)
            if reading is None:
                continue
            fire, ended = latch.update(step, reading)
            if ended:
                self.open.pop(rule.name, None)
                cleared.append((rule.name, step))
            if fire is not None:
                fired.append(self._alert(rule, reading, *fire, step, wall))
        return fired, cleared

    def _rules_for(self, values: Observed) -> list[Rule]:
        # the rules that have evidence in an event with these names; a run logs the same
        # names step after step, so this is one dict lookup per event
        key = values.key()
        rules = self._relevant.get(key)
        if rules is None:
            if len(self._relevant) >= RELEVANT_CACHE:
                self._relevant.clear()
            rules = self._relevant[key] = [r for r in self.rules
                                           if any(map(values.has, r.inputs))]
        return rules

    def tick(self, now: float) -> Result:
        """Time-based rules (stalled): call regularly with the wall-clock time."""
        if self.stalled is None:
            return [], []
        reading = self.stalled.check(now)
        if reading is None or not reading.hits:
            return [], []
        fire, _ = self.stall_latch.update(self.last_step, reading)
        if fire is None:
            return [], []
        return [self._alert(self.stalled, reading, *fire, self.last_step, now)], []

    def replay(self, history: Iterable[tuple[int, dict[str, float], float]], now: float,
               open_rules: Iterable[str] = ()) -> None:
        """Feed stored (step, values, wall) events silently: a resumed run's engine then
        holds the windows and open states the uninterrupted run had at that step.

        `open_rules` are the rules with an open alert in the store; those the replay
        does not reopen (a stall, a rule since disabled) are cleared at the next step.
        """
        for step, values, wall in history:
            self.observe(step, values, wall)
        if self.stalled is not None:
            self.stalled.restart_clock(now)
        self.stale = set(open_rules) - set(self.open)


# the metrics rules read, for `replay`: names, and prefixes ending in "/" (per-layer families)
RULE_METRICS = (names.TRAIN_LOSS, names.VAL_LOSS, names.TRAIN_GRAD_NORM, names.prefix(names.MOE),
                names.FF_GOODNESS_DELTA, names.ROUTE_LATENCY_US)


__all__ = ["HealthEngine", "RULE_METRICS", "RunContext", "stops_at"]
