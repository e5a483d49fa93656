"""PNG plots (matplotlib, headless Agg): seed 002's routing figures and a comparison's curves.

  routing_pngs(payloads, out_dir, title)  routing-analysis.png and expert-by-class.png of
                                          one run's (or pooled runs') routing analysis
  compare_pngs(reader, manifest, out_dir) both routing plots of the MoE model (its seeds
                                          pooled) and loss-curves.png (every seed, both)
`moedesk analysis RUN --png DIR` and `moedesk compare` call these; matplotlib is imported
only when a plot is drawn, never by the CLI's start.
"""

from __future__ import annotations

from pathlib import Path

from moedesk.stats import names
from moedesk.stats.routing import pool_payloads

ROUTING_PNG = "routing-analysis.png"
CLASS_PNG = "expert-by-class.png"
CURVES_PNG = "loss-curves.png"


def routing_pngs(payloads: dict[int, dict], out_dir: Path, title: str) -> list[Path]:
    """{layer: payload} -> the two routing PNGs in `out_dir`."""
    from moedesk.plots.routing import expert_by_class, routing_analysis

    out_dir = Path(out_dir)
    return [routing_analysis(payloads, out_dir / ROUTING_PNG, title),
            expert_by_class(payloads, out_dir / CLASS_PNG, title)]


def pooled_routing(reader, run_ids: list[int]) -> dict[int, dict]:
    """{layer: payload}: the newest routing analysis of each run, counts added up."""
    per_layer: dict[int, list[dict]] = {}
    for run_id in run_ids:
        for layer, (_, payload) in reader.latest_routing(run_id).items():
            per_layer.setdefault(layer, []).append(payload)
    return {layer: pool_payloads(found) for layer, found in sorted(per_layer.items())}


def compare_pngs(reader, manifest: dict, out_dir: Path) -> list[Path]:
    """The comparison's plots beside its manifest.json; returns the files written."""
    from moedesk.plots.curves import Curves, loss_curves

    out_dir = Path(out_dir)
    written = []
    moe = [role for role in ("variant", "baseline") if manifest[role]["kind"] == "topk"]
    if moe:
        entry = manifest[moe[0]]
        payloads = pooled_routing(reader, entry["run_ids"])
        if payloads:
            seeds = ", ".join(str(r["seed"]) for r in entry["runs"])
            written += routing_pngs(payloads, out_dir, f"{entry['name']} ({moe[0]}): routing "
                                                       f"of the validation tokens, seeds {seeds}")
    curves = []
    for role in ("baseline", "variant"):
        entry = manifest[role]
        for run in entry["runs"]:
            curves.append(Curves(entry["name"], run["seed"],
                                 _finite(reader.series(run["run_id"], names.TRAIN_LOSS)),
                                 _finite(reader.series(run["run_id"], names.VAL_LOSS))))
    title = (f"{manifest['baseline']['name']} vs {manifest['variant']['name']}: "
             f"{len(manifest['seeds'])} seeds, {manifest['steps']} steps, verdict "
             f"{manifest['verdict']}")
    written.append(loss_curves(curves, out_dir / CURVES_PNG, title))
    return written


def _finite(series: list[tuple[int, float | None]]) -> list[tuple[int, float]]:
    return [(s, v) for s, v in series if v is not None and v == v and abs(v) != float("inf")]
