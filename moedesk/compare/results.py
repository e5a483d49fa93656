"""Comparison results: per-run numbers read from the store, and the manifest.

`run_result` reads one finished run through `Reader` (no SQL here: the store owns it);
`build_manifest` pairs baseline and variant runs by seed and writes seed 002's fields
plus means and stds across seeds and the verdict; `compare_runs` does both from run ids
alone, so any runs already in the store can be compared after the fact. `load` and
`find_manifests` read manifests back. The views of a manifest (findings.md, the table,
the verdict line, writing both files) are `findings.py`'s.

Definitions (docs/compare.md): the "final" numbers (train loss, validation loss and
perplexity, load-balance std, imbalance, aux loss, dead experts) are `finals.py`'s, the
one definition every compare view uses; wall time = the run's end minus its trainer's
start; training time = the sum of `sys/step_s` over the steps (evaluations and
checkpoints excluded).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from moedesk.compare.finals import FINALS, final_value, finite_values, tail_count
from moedesk.compare.verdict import Cost, bottom_line, decide, mean, sample_std
from moedesk.profiles import profile_from_dict
from moedesk.profiles.sizing import dense_ffn_hidden, expert_hidden, moe_layer_indices
from moedesk.stats import names
from moedesk.stats.load import load_stats
from moedesk.stats.routing import specialization
from moedesk.store import Reader, open_reader

MANIFEST_FORMAT = "moedesk-compare-1"
ROLES = ("baseline", "variant")


class CompareError(Exception):
    """A comparison that cannot be made; the message says why and what to do."""


@dataclass
class RunResult:
    run_id: int
    name: str
    kind: str
    seed: int
    status: str
    steps: int
    params_total: int | None
    params_active: int | None
    final_train_loss: float | None
    final_val_loss: float | None
    final_val_ppl: float | None
    wall_time_s: float | None
    train_time_s: float | None
    step_time_s: float | None
    # topk only (None for dense)
    load_balance_std: float | None = None
    imbalance: float | None = None
    dead_experts: float | None = None
    aux_loss: float | None = None
    route_latency_us: float | None = None
    expert_shares: dict[str, list[float]] = field(default_factory=dict)
    routing: dict[str, dict] = field(default_factory=dict)
    alerts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def run_result(reader: Reader, run_id: int) -> RunResult:
    """The numbers of one run, as the store holds them."""
    info = reader.run(run_id)
    config = info.config
    train_time = None
    step_s = sorted(finite_values(reader.series(info.id, names.SYS_STEP_S)))
    if step_s:
        # sys/step_s is the mean over the steps since the previous logged step
        train_time, previous = 0.0, 0
        for step, value in step_s:
            train_time += value * (step - previous)
            previous = step

    def final(label: str) -> float | None:
        metric, how = FINALS[label]
        return final_value(reader.series(info.id, metric), how)

    wall = None
    if info.started_at is not None and info.ended_at is not None:
        wall = info.ended_at - info.started_at
    alerts: dict[str, int] = {}
    for alert in reader.alerts(info.id):
        key = f"{alert['rule']} ({alert['severity']})"
        alerts[key] = alerts.get(key, 0) + 1
    result = RunResult(
        run_id=info.id, name=info.name, kind=info.kind, seed=int(info.row["seed"]),
        status=info.status, steps=info.last_step, params_total=info.row["params_total"],
        params_active=info.row["params_active"],
        final_train_loss=final("final train loss"), final_val_loss=final("final val loss"),
        final_val_ppl=final("final val ppl"),
        wall_time_s=wall, train_time_s=train_time,
        step_time_s=train_time / step_s[-1][0] if step_s and step_s[-1][0] else None,
        alerts=alerts)
    if info.kind == "topk":
        _add_moe(reader, info.id, config, result, final)
    return result


def _add_moe(reader: Reader, run_id: int, config: dict, result: RunResult, final) -> None:
    result.load_balance_std = final("usage std")
    result.imbalance = final("imbalance")
    result.aux_loss = final("aux loss")
    result.dead_experts = final("dead experts")
    latency = finite_values(reader.series(run_id, names.ROUTE_LATENCY_US))
    result.route_latency_us = mean([v for _, v in latency]) if latency else None
    rows, _ = reader.expert_load_since(run_id, 0)
    steps = sorted({step for step, _, _ in rows})
    tail = set(steps[-tail_count(len(steps)):]) if steps else set()
    pooled: dict[int, list[float]] = {}
    for step, layer, counts in rows:
        if step in tail:
            acc = pooled.setdefault(layer, [0.0] * len(counts))
            pooled[layer] = [a + c for a, c in zip(acc, counts, strict=True)]
    top_k = int(config["moe"]["top_k"])
    result.expert_shares = {str(layer): load_stats(counts, top_k)["shares"]
                            for layer, counts in sorted(pooled.items())}
    result.routing = {str(layer): specialization(payload)
                      for layer, (_, payload) in sorted(reader.latest_routing(run_id).items())}


def summary(values: list[float | None]) -> dict:
    """{"mean", "std", "values"} across seeds; std is the sample std (None below 2)."""
    present = [v for v in values if v is not None and math.isfinite(v)]
    std = sample_std(present)
    return {"mean": mean(present) if present else None,
            "std": None if math.isnan(std) else std, "values": list(values)}


def _model_entry(results: list[RunResult], config: dict, profile_path: str) -> dict:
    entry: dict[str, Any] = {
        "profile": profile_path, "name": config["name"], "kind": config["kind"],
        "run_ids": [r.run_id for r in results],
        "params": results[0].params_total if results else None,
        "params_active": results[0].params_active if results else None,
        "final_train_loss": summary([r.final_train_loss for r in results]),
        "final_val_loss": summary([r.final_val_loss for r in results]),
        "final_val_ppl": summary([r.final_val_ppl for r in results]),
        "wall_time_s": summary([r.wall_time_s for r in results]),
        "train_time_s": summary([r.train_time_s for r in results]),
        "step_time_s": summary([r.step_time_s for r in results]),
        "runs": [r.to_dict() for r in results],
    }
    if config["kind"] == "topk":
        entry["load_balance_stddev"] = summary([r.load_balance_std for r in results])
        entry["experts_dead_count"] = summary([r.dead_experts for r in results])
        entry["imbalance"] = summary([r.imbalance for r in results])
        entry["route_latency_us"] = summary([r.route_latency_us for r in results])
        entry["expert_shares"] = _mean_shares(results)
        entry["routing"] = {
            layer: {"class_u": summary([r.routing[layer]["class"]["u"] for r in results
                                        if layer in r.routing]),
                    "frequency_u": summary([r.routing[layer]["frequency"]["u"] for r in results
                                            if layer in r.routing]),
                    "patterns": [r.routing[layer]["pattern"] for r in results
                                 if layer in r.routing]}
            for layer in sorted({k for r in results for k in r.routing}, key=int)}
    return entry


def _mean_shares(results: list[RunResult]) -> dict[str, list[float]]:
    """Per layer, each expert's tail share averaged over seeds."""
    out: dict[str, list[float]] = {}
    for layer in sorted({k for r in results for k in r.expert_shares}, key=int):
        per_seed = [r.expert_shares[layer] for r in results if layer in r.expert_shares]
        out[layer] = [mean(list(column)) for column in zip(*per_seed, strict=True)]
    return out


