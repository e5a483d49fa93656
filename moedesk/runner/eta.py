"""The one ETA of a run: a smoothed time per step from its recent step times.

Both the CLI's progress line (`cli/follow.py`) and the TUI's monitor call `eta_seconds`
with the run's recent `sys/step_s` samples as (step, seconds per step) pairs: the
trainer logs, at each logged step, the mean time of the steps since the previous one,
evaluations and checkpoints excluded.

The estimate is the median of the last `WINDOW` samples, each weighted by the steps it
covers: one slow step (a checkpoint written inside the timed span, a garbage
collection, a burst of load from another process) moves it by at most one rank, where
the last sample alone (what the TUI used) swings the ETA five-fold within a minute on a
busy machine. A run whose speed really changes (another job starts) moves the median
within about `WINDOW / 2` logged steps. Pure Python: no torch, no store.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from itertools import pairwise

WINDOW = 20  # logged steps the median looks back over


def step_seconds(samples: Iterable[tuple[int, float | None]], window: int = WINDOW) -> float | None:
    """The smoothed seconds per step: the step-weighted median of the last `window`
    finite, positive (step, seconds-per-step) samples; None before the first one."""
    clean: list[tuple[int, float]] = []
    for step, value in samples:
        if value is not None and math.isfinite(value) and value > 0:
            clean.append((int(step), float(value)))
    if not clean:
        return None
    clean.sort()
    # a sample covers the steps since the previous one (the first counts as one step,
    # its span includes start-up); the window is counted in samples
    weighted = [(clean[0][1], 1)] + [(value, max(1, step - before))
                                      for (before, _), (step, value) in pairwise(clean)]
    recent = sorted(weighted[-window:])
    half = sum(w for _, w in recent) / 2
    seen = 0
    for value, w in recent:
        seen += w
        if seen >= half:
            return value
    return recent[-1][0]


def eta_seconds(step: int, total_steps: int | None,
                samples: Iterable[tuple[int, float | None]], window: int = WINDOW
                ) -> float | None:
    """Seconds until `total_steps` at the smoothed step time; None when unknown."""
    if not total_steps:
        return None
    if step >= total_steps:
        return 0.0
    per_step = step_seconds(samples, window)
    if per_step is None:
        return None
    return (total_steps - step) * per_step


__all__ = ["WINDOW", "step_seconds", "eta_seconds"]
