"""The one table of health-rule thresholds, with the seed each number comes from.

Profiles override any of these in `[health.RULE]` tables; `health_problems` validates
those overrides for the profile loader. The rule logic lives in `rules.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RuleSpec:
    name: str
    kinds: tuple[str, ...]
    metric: str
    source: str
    action: str
    params: dict = field(default_factory=dict)


RULES: dict[str, RuleSpec] = {r.name: r for r in [
    RuleSpec("nonfinite_loss", ("dense", "topk"), "train/loss",
             "seed 003, Troubleshooting 'Training Unstable / NaN Loss'",
             "Lower train.lr (seed 003: 3e-4 -> 1e-4), tighten train.grad_clip (0.5), "
             "check moe.aux_loss_weight; resume from the last good checkpoint.",
             {"enabled": True}),
    RuleSpec("loss_spike", ("dense", "topk"), "train/loss",
             "seed 002 'If MoE training is unstable (loss spikes): lower the LR by 2x'; seed 003",
             "Lower train.lr by 2x; make sure grad_clip is on and z-loss is enabled.",
             {"enabled": True, "window": 50, "factor": 1.5, "patience": 4, "min_history": 20}),
    RuleSpec("expert_underused", ("topk",), "moe/min_share",
             "seed 001 'Any expert utilized <5% (indicates routing collapse)', 8 experts",
             "Check bias balancing is on (moe.bias_balancing) or raise moe.aux_loss_weight.",
             {"enabled": True, "fair_share_fraction": 0.4, "patience": 5, "after_step": 50}),
    RuleSpec("routing_collapse", ("topk",), "moe/max_token_fraction",
             "seed 002 'If routing collapses (one expert gets >80% of tokens)'",
             "Raise moe.aux_loss_weight (seed 002: try 0.05), init the router small "
             "(moe.router_init_std 0.02 or less), use E=4 k=2 rather than E=k.",
             {"enabled": True, "max_token_fraction": 0.8, "patience": 3}),
    RuleSpec("dead_experts", ("topk", "ternary"), "moe/dead_experts",
             "seed 003 'Load Imbalance ... some experts unused'; seed 002 'Are some experts dead?'",
             "Turn on load balancing (moe.bias_balancing / ternary.load_balance_alpha) or lower "
             "the learning rate.",
             {"enabled": True, "max_dead": 0, "after_step": 50}),
    RuleSpec("usage_std", ("topk",), "moe/usage_std",
             "seed 003 'expert_usage_std: 0.01-0.03 good, > 0.05 poor'",
             "Increase moe.aux_loss_weight (seed 003: 0.01 -> 0.05) or enable bias balancing.",
             {"enabled": True, "warning": 0.03, "poor": 0.05, "patience": 5, "after_step": 50}),
    RuleSpec("usage_entropy", ("topk",), "moe/entropy_norm",
             "seed 003 'expert_entropy < 1.5: poorly balanced' (of ln 8 = 2.08 for 8 experts)",
             "Increase moe.aux_loss_weight or enable bias balancing.",
             {"enabled": True, "min_nats_at_8": 1.5, "patience": 5, "after_step": 50}),
    RuleSpec("router_z_loss", ("topk",), "moe/z_loss",
             "seed 001 'Router z-loss: should remain small (<0.01)', 'Rapidly increasing z-loss'",
             "Enable router z-loss (moe.z_loss_weight 0.001), lower train.lr.",
             {"enabled": True, "max": 0.01, "rise_factor": 3.0, "window": 50, "patience": 3}),
    RuleSpec("goodness_delta", ("ternary",), "ff/goodness_delta",
             "seed 000 health table: goodness delta healthy > 0.5, concerning < 0.1",
             "Increase the learning rate, check the data (seed 000).",
             {"enabled": True, "healthy": 0.5, "concerning": 0.1, "patience": 5, "after_step": 50}),
    RuleSpec("load_balance", ("ternary",), "moe/imbalance",
             "seed 000 (healthy 0.2-0.4, concerning > 0.8), seed 004 (< 0.1 uniform, > 0.5 poor)",
             "Above the band: reduce ternary.load_balance_alpha (seed 000); below 0.1: the "
             "experts are not specializing (seed 004: reduce load_balance_alpha to 0.001).",
             {"enabled": True, "uniform": 0.1, "healthy_low": 0.2, "healthy_high": 0.4,
              "poor": 0.5, "concerning": 0.8, "patience": 5, "after_step": 50}),
    RuleSpec("routing_latency", ("topk", "ternary"), "route/latency_us",
             "seeds 000 and 004: routing latency healthy < 100 us, concerning > 500 us",
             "Enable hierarchical selection (ternary.topology), reduce cluster_size (seed 004).",
             {"enabled": True, "warning_us": 100.0, "concerning_us": 500.0, "patience": 5}),
    RuleSpec("stalled", ("dense", "topk", "ternary"), "sys/step_s",
             "research/trackers.md (marin #2830: stalled runs)",
             "Check the run's log; the process may be hung or starved of CPU.",
             {"enabled": True, "factor": 20.0, "min_seconds": 120.0}),
]}


def health_problems(overrides: dict) -> list:
    """Problems in a profile's `[health.RULE]` tables (unknown rule, key or type)."""
    from moedesk.profiles.validate import Problem

    out = []
    for rule, table in overrides.items():
        if rule not in RULES:
            out.append(Problem(f"health.{rule}", "unknown key; allowed keys: stop_on, "
                                                 + ", ".join(RULES)))
            continue
        if not isinstance(table, dict):
            out.append(Problem(f"health.{rule}", f"got {table!r}; must be a table of thresholds"))
            continue
        params = RULES[rule].params
        for key, value in table.items():
            where = f"health.{rule}.{key}"
            if key not in params:
                out.append(Problem(where, "unknown key; allowed keys: " + ", ".join(params)))
                continue
            default = params[key]
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    out.append(Problem(where, f"got {value!r}; must be true or false"))
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                out.append(Problem(where, f"got {value!r}; must be a number"))
            elif value < 0:
                out.append(Problem(where, f"got {value!r}; must be >= 0"))
            elif isinstance(default, int) and not float(value).is_integer():
                out.append(Problem(where, f"got {value!r}; must be an integer"))
    return out
