"""The health engine: runs every rule of a run's kind over its metrics as they arrive.

The supervisor builds one with `HealthEngine.from_config(config, stop_on=...)`, calls
`observe(step, values, wall)` for each metrics event and `tick(now)` regularly; both
return `(fired, cleared)`: alert dicts to store, and `(rule, step)` pairs of states that
ended. An alert whose severity reaches the run's `stop_on` carries `stops=True`.

A resumed run replays its stored history up to the checkpoint step (`replay`), so the
engine's windows and open states are what an uninterrupted run would have had: an
alert still open in the store is not fired twice and clears when its state ends.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from moedesk.health.rules import (
    RANK,
    RULE_CLASSES,
    Latch,
    Reading,
    Rule,
    RunContext,
    Stalled,
)
from moedesk.health.thresholds import RULES, STOP_ON, rule_params

Result = tuple[list[dict], list[tuple[str, int]]]


def stops_at(severity: str, stop_on: str) -> bool:
    """Whether an alert of `severity` stops a run whose stop_on is `stop_on`."""
    if stop_on == "never":
        return False
    return RANK[severity] >= RANK[stop_on]


def run_context(config: dict) -> RunContext:
    kind = config.get("kind", "dense")
    warmup = int((config.get("train") or {}).get("warmup_steps", 0))
    if kind == "ternary":
        section = config.get("ternary") or {}
        return RunContext(kind, int(section.get("num_experts", 243)),
                          int(section.get("active_experts", 16)))
    section = config.get("moe") or {}
    return RunContext(kind, int(section.get("num_experts", 8)), int(section.get("top_k", 2)),
                      warmup)


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

    @classmethod
    def from_config(cls, config: dict, stop_on: str | None = None) -> HealthEngine:
        """The rules for a resolved profile (`profile_to_dict` output), overrides applied."""
        health = config.get("health") or {}
        overrides = health.get("rules") or {}
        ctx = run_context(config)
        rules = [c(rule_params(c.name, overrides), ctx, frozenset(overrides.get(c.name) or {}))
                 for c in RULE_CLASSES]
        stalled = Stalled(rule_params("stalled", overrides), ctx)
        return cls([r for r in rules if r.applies()], stalled if stalled.applies() else None,
                   stop_on or health.get("stop_on") or "critical")

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
                "message": rule.message(reading, severity, threshold), "action": spec.action,
                "wall": wall, "stops": stops_at(severity, self.stop_on)}

    def observe(self, step: int, values: dict[str, float], wall: float) -> Result:
        """Evaluate one metrics event; returns (alerts fired, (rule, step) cleared)."""
        fired: list[dict] = []
        cleared: list[tuple[str, int]] = []
        if self.stale and step > self.last_step:
            cleared += [(rule, step) for rule in sorted(self.stale)]
            self.stale.clear()
        self.last_step = max(self.last_step, step)
        if self.stalled is not None and self.stalled.saw_step(step, wall):
            _, ended = self.stall_latch.update(step, Reading("sys/step_s", 0.0, "stalled"))
            if ended:
                self.open.pop("stalled", None)
                cleared.append(("stalled", step))
        for rule in self.rules:
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
RULE_METRICS = ("train/loss", "val/loss", "train/grad_norm", "moe/", "ff/goodness_delta",
                "route/latency_us")


__all__ = ["HealthEngine", "RULE_METRICS", "stops_at", "run_context"]
