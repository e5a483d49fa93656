"""The views of a comparison manifest: findings.md, the metric table, the verdict line.

findings.md is the honest report answering seed 002's six questions. Every sentence is
built from the manifest's measured numbers (nothing here knows what the answer "should"
be): the verdict comes from `verdict.decide`, balance thresholds from the health table,
specialization from `routing.specialization`. `table_rows` and `verdict_line` are what
the CLI and the TUI's compare view show; `write_outputs` writes manifest.json and
findings.md. This module reads manifests only (`results.py` builds them).
"""

from __future__ import annotations

import json
from pathlib import Path

from moedesk.compare.verdict import NOISE_MULTIPLIER, bottom_line
from moedesk.health.thresholds import rule_params
from moedesk.stats.routing import SPECIALIZATION_THRESHOLD

# a step time within this share of the active-parameter estimate counts as explained
EXPLAINED_SHARE = 0.05


def _num(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"


def _ms(stat: dict | None, missing: str = "n/a") -> str:
    """A manifest statistic as "mean ± std" (just the mean for one seed)."""
    if not stat or stat.get("mean") is None:
        return missing
    if stat.get("std") is None:
        return f"{stat['mean']:.4g}"
    return f"{stat['mean']:.4g} ± {stat['std']:.2g}"


def _moe_blocks(m: dict) -> list[int]:
    """The MoE block indices (manifests before `moe_layer_indices` kept the list in
    `moe_layer_index`)."""
    found = m.get("moe_layer_indices", m.get("moe_layer_index"))
    return found if isinstance(found, list) else [] if found is None else [found]


def _who(entry: dict) -> str:
    return f"{entry['name']} ({entry['kind']})"


def _moe_entries(m: dict) -> list[tuple[str, dict]]:
    return [(role, m[role]) for role in ("variant", "baseline") if m[role]["kind"] == "topk"]


def setup(m: dict) -> list[str]:
    base, var = m["baseline"], m["variant"]
    lines = [f"# {base['name']} vs {var['name']}: does the variant help beyond noise?", "",
             f"Baseline: {_who(base)}, `{base['profile']}`. Variant: {_who(var)}, "
             f"`{var['profile']}`.",
             f"Protocol: {len(m['seeds'])} seed{'' if len(m['seeds']) == 1 else 's'} "
             f"({', '.join(map(str, m['seeds']))}); for each "
             f"seed both models trained {m['steps']} steps on the same {m['data_source']} data "
             f"in the same order (batch {m['batch_size']} x {m['seq_len']} tokens, lr "
             f"{m['lr']:g}, {m['warmup_steps']} warmup steps, cosine decay) and were evaluated "
             f"on the same {m['eval_windows']} validation windows."]
    if m.get("num_experts"):
        lines.append(f"MoE: {m['num_experts']} experts, top-{m['top_k']}, MoE block(s) "
                     f"{_moe_blocks(m)}, aux-loss weight {m['alpha_aux_loss']:g}.")
    if m.get("jobs"):
        lines.append(f"Runs: {m['jobs']} at a time on {m['cores']} cores, "
                     f"{m['threads_per_run']} thread(s) each.")
    lines += ["", "| seed | baseline run | baseline ppl | variant run | variant ppl | "
              "baseline - variant |", "| --- | --- | --- | --- | --- | --- |"]
    for b, v in zip(base["runs"], var["runs"], strict=True):
        diff = (b["final_val_ppl"] - v["final_val_ppl"]
                if b["final_val_ppl"] is not None and v["final_val_ppl"] is not None else None)
        lines.append(f"| {b['seed']} | {b['run_id']} ({b['status']}) | {_num(b['final_val_ppl'])}"
                     f" | {v['run_id']} ({v['status']}) | {_num(v['final_val_ppl'])} | "
                     f"{'n/a' if diff is None else f'{diff:+.4g}'} |")
    lines += ["", "| metric (mean ± std over seeds) | baseline | variant | variant - baseline |",
              "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in table_rows(m)]
    return lines


def q1_perplexity(m: dict) -> list[str]:
    v = m["verdict_detail"]
    base, var = m["baseline"], m["variant"]
    lines = ["", "## 1. Did the variant reach lower perplexity than the baseline?", ""]
    if not v["n_pairs"]:
        return lines + ["No seed produced two completed runs, so there is nothing to compare."]
    lines.append(f"Final validation perplexity: baseline {_ms(base['final_val_ppl'])}, variant "
                 f"{_ms(var['final_val_ppl'])} (mean ± sample std over {v['n_pairs']} "
                 f"seed(s)). The variant is lower in {v['variant_wins']} of {v['n_pairs']} "
                 f"seed{'' if v['n_pairs'] == 1 else 's'}; the mean paired difference "
                 f"(baseline - variant) is {v['gain']:+.4g} "
                 f"({v['relative_gain']:+.2%} of the baseline's perplexity).")
    if v["noise"] is None:
        lines.append("With one seed the seed-to-seed noise is unknown, so this difference "
                     "cannot be told apart from a lucky initialisation.")
        return lines
    lines.append(f"The pooled seed-to-seed std is {v['noise']:.4g}, so a real effect must "
                 f"exceed {NOISE_MULTIPLIER:g} x that = {v['threshold']:.4g} with the same "
                 "sign in every seed.")
    if v["beyond_noise"]:
        better = "lower" if v["gain"] > 0 else "higher"
        lines.append(f"It does: the variant's perplexity is {better} beyond noise.")
    elif not v["consistent"]:
        lines.append("It does not: the sign of the difference changes from seed to seed, so "
                     "the difference is noise.")
    else:
        lines.append(f"It does not: |{v['gain']:.4g}| <= {v['threshold']:.4g}, the difference "
                     "is within noise.")
    return lines


def q2_parameters(m: dict) -> list[str]:
    base, var = m["baseline"], m["variant"]
    lines = ["", "## 2. How many more parameters does the variant have?", ""]
    if not base.get("params") or not var.get("params"):
        return lines + ["Parameter counts were not recorded (a run did not start)."]
    extra = var["params"] - base["params"]
    lines.append(f"Total: baseline {base['params']:,}, variant {var['params']:,} "
                 f"({var['params'] / base['params']:.2f}x, {extra:+,}). Active per token: "
                 f"baseline {base['params_active']:,}, variant {var['params_active']:,} "
                 f"({var['params_active'] / base['params_active']:.2f}x).")
    if m.get("dense_ffn_hidden"):
        ffn = 3 * m["dim"] * m["dense_ffn_hidden"]
        lines.append(f"One dense FFN block (SwiGLU, {m['dim']} -> {m['dense_ffn_hidden']}) has "
                     f"{ffn:,} parameters, so the variant carries {extra / ffn:+.2f} FFNs' worth "
                     f"of extra parameters ({m['num_experts']} experts of hidden "
                     f"{m['expert_hidden']} plus a router, in place of one FFN) and uses "
                     f"{(var['params_active'] - base['params_active']) / ffn:+.2f} FFNs' worth "
                     "more per token.")
    return lines


def q3_balance(m: dict) -> list[str]:
    lines = ["", "## 3. Was the load-balance loss working?", ""]
    entries = _moe_entries(m)
    if not entries:
        return lines + ["Neither model routes tokens; there is no load to balance."]
    num_experts = m["num_experts"]
    params = rule_params("usage_std")
    good, poor = (params["good_at_8"] * 8 / num_experts, params["poor_at_8"] * 8 / num_experts)
    for role, entry in entries:
        fair = 1 / num_experts
        lines.append(f"{role.capitalize()} {_who(entry)}, aux-loss weight "
                     f"{m['alpha_aux_loss']:g}: over the last 10% of logged steps the std of the "
                     f"per-expert token shares was {_ms(entry['load_balance_stddev'])} (fair "
                     f"share {fair:.3f}; for {num_experts} experts the health table calls <= "
                     f"{good:.3f} good and > {poor:.3f} poor).")
        for layer, shares in entry["expert_shares"].items():
            lines.append(f"- block {layer}: shares " + ", ".join(f"{s:.3f}" for s in shares)
                         + f" (min {min(shares):.3f}, max {max(shares):.3f}; mean over seeds)")
        dead = entry["experts_dead_count"]
        lines.append(f"- dead experts at the end: {_ms(dead)}; imbalance score "
                     f"{_ms(entry['imbalance'])} (0 = uniform, 1 = collapsed onto top-k)")
        alerts: dict[str, int] = {}
        for run in entry["runs"]:
            for key, count in run["alerts"].items():
                alerts[key] = alerts.get(key, 0) + count
        lines.append("- health alerts over all seeds: " + (", ".join(
            f"{k} x{n}" for k, n in sorted(alerts.items())) if alerts else "none"))
        std = entry["load_balance_stddev"]["mean"]
        if std is None:
            lines.append("No expert-load statistics were recorded.")
        elif std <= good and not (dead["mean"] or 0):
            lines.append(f"Yes: the experts got close to equal shares ({std:.4f} <= {good:.3f}) "
                         "and none died.")
        elif std <= poor and not (dead["mean"] or 0):
            lines.append(f"Partly: no expert died, but the shares are uneven ({std:.4f} > "
                         f"{good:.3f}).")
        else:
            lines.append(f"No: the load is poorly balanced (std {std:.4f}, dead "
                         f"{_num(dead['mean'])}).")
    return lines


def q4_specialization(m: dict) -> list[str]:
    lines = ["", "## 4. Did the experts specialize linguistically, or arbitrarily?", ""]
    entries = [(role, e) for role, e in _moe_entries(m) if e.get("routing")]
    if not entries:
        return lines + ["No routing analysis was recorded (it needs a topk run that reached "
                        "an evaluation)."]
    lines.append(f"Measured on the {m['eval_windows']} validation windows at the last "
                 "evaluation: U = the share of the routing's entropy that a token property "
                 "explains (bias-corrected mutual information / H(expert); 0 = routing ignores "
                 f"it, 1 = it decides the expert; >= {SPECIALIZATION_THRESHOLD:g} counts as "
                 "specialization). Classes are the corpus's word classes for grammar data and "
                 "byte classes otherwise; frequency is the token's quarter of the training "
                 "mass.")
    for role, entry in entries:
        for layer, r in entry["routing"].items():
            u_class, u_freq = r["class_u"]["mean"] or 0.0, r["frequency_u"]["mean"] or 0.0
            lines.append(f"- {role} block {layer}: U(class) {_ms(r['class_u'])}, U(frequency) "
                         f"{_ms(r['frequency_u'])}; pattern per seed: "
                         f"{', '.join(r['patterns'])}")
            first = next((run["routing"][layer] for run in entry["runs"]
                          if layer in run["routing"]), None)
            if first:
                tops = [f"expert {p['expert']} -> {p['top_class']} (x{p['top_class_lift']:.2f})"
                        for p in first["per_expert"] if p["top_class"]]
                lines.append(f"  favourite class per expert (seed {m['seeds'][0]}, lift over "
                             "the expert's overall share): " + "; ".join(tops))
            # judged on the means over seeds, so one seed cannot decide it
            if max(u_class, u_freq) < SPECIALIZATION_THRESHOLD:
                lines.append(f"  No real specialization: on average neither property explains "
                             f"{SPECIALIZATION_THRESHOLD:.0%} of the routing "
                             f"({u_class:.3f}, {u_freq:.3f}).")
            elif u_class >= u_freq:
                lines.append(f"  Linguistic: token class explains {u_class:.1%} of the routing "
                             f"on average, more than token frequency ({u_freq:.1%}).")
            else:
                lines.append(f"  Arbitrary: token frequency explains {u_freq:.1%} of the "
                             f"routing on average, more than token class ({u_class:.1%}).")
    return lines


def q5_time(m: dict) -> list[str]:
    base, var = m["baseline"], m["variant"]
    lines = ["", "## 5. Did training take longer? Why?", ""]
    bt, vt = base["step_time_s"]["mean"], var["step_time_s"]["mean"]
    if bt is None or vt is None:
        return lines + ["Step times were not recorded."]
    lines.append(f"Training time per step: baseline {bt * 1e3:.2f} ms, variant {vt * 1e3:.2f} ms "
                 f"({vt / bt:.2f}x); whole runs took {_ms(base['wall_time_s'])} s and "
                 f"{_ms(var['wall_time_s'])} s of wall time (start-up and evaluations "
                 "included).")
    if base.get("params_active") and var.get("params_active"):
        active = var["params_active"] / base["params_active"]
        expected = bt * active
        excess = vt - expected
        lines.append(f"The variant uses {active:.2f}x the active parameters per token; if time "
                     f"scaled with them it would take {expected * 1e3:.2f} ms per step.")
        if abs(excess) <= EXPLAINED_SHARE * vt:
            lines.append(f"It took {vt * 1e3:.2f} ms, within {EXPLAINED_SHARE:.0%}: the extra "
                         "time is the extra expert compute of the two active experts.")
        elif excess > 0:
            lines.append(f"It took {excess * 1e3:.2f} ms more ({excess / vt:.1%} of its step): "
                         "overhead the parameter count does not explain, i.e. routing and "
                         "dispatch (scoring, top-k, sorting tokens by expert, gathering and "
                         "scattering them), which a dense FFN does not do.")
        else:
            lines.append(f"It took {-excess * 1e3:.2f} ms less: time does not scale with "
                         "parameters here (attention and per-step overheads dominate).")
    latency = var.get("route_latency_us") or {}
    if latency.get("mean") is not None:
        tokens = m["tokens_per_step"]
        route_ms = latency["mean"] * tokens / 1e3 * len(_moe_blocks(m) or [1])
        lines.append(f"The router alone measured {latency['mean']:.3g} us per token, "
                     f"{route_ms:.2f} ms per step ({route_ms / (vt * 1e3):.1%} of the variant's "
                     "step).")
    return lines


def q6_bottom_line(m: dict) -> list[str]:
    return ["", f"## 6. Bottom line: adopt, defer or never? **{m['verdict']}**", "",
            m.get("lesson_notes") or bottom_line(m)]


def plots(m: dict) -> list[str]:
    if not m.get("plots"):
        return []
    return ["", "## Plots", ""] + [f"![{name}]({name})" for name in m["plots"]]


def render(m: dict) -> str:
    lines = setup(m) + q1_perplexity(m) + q2_parameters(m) + q3_balance(m)
    lines += q4_specialization(m) + q5_time(m) + q6_bottom_line(m) + plots(m)
    lines += ["", "_Generated by `moedesk compare` from the runs in the store; the numbers are "
                  "in manifest.json next to this file._", ""]
    return "\n".join(lines)


def write_outputs(manifest: dict, out_dir: Path) -> tuple[Path, Path]:
    """Write manifest.json and findings.md into `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path, findings_path = out_dir / "manifest.json", out_dir / "findings.md"
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    findings_path.write_text(render(manifest))
    return manifest_path, findings_path


TABLE_METRICS = (("final val ppl", "final_val_ppl"), ("final val loss", "final_val_loss"),
                 ("final train loss", "final_train_loss"), ("train time s", "train_time_s"),
                 ("wall time s", "wall_time_s"), ("load-balance std", "load_balance_stddev"),
                 ("dead experts", "experts_dead_count"))


def table_rows(manifest: dict) -> list[tuple[str, str, str, str]]:
    """(metric, baseline mean ± std, variant mean ± std, variant - baseline) rows."""
    rows = []
    base, var = manifest["baseline"], manifest["variant"]
    for label, key in (("parameters", "params"), ("active parameters", "params_active")):
        b, v = base.get(key), var.get(key)
        diff = f"{v / b:.2f}x" if b and v else "-"
        rows.append((label, f"{b:,}" if b else "-", f"{v:,}" if v else "-", diff))
    for label, key in TABLE_METRICS:
        b, v = base.get(key), var.get(key)
        if b is None and v is None:
            continue
        bm = (b or {}).get("mean")
        vm = (v or {}).get("mean")
        diff = f"{vm - bm:+.4g}" if bm is not None and vm is not None else "-"
        rows.append((label, _ms(b, "-"), _ms(v, "-"), diff))
    return rows


def verdict_line(manifest: dict) -> str:
    """The verdict and its first reason, in one line (the CLI and the TUI's compare view)."""
    detail = manifest.get("verdict_detail") or {}
    reasons = detail.get("reasons") or []
    return f"{manifest.get('verdict', '?')}: {reasons[0]}" if reasons else \
        str(manifest.get("verdict", "?"))
