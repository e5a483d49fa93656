"""The verdict of a comparison: adopt, defer or never, from per-seed results alone.

The rule (docs/compare.md states it for users; keep the two in step):
  - pairs: seed s gives the baseline's and the variant's final validation perplexity
    b_s and v_s (same data, schedule, steps, batch and evaluation set); only seeds
    where both runs completed count; n = their number
  - gain = mean over pairs of (b_s - v_s): > 0 means the variant has lower perplexity
  - noise = pooled seed-to-seed std = sqrt((var(b) + var(v)) / 2), sample variances
    (n - 1 in the denominator), so it needs n >= 2
  - beyond noise = |gain| > NOISE_MULTIPLIER * noise, and every pair's difference has
    the sign of the gain (a consistent effect, not one lucky seed)
  - costs more = the variant has > PARAM_TOLERANCE x the baseline's total parameters, or
    takes > TIME_TOLERANCE x its training time per step
  adopt: n >= MIN_SEEDS_TO_ADOPT (3, seed 002: "rerun both with 3 different seeds") and
         the variant is better beyond noise
  never: the variant is worse beyond noise, or it costs more and shows no gain at all
         (gain <= 0)
  defer: everything else: a gain inside the noise, a gain beyond noise in fewer than 3
         seeds, fewer than 2 complete pairs, no cost difference to break the tie
Pure Python: the CLI, the TUI and the report all call `decide`; `bottom_line` states a
manifest's verdict with this rule (findings.md and the manifest's `lesson_notes`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

NOISE_MULTIPLIER = 2.0
MIN_SEEDS_TO_ADOPT = 3
PARAM_TOLERANCE = 1.05
TIME_TOLERANCE = 1.10
DECISIONS = ("adopt", "defer", "never")


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def sample_std(values: list[float]) -> float:
    """Standard deviation with n - 1 in the denominator; NaN for fewer than 2 values."""
    if len(values) < 2:
        return math.nan
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


@dataclass(frozen=True)
class Cost:
    """What a model costs: total parameters and training seconds per step (means)."""

    params_total: float
    step_time_s: float


@dataclass(frozen=True)
class Verdict:
    decision: str  # adopt | defer | never
    n_pairs: int
    gain: float  # mean of baseline_ppl - variant_ppl over pairs (> 0: the variant is better)
    relative_gain: float  # gain / mean baseline perplexity
    noise: float  # pooled seed-to-seed std of the perplexity
    threshold: float  # NOISE_MULTIPLIER * noise
    consistent: bool  # every pair's difference has the sign of the gain
    variant_wins: int  # pairs where the variant's perplexity is lower
    beyond_noise: bool
    costs_more: bool
    param_ratio: float
    time_ratio: float
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def summary(self) -> str:
        return f"{self.decision}: {self.reasons[0]}" if self.reasons else self.decision


def _ratio(a: float, b: float) -> float:
    if not (math.isfinite(a) and math.isfinite(b)) or b <= 0:
        return math.nan
    return a / b


def decide(baseline_ppl: list[float | None], variant_ppl: list[float | None],
           baseline_cost: Cost, variant_cost: Cost) -> Verdict:
    """The verdict for per-seed perplexities (index i = seed i; None = the run did not
    complete) and the two models' costs."""
    if len(baseline_ppl) != len(variant_ppl):
        raise ValueError("baseline and variant need one perplexity per seed each")
    pairs = [(b, v) for b, v in zip(baseline_ppl, variant_ppl, strict=True)
             if b is not None and v is not None and math.isfinite(b) and math.isfinite(v)]
    n = len(pairs)
    diffs = [b - v for b, v in pairs]
    gain = mean(diffs)
    base_mean = mean([b for b, _ in pairs])
    noise = math.sqrt((sample_std([b for b, _ in pairs]) ** 2
                       + sample_std([v for _, v in pairs]) ** 2) / 2) if n >= 2 else math.nan
    threshold = NOISE_MULTIPLIER * noise
    consistent = n > 0 and gain != 0 and all(d * gain > 0 for d in diffs)
    beyond = n >= 2 and consistent and abs(gain) > threshold
    param_ratio = _ratio(variant_cost.params_total, baseline_cost.params_total)
    time_ratio = _ratio(variant_cost.step_time_s, baseline_cost.step_time_s)
    cost_reasons = []
    if param_ratio > PARAM_TOLERANCE:
        cost_reasons.append(f"{param_ratio:.2f}x the parameters")
    if time_ratio > TIME_TOLERANCE:
        cost_reasons.append(f"{time_ratio:.2f}x the training time per step")
    costs_more = bool(cost_reasons)
    wins = sum(1 for d in diffs if d > 0)

    reasons: list[str] = []
    if n == 0:
        decision = "defer"
        reasons.append("no seed has two completed runs to compare")
    elif beyond and gain > 0 and n < MIN_SEEDS_TO_ADOPT:
        decision = "defer"
        reasons.append(f"the variant's perplexity is lower by {gain:.4g} beyond noise in all "
                       f"{n} seeds, but adopting needs {MIN_SEEDS_TO_ADOPT} seeds (seed 002); "
                       f"rerun with --seeds {MIN_SEEDS_TO_ADOPT}")
    elif beyond and gain > 0:
        decision = "adopt"
        reasons.append(f"the variant's perplexity is lower by {gain:.4g} "
                       f"({gain / base_mean:.1%}), more than {NOISE_MULTIPLIER:g} x the "
                       f"seed-to-seed std ({threshold:.4g}), in all {n} seeds")
        if costs_more:
            reasons.append("it costs " + " and ".join(cost_reasons) + "; weigh that against "
                           "the gain")
    elif beyond and gain < 0:
        decision = "never"
        reasons.append(f"the variant's perplexity is higher by {-gain:.4g} "
                       f"({-gain / base_mean:.1%}), more than {NOISE_MULTIPLIER:g} x the "
                       f"seed-to-seed std ({threshold:.4g}), in all {n} seeds")
    elif costs_more and gain <= 0:
        decision = "never"
        reasons.append(f"the variant shows no gain (mean perplexity change {-gain:+.4g}) and "
                       "costs " + " and ".join(cost_reasons))
    else:
        decision = "defer"
        if n < 2:
            reasons.append(f"only {n} seed completed in both runs: the seed-to-seed noise "
                           "cannot be measured, so no gain can be shown to exceed it")
        elif not consistent:
            reasons.append(f"the sign of the difference changes across seeds (the variant "
                           f"wins {wins} of {n}): the effect is within noise")
        else:
            reasons.append(f"the mean difference {gain:+.4g} is within {NOISE_MULTIPLIER:g} x "
                           f"the seed-to-seed std ({threshold:.4g})")
        if costs_more:
            reasons.append("it costs " + " and ".join(cost_reasons) + "; more seeds would "
                           "have to show a real gain first")
    return Verdict(decision=decision, n_pairs=n, gain=gain,
                   relative_gain=gain / base_mean if n else math.nan, noise=noise,
                   threshold=threshold, consistent=consistent, variant_wins=wins,
                   beyond_noise=beyond, costs_more=costs_more, param_ratio=param_ratio,
                   time_ratio=time_ratio, reasons=reasons)


def bottom_line(m: dict) -> str:
    """The verdict paragraph (also the manifest's `lesson_notes`)."""
    v = m["verdict_detail"]
    reasons = "; ".join(v["reasons"])
    head = {"adopt": "Adopt the variant", "defer": "Do not adopt it yet (defer)",
            "never": "Do not adopt it (never)"}[m["verdict"]]
    return (f"{head}: {reasons}. Rule: adopt only when the mean perplexity gain exceeds "
            f"{NOISE_MULTIPLIER:g} x the pooled seed-to-seed std and every one of at least "
            f"{MIN_SEEDS_TO_ADOPT} seeds agrees; never "
            f"when it is worse beyond noise, or costs more (> {PARAM_TOLERANCE:g}x parameters "
            f"or > {TIME_TOLERANCE:g}x time per step) with no gain; defer otherwise.")
