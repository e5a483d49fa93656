"""The one table of health rules: kinds, metric, thresholds, source and suggested action.

Profiles override any parameter in `[health.RULE]` tables (`enabled = false` turns a
rule off); `moedesk.profiles.rules.health_problems` validates those overrides against this
table for the profile loader. The rule logic lives in `rules.py`, the engine that runs it
in `engine.py`; docs/health.md explains every row. "Logged steps" below are metrics
events: patience counts them. Health is a leaf: it imports nothing from the rest of moedesk.

Thresholds quoted "at 8 experts" come from seed 001/003, whose model has 8 experts;
`rules.py` scales them to other expert counts (see each rule).

**Suggested actions fit the run.** Each rule's action is a function of the run's
settings (`RunContext.settings`: its resolved profile as dotted keys, "moe.top_k" -> 2)
and the state that fired ("high", "low"): it never suggests a value the run already has
("raise moe.aux_loss_weight from 0.01 to 0.05", not "set top_k = 2" to a top-2 run), and
with no settings known it falls back to general advice. User-facing text never cites
the seeds (documents of this project, not random seeds): the sources are in `source`
and in docs/health.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from moedesk.stats import names

SEVERITIES = ("info", "warning", "critical")
STOP_ON = ("warning", "critical", "never")

Settings = Mapping[str, Any]  # a run's resolved profile as dotted keys


def _g(x: float) -> str:
    return f"{x:.3g}"


def _literal(v: Any) -> str:
    """A value as a profile writes it: "flat", true, 0.05."""
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, bool):
        return "true" if v else "false"
    return _g(v)


def _set(s: Settings, key: str, to: Any, why: str = "") -> str | None:
    """'set KEY from A to B (why)', or None when the run already has B."""
    now = s.get(key)
    if now == to:
        return None
    was = f" from {_literal(now)}" if now is not None else ""
    return f"set {key}{was} to {_literal(to)}" + (f" ({why})" if why else "")


def _scale(s: Settings, key: str, factor: float, general: str, why: str = "",
           floor: float | None = None, cap: float | None = None) -> str | None:
    """'raise/lower KEY from A to A*factor'; `general` when the value is unknown."""
    now = s.get(key)
    if not isinstance(now, (int, float)) or isinstance(now, bool):
        return general
    to = now * factor if now else (floor or 0.0)
    if floor is not None and factor > 1:
        to = max(to, floor)
    if cap is not None:
        to = min(to, cap)
    if to == now:
        return None
    verb = "raise" if to > now else "lower"
    return f"{verb} {key} from {_g(now)} to {_g(to)}" + (f" ({why})" if why else "")


def _join(parts: list[str | None]) -> str:
    found = [p for p in parts if p]
    text = "; ".join(found) if found else "no setting of this run explains it"
    return text[0].upper() + text[1:] + "."


def _lr(s: Settings, factor: float) -> str | None:
    return _scale(s, "train.lr", factor, f"lower train.lr by {1 / factor:g}x")


def _clip(s: Settings, tight: float) -> str | None:
    clip = s.get("train.grad_clip")
    if clip == 0:
        return _set(s, "train.grad_clip", 1.0, "clipping is off")
    if clip is None:
        return f"keep train.grad_clip on ({tight:g} or lower)"
    return None if clip <= tight else _set(s, "train.grad_clip", tight)


def _balance(s: Settings, aux_to: float) -> list[str | None]:
    """Balancing advice for a top-k router: bias balancing, its speed, the aux loss."""
    bias = s.get("moe.bias_balancing")
    return [_set(s, "moe.bias_balancing", True, "auxiliary-loss-free balancing") if bias is False
            else _scale(s, "moe.bias_update_speed", 2.0, "raise moe.bias_update_speed"),
            _or(_scale(s, "moe.aux_loss_weight", 2.0, f"raise moe.aux_loss_weight (to {aux_to:g})",
                       floor=aux_to, cap=1.0))]


def _or(part: str | None) -> str | None:
    return None if part is None else "or " + part


def _router_init(s: Settings) -> str | None:
    std = s.get("moe.router_init_std")
    if isinstance(std, (int, float)) and std > 0.02:
        return _set(s, "moe.router_init_std", 0.02, "a small init keeps early routing near uniform")
    return None


def _nonfinite(kind: str, s: Settings, condition: str) -> str:
    aux = s.get("moe.aux_loss_weight")
    return _join([_lr(s, 1 / 3), _clip(s, 0.5),
                  _set(s, "moe.aux_loss_weight", 0.001) if kind == "topk"
                  and isinstance(aux, (int, float)) and aux > 0.001 else None,
                  "then resume from the last good checkpoint (moedesk run PROFILE --set KEY=VALUE "
                  "--from RUN)"])


def _spike(kind: str, s: Settings, condition: str) -> str:
    z = s.get("moe.z_loss_weight")
    return _join([_lr(s, 0.5), _clip(s, 1.0),
                  _set(s, "moe.z_loss_weight", 0.001, "the router z-loss damps spikes")
                  if kind == "topk" and z == 0 else None])


def _underused(kind: str, s: Settings, condition: str) -> str:
    return _join(_balance(s, 0.05))


def _collapse(kind: str, s: Settings, condition: str) -> str:
    return _join([*_balance(s, 0.05), _router_init(s),
                  _set(s, "moe.top_k", 2, "two experts per token collapse less often")
                  if s.get("moe.top_k") == 1 else None])


def _dead(kind: str, s: Settings, condition: str) -> str:
    if kind == "ternary":
        return _join([_scale(s, "ternary.load_balance_alpha", 2.0,
                             "raise ternary.load_balance_alpha", floor=0.1),
                      "or train with another seed"])
    return _join([*_balance(s, 0.1), "lower moe.aux_loss_weight again once every expert has "
                  "tokens; or train with another seed"])


def _zloss(kind: str, s: Settings, condition: str) -> str:
    z = s.get("moe.z_loss_weight")
    return _join([_set(s, "moe.z_loss_weight", 0.001, "it is off") if z == 0 else None,
                  _lr(s, 0.5), _router_init(s)])


def _goodness(kind: str, s: Settings, condition: str) -> str:
    rule = s.get("ternary.hebbian_rule")
    activity = s.get("ternary.target_activity")
    return _join([
        _set(s, "ternary.hebbian_rule", "contrastive", "the reference rule only reinforces "
             "positives") if rule == "reference" else None,
        _scale(s, "ternary.update_fraction", 2.0, "raise ternary.update_fraction", cap=1.0,
               why="the share of weights a step may change: the trits' learning rate"),
        _scale(s, "ternary.corruption", 2.0, "raise ternary.corruption", cap=0.5,
               why="negatives too close to positives keep the delta small"),
        _set(s, "ternary.target_activity", 0.5, "adaptive dead zones")
        if activity is None or not 0.2 <= activity <= 0.8 else
        f"ternary.target_activity ({_g(activity)}) sets how many units a positive activates",
        "a delta of 0 means identical inputs: check the data"])


def _load_balance(kind: str, s: Settings, condition: str) -> str:
    if condition == "low":
        alpha = s.get("ternary.load_balance_alpha")
        if alpha == 0:
            return _join(["nothing pushes towards uniform use (ternary.load_balance_alpha is 0): "
                          "the data may have too little structure for experts to specialize"])
        return _join([_scale(s, "ternary.load_balance_alpha", 0.1,
                             "lower ternary.load_balance_alpha",
                             why="experts do not specialize")])
    return _join([_scale(s, "ternary.load_balance_alpha", 2.0, "raise ternary.load_balance_alpha",
                         floor=0.1, why="inputs crowd onto a few experts")])


def _latency(kind: str, s: Settings, condition: str) -> str:
    parts: list[str | None] = ["check that other processes are not starving the run of CPU "
                               "(one routing call takes tens of microseconds on an idle core)"]
    if s.get("train.threads") == 0:
        parts.append(_set(s, "train.threads", 1, "all cores spin when they are shared"))
    if kind == "ternary":
        # bench/ternary_route.py measures hierarchical selection slower than flat at 243
        # experts (docs/benchmarks.md): never recommend it there
        if s.get("ternary.topology") == "hierarchical" and s.get("ternary.num_experts", 0) <= 243:
            parts.append(_set(s, "ternary.topology", "flat", "measured faster than hierarchical "
                              "at up to 243 experts, docs/benchmarks.md"))
        parts.append(_scale(s, "ternary.active_experts", 0.5, "fewer ternary.active_experts",
                            why="less work per call"))
    return _join(parts)


def _stalled(kind: str, s: Settings, condition: str) -> str:
    return _join(["look at the run's log (moedesk logs RUN): the trainer may be hung, swapping "
                  "or starved of CPU; `moedesk stop RUN` checkpoints it if it still answers"])


Advice = Callable[[str, Settings, str], str]


@dataclass(frozen=True)
class RuleSpec:
    name: str
    title: str
    kinds: tuple[str, ...]
    metric: str
    source: str  # where the rule and its thresholds come from (docs/health.md cites it)
    advise: Advice
    params: dict = field(default_factory=dict)

    def action(self, kind: str = "", settings: Settings | None = None, condition: str = "") -> str:
        """The suggested action for a run with these settings in this state."""
        return self.advise(kind or self.kinds[0], settings or {}, condition)


RULES: dict[str, RuleSpec] = {r.name: r for r in [
    RuleSpec("nonfinite_loss", "non-finite loss", ("dense", "topk"), names.TRAIN_LOSS,
             "seed 003, Troubleshooting 'Issue 2: Training Unstable / NaN Loss'",
             _nonfinite,
             {"enabled": True}),
    # the rolling-mean outlier test of llm-foundry's KillLossSpike (research/trackers.md
    # section 3: window 100, multiplier 2, patience 4)
    RuleSpec("loss_spike", "loss spike", ("dense", "topk"), names.TRAIN_LOSS,
             "seed 002 'If MoE training is unstable (loss spikes): lower the LR by 2x'; seed 001 "
             "'Training Instability: Loss spikes'; KillLossSpike parameters (research/trackers.md)",
             _spike,
             {"enabled": True, "window": 100, "factor": 2.0, "patience": 4, "min_history": 20}),
    RuleSpec("expert_underused", "expert under-used", ("topk",), names.MOE_MIN_SHARE,
             "seed 001 'Any expert utilized <5% (indicates routing collapse)', for 8 experts",
             _underused,
             {"enabled": True, "min_share_at_8": 0.05, "patience": 5, "after_step": 100,
              "after_step_unbalanced": 20}),
    RuleSpec("routing_collapse", "routing collapse", ("topk",), names.MOE_MAX_TOKEN_FRACTION,
             "seed 002 'If routing collapses (one expert gets >80% of tokens)'",
             _collapse,
             {"enabled": True, "max_token_fraction": 0.8, "patience": 3, "after_step": 100,
              "after_step_unbalanced": 20}),
    # seed 003's example is one dead expert of 8 (12.5%); seed 004 calls experts at
    # 0.5-1% "rare patterns" of a healthy 243-expert model, so a few idle ones are no alarm
    RuleSpec("dead_experts", "dead experts", ("topk", "ternary"), names.MOE_DEAD_EXPERTS,
             "seed 003 'Issue 4: Dead Experts' (1 of 8); seed 002 'Are some experts dead?'; "
             "seed 004 (rare-pattern experts at 0.5-1% are healthy)",
             _dead,
             {"enabled": True, "max_dead_fraction": 0.1, "patience": 5, "after_step": 50,
              "after_step_unbalanced": 20}),
    RuleSpec("usage_std", "expert usage std", ("topk",), names.MOE_USAGE_STD,
             "seed 003 'expert_usage_std: < 0.01 excellent, 0.01-0.03 good, > 0.05 poor "
             "(increase aux_loss_weight)', for 8 experts",
             _underused,
             {"enabled": True, "good_at_8": 0.03, "poor_at_8": 0.05, "patience": 5,
              "after_step": 100, "after_step_unbalanced": 20}),
    RuleSpec("usage_entropy", "expert usage entropy", ("topk",), names.MOE_ENTROPY_NORM,
             "seed 003 'expert_entropy: maximum log(8) = 2.08; < 1.5: poorly balanced'",
             _underused,
             {"enabled": True, "min_nats_at_8": 1.5, "patience": 5, "after_step": 100,
              "after_step_unbalanced": 20}),
    RuleSpec("router_z_loss", "router z-loss", ("topk",), names.MOE_Z_LOSS,
             "seed 001 'Router z-loss: should remain small (<0.01)'; 'Rapidly increasing z-loss "
             "(routing instability)'",
             _zloss,
             {"enabled": True, "max": 0.01, "rise_factor": 3.0, "rise_floor": 0.001,
              "window": 50, "patience": 3, "after_step": 20}),
    RuleSpec("goodness_delta", "goodness delta", ("ternary",), names.FF_GOODNESS_DELTA,
             "seed 000 health table: goodness delta healthy > 0.5, concerning < 0.1",
             _goodness,
             {"enabled": True, "healthy": 0.5, "concerning": 0.1, "patience": 5,
              "after_step": 50}),
    RuleSpec("load_balance", "load balance", ("ternary",), names.MOE_IMBALANCE,
             "seed 000 (load balance score healthy 0.2-0.4, concerning > 0.8; uniform utilization "
             "concerning), seed 004 (< 0.1 no specialization, >= 0.5 poor)",
             _load_balance,
             {"enabled": True, "uniform": 0.1, "healthy_low": 0.2, "healthy_high": 0.4,
              "poor": 0.5, "concerning": 0.8, "patience": 5, "after_step": 50}),
    RuleSpec("routing_latency", "routing latency", ("topk", "ternary"), names.ROUTE_LATENCY_US,
             "seed 000 (routing latency healthy < 100 us, concerning > 500 us), seed 004 "
             "('Slow Routing (>200us)')",
             _latency,
             {"enabled": True, "healthy_us": 100.0, "concerning_us": 500.0, "window": 10,
              "patience": 5, "after_step": 10}),
    RuleSpec("stalled", "stalled", ("dense", "topk", "ternary"), names.SYS_STEP_S,
             "research/trackers.md section 4.11 (marin #2830: alerting on stalled runs; "
             "aim-watcher's stuck-run detection)",
             _stalled,
             {"enabled": True, "factor": 20.0, "min_seconds": 120.0, "window": 20}),
]}


def rule_params(rule: str, overrides: dict | None = None) -> dict:
    """A rule's parameters: the table's defaults with a profile's `[health.RULE]` applied."""
    params = dict(RULES[rule].params)
    params.update((overrides or {}).get(rule) or {})
    return params