def _moe_fields(configs: list[dict]) -> dict:
    """Seed 002's MoE fields, from the first topk config of the pair (variant first)."""
    for config in configs:
        if config["kind"] == "topk":
            profile = profile_from_dict(config)
            indices = moe_layer_indices(profile.model, profile.moe)
            return {"num_experts": profile.moe.num_experts, "top_k": profile.moe.top_k,
                    # seed 002 names one block; several MoE blocks keep the list here too
                    "moe_layer_index": indices[0] if len(indices) == 1 else indices,
                    "moe_layer_indices": indices,
                    "alpha_aux_loss": profile.moe.aux_loss_weight,
                    "expert_hidden": expert_hidden(profile.model, profile.moe),
                    "dense_ffn_hidden": dense_ffn_hidden(profile.model),
                    "dim": profile.model.dim}
    return {"num_experts": None, "top_k": None, "moe_layer_index": None,
            "moe_layer_indices": [], "alpha_aux_loss": None}


def build_manifest(reader: Reader, baseline_ids: list[int], variant_ids: list[int],
                   extra: dict | None = None) -> dict:
    """The manifest of a comparison of runs paired by position (pair i = seed i)."""
    if len(baseline_ids) != len(variant_ids) or not baseline_ids:
        raise CompareError("give as many baseline runs as variant runs (one pair per seed)")
    base = [run_result(reader, i) for i in baseline_ids]
    var = [run_result(reader, i) for i in variant_ids]
    for b, v in zip(base, var, strict=True):
        if b.seed != v.seed:
            raise CompareError(f"runs {b.run_id} and {v.run_id} have seeds {b.seed} and "
                               f"{v.seed}; a pair must share its seed")
    base_info, var_info = reader.run(baseline_ids[0]), reader.run(variant_ids[0])
    base_cfg, var_cfg = base_info.config, var_info.config
    train, data = base_cfg["train"], base_cfg["data"]
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "lab": "dense-vs-moe comparison (seed 002)",
        "created_at": time.time(),
        "seed": base[0].seed,
        "seeds": [r.seed for r in base],
        "steps": train["steps"],
        "batch_size": train["batch_size"],
        "seq_len": data["seq_len"],
        "tokens_per_step": train["batch_size"] * train["grad_accum"] * data["seq_len"],
        "lr": train["lr"],
        "warmup_steps": train["warmup_steps"],
        "eval_windows": train["eval_batches"] * train["batch_size"],
        "data_source": data["source"],
        "threads_per_run": train["threads"],
        **_moe_fields([var_cfg, base_cfg]),
        "baseline": _model_entry(base, base_cfg, base_info.row.get("profile_path") or ""),
        "variant": _model_entry(var, var_cfg, var_info.row.get("profile_path") or ""),
    }
    manifest.update(extra or {})
    completed = [(b.final_val_ppl if b.status == "completed" else None,
                  v.final_val_ppl if v.status == "completed" else None)
                 for b, v in zip(base, var, strict=True)]
    verdict = decide([b for b, _ in completed], [v for _, v in completed],
                     _cost(manifest["baseline"]), _cost(manifest["variant"]))
    manifest["verdict"] = verdict.decision
    manifest["verdict_detail"] = verdict.to_dict()
    manifest["lesson_notes"] = bottom_line(manifest)
    manifest.update(seed002_fields(manifest))
    return sanitize(manifest)


