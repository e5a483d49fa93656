"""The one definition of a run's "final" numbers: what every compare view shows.

The compare manifest (results.py), `moedesk compare`, `moedesk show` and the TUI's
compare screen all call these, so the same label never shows two numbers:

- final train loss = the mean of `train/loss` over the last TAIL_FRACTION (10%) of the
  logged steps, at least one (one batch is too noisy to compare);
- imbalance, load-balance std (`moe/usage_std`), aux loss = the same tail mean;
- final validation loss and perplexity = the value at the last evaluation;
- dead experts = the last logged `moe/dead_experts`.

Non-finite and NULL values (a NaN step) are left out. No torch, no SQL: it reads
series through `Reader.series`.
"""

from __future__ import annotations

import math
from typing import Protocol

from moedesk.compare.verdict import mean
from moedesk.stats import names

TAIL_FRACTION = 0.1
Series = list[tuple[int, float | None]]

# label (as every view shows it) -> (metric, how): "tail" = tail mean, "last" = last value
FINALS: dict[str, tuple[str, str]] = {
    "final train loss": ("train/loss", "tail"),
    "final val loss": ("val/loss", "last"),
    "final val ppl": ("val/ppl", "last"),
    "usage std": ("moe/usage_std", "tail"),
    "imbalance": ("moe/imbalance", "tail"),
    "aux loss": ("moe/aux_loss", "tail"),
    "dead experts": ("moe/dead_experts", "last"),
}


class SeriesReader(Protocol):
    def series(self, run_id: int, name: str) -> Series: ...


def tail_count(n_logged: int) -> int:
    """How many of the last logged steps the "final" values average over."""
    return max(1, math.ceil(n_logged * TAIL_FRACTION))


def finite_values(series: Series) -> list[tuple[int, float]]:
    return [(s, v) for s, v in series if v is not None and math.isfinite(v)]


def tail_mean(series: Series) -> float | None:
    """The mean over the last TAIL_FRACTION of the finite logged values."""
    values = finite_values(series)
    if not values:
        return None
    return mean([v for _, v in values[-tail_count(len(values)):]])


def last_value(series: Series) -> float | None:
    values = finite_values(series)
    return values[-1][1] if values else None


def final_value(series: Series, how: str) -> float | None:
    return tail_mean(series) if how == "tail" else last_value(series)


def final_train_loss(reader: SeriesReader, run_id: int) -> float | None:
    return tail_mean(reader.series(run_id, names.TRAIN_LOSS))


def final_imbalance(reader: SeriesReader, run_id: int) -> float | None:
    return tail_mean(reader.series(run_id, names.MOE_IMBALANCE))


def run_finals(reader: SeriesReader, run_id: int) -> dict[str, float | None]:
    """{label: value} of every FINALS entry the run has (absent metrics are left out)."""
    out: dict[str, float | None] = {}
    for label, (metric, how) in FINALS.items():
        series = reader.series(run_id, metric)
        if series:
            out[label] = final_value(series, how)
    return out


__all__ = ["FINALS", "TAIL_FRACTION", "tail_count", "finite_values", "tail_mean", "last_value",
           "final_value", "final_train_loss", "final_imbalance", "run_finals"]
