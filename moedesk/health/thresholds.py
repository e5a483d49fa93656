"""The one table of health rules: kinds, metric, thresholds, seed source and suggested action.

Profiles override any parameter in `[health.RULE]` tables (`enabled = false` turns a
rule off); `moedesk.profiles.rules.health_problems` validates those overrides against this
table for the profile loader. The rule logic lives in `rules.py`, the engine that runs it
in `engine.py`; docs/health.md explains every row. "Logged steps" below are metrics
events: patience counts them. Health is a leaf: it imports nothing from the rest of moedesk.

Thresholds quoted "at 8 experts" come from seed 001/003, whose model has 8 experts;
`rules.py` scales them to other expert counts (see each rule).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from moedesk.stats import names

SEVERITIES = ("info", "warning", "critical")
STOP_ON = ("warning", "critical", "never")


@dataclass(frozen=True)
class RuleSpec:
    name: str
    title: str
    kinds: tuple[str, ...]
    metric: str
    source: str
    action: str
    params: dict = field(default_factory=dict)


RULES: dict[str, RuleSpec] = {r.name: r for r in [
    RuleSpec("nonfinite_loss", "non-finite loss", ("dense", "topk"), names.TRAIN_LOSS,
             "seed 003, Troubleshooting 'Issue 2: Training Unstable / NaN Loss'",
             "Lower train.lr (seed 003: 3e-4 -> 1e-4), tighten train.grad_clip (0.5), check "
             "moe.aux_loss_weight (seed 003: 0.001); resume from the last good checkpoint.",
             {"enabled": True}),
    # the rolling-mean outlier test of llm-foundry's KillLossSpike (research/trackers.md
    # section 3: window 100, multiplier 2, patience 4)
    RuleSpec("loss_spike", "loss spike", ("dense", "topk"), names.TRAIN_LOSS,
             "seed 002 'If MoE training is unstable (loss spikes): lower the LR by 2x'; seed 001 "
             "'Training Instability: Loss spikes'; KillLossSpike parameters (research/trackers.md)",
             "Lower train.lr by 2x (seed 002); keep train.grad_clip on and moe.z_loss_weight > 0.",
             {"enabled": True, "window": 100, "factor": 2.0, "patience": 4, "min_history": 20}),
    RuleSpec("expert_underused", "expert under-used", ("topk",), names.MOE_MIN_SHARE,
             "seed 001 'Any expert utilized <5% (indicates routing collapse)', for 8 experts",
             "Check moe.bias_balancing is on (or raise moe.bias_update_speed), or raise "
             "moe.aux_loss_weight (seed 003: 0.01 -> 0.05).",
             {"enabled": True, "min_share_at_8": 0.05, "patience": 5, "after_step": 100,
              "after_step_unbalanced": 20}),
    RuleSpec("routing_collapse", "routing collapse", ("topk",), names.MOE_MAX_TOKEN_FRACTION,
             "seed 002 'If routing collapses (one expert gets >80% of tokens)'",
             "Raise moe.aux_loss_weight (seed 002: try 0.05), init the router small "
             "(moe.router_init_std 0.02 or less), use E=4 k=2 rather than E=k (seed 002).",
             {"enabled": True, "max_token_fraction": 0.8, "patience": 3, "after_step": 100,
              "after_step_unbalanced": 20}),
    # seed 003's example is one dead expert of 8 (12.5%); seed 004 calls experts at
    # 0.5-1% "rare patterns" of a healthy 243-expert model, so a few idle ones are no alarm
    RuleSpec("dead_experts", "dead experts", ("topk", "ternary"), names.MOE_DEAD_EXPERTS,
             "seed 003 'Issue 4: Dead Experts' (1 of 8); seed 002 'Are some experts dead?'; "
             "seed 004 (rare-pattern experts at 0.5-1% are healthy)",
             "Raise moe.aux_loss_weight for a while (seed 003: 0.1, then 0.01) or enable "
             "balancing (moe.bias_balancing, ternary.load_balance_alpha); try another seed.",
             {"enabled": True, "max_dead_fraction": 0.1, "patience": 5, "after_step": 50,
              "after_step_unbalanced": 20}),
    RuleSpec("usage_std", "expert usage std", ("topk",), names.MOE_USAGE_STD,
             "seed 003 'expert_usage_std: < 0.01 excellent, 0.01-0.03 good, > 0.05 poor "
             "(increase aux_loss_weight)', for 8 experts",
             "Increase moe.aux_loss_weight (seed 003: 0.01 -> 0.05) or enable moe.bias_balancing.",
             {"enabled": True, "good_at_8": 0.03, "poor_at_8": 0.05, "patience": 5,
              "after_step": 100, "after_step_unbalanced": 20}),
    RuleSpec("usage_entropy", "expert usage entropy", ("topk",), names.MOE_ENTROPY_NORM,
             "seed 003 'expert_entropy: maximum log(8) = 2.08; < 1.5: poorly balanced'",
             "Increase moe.aux_loss_weight or enable moe.bias_balancing (seed 003).",
             {"enabled": True, "min_nats_at_8": 1.5, "patience": 5, "after_step": 100,
              "after_step_unbalanced": 20}),
    RuleSpec("router_z_loss", "router z-loss", ("topk",), names.MOE_Z_LOSS,
             "seed 001 'Router z-loss: should remain small (<0.01)'; 'Rapidly increasing z-loss "
             "(routing instability)'",
             "Keep moe.z_loss_weight on (seed 003: 0.001), lower train.lr, init the router small.",
             {"enabled": True, "max": 0.01, "rise_factor": 3.0, "rise_floor": 0.001,
              "window": 50, "patience": 3, "after_step": 20}),
    RuleSpec("goodness_delta", "goodness delta", ("ternary",), names.FF_GOODNESS_DELTA,
             "seed 000 health table: goodness delta healthy > 0.5, concerning < 0.1",
             "Increase the learning rate, check the data (seed 000); 'delta = 0': inputs all "
             "identical or negatives too similar to positives (ternary.corruption).",
             {"enabled": True, "healthy": 0.5, "concerning": 0.1, "patience": 5,
              "after_step": 50}),
    RuleSpec("load_balance", "load balance", ("ternary",), names.MOE_IMBALANCE,
             "seed 000 (load balance score healthy 0.2-0.4, concerning > 0.8; uniform utilization "
             "concerning), seed 004 (< 0.1 no specialization, >= 0.5 poor)",
             "Above the band inputs crowd onto a few experts: raise ternary.load_balance_alpha "
             "(seed 000 'Too weak: all inputs go to same 2-3 experts': 0.1); below 0.1 the "
             "experts do not specialize: lower it (seed 004: 0.001).",
             {"enabled": True, "uniform": 0.1, "healthy_low": 0.2, "healthy_high": 0.4,
              "poor": 0.5, "concerning": 0.8, "patience": 5, "after_step": 50}),
    RuleSpec("routing_latency", "routing latency", ("topk", "ternary"), names.ROUTE_LATENCY_US,
             "seed 000 (routing latency healthy < 100 us, concerning > 500 us), seed 004 "
             "('Slow Routing (>200us)')",
             "Enable hierarchical selection (ternary.topology), reduce ternary.cluster_size "
             "(seed 004: 8); check that other processes are not starving the run of CPU.",
             {"enabled": True, "healthy_us": 100.0, "concerning_us": 500.0, "window": 10,
              "patience": 5, "after_step": 10}),
    RuleSpec("stalled", "stalled", ("dense", "topk", "ternary"), names.SYS_STEP_S,
             "research/trackers.md section 4.11 (marin #2830: alerting on stalled runs; "
             "aim-watcher's stuck-run detection)",
             "Look at the run's log (RUN_DIR/train.log); the trainer may be hung, swapping or "
             "starved of CPU. `moedesk stop RUN` checkpoints it if it still answers.",
             {"enabled": True, "factor": 20.0, "min_seconds": 120.0, "window": 20}),
]}


def rule_params(rule: str, overrides: dict | None = None) -> dict:
    """A rule's parameters: the table's defaults with a profile's `[health.RULE]` applied."""
    params = dict(RULES[rule].params)
    params.update((overrides or {}).get(rule) or {})
    return params