def seed002_fields(m: dict) -> dict:
    """Seed 002's own manifest keys (Block F), as means over the seeds, beside the richer
    `baseline` / `variant` entries they are read from."""
    def means(entry: dict, keys: tuple[str, ...]) -> dict:
        out = {"params": entry["params"]}
        for key in keys:
            stat = entry.get(key)
            out[key] = stat["mean"] if isinstance(stat, dict) else None
        return out

    common = ("final_val_ppl", "wall_time_s")
    return {"dense_baseline": means(m["baseline"], common),
            "moe_variant": means(m["variant"], (*common, "load_balance_stddev",
                                                "experts_dead_count")),
            "verdict_for_grammar_tutor": m["verdict"]}


def _cost(entry: dict) -> Cost:
    def value(x):
        return math.nan if x is None else float(x)
    return Cost(params_total=value(entry["params"]),
                step_time_s=value(entry["step_time_s"]["mean"]))


def sanitize(value: Any) -> Any:
    """NaN and infinities -> None, recursively: manifest.json stays valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): sanitize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [sanitize(v) for v in value]
    return value


def compare_runs(home: Path, baseline_ids: list[int], variant_ids: list[int],
                 extra: dict | None = None) -> dict:
    """The manifest for runs already in the store at `home`."""
    with open_reader(home) as reader:
        return build_manifest(reader, baseline_ids, variant_ids, extra)


def load(manifest_path: str | Path) -> dict:
    """A manifest written by `moedesk compare`; CompareError when it is not one."""
    path = Path(manifest_path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CompareError(f"cannot read comparison manifest {path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise CompareError(f"{path} is not a moedesk comparison manifest "
                           f"(format {MANIFEST_FORMAT!r})")
    return manifest


def find_manifests(home: Path) -> list[Path]:
    """Manifests under HOME/compare/, newest first (the default --out location)."""
    folder = Path(home) / "compare"
    found = list(folder.glob("*/manifest.json")) if folder.is_dir() else []
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
