"""`moedesk analysis RUN`: a topk run's routing analysis as terminal heatmaps, or CSV.

The trainer records, at each evaluation, which experts the validation tokens went to
(`routing/L{i}` rows of the `analysis` table). This shows the newest (or `--step`):
the per-expert assignment histogram and the expert-by-class heatmap (each cell: the
share of a class's assignments that went to an expert; fair = 1/E), plus how much of
the routing token class and token frequency explain; `--png DIR` draws the same two as
seed 002's PNG plots (`moedesk.plots`).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from moedesk.cli.app import (
    HomeOpt,
    JsonOpt,
    LatestRunArg,
    app,
    console,
    fail,
    home_of,
    print_json,
    styled,
)
from moedesk.stats.routing import class_expert_shares, specialization
from moedesk.store import StoreError, open_reader
from moedesk.store.analysis import ROUTING_PREFIX

KINDS = ("histogram", "by-class", "by-frequency")
CSV_COLUMNS = ("run_id", "step", "layer", "kind", "category", "category_tokens", "expert",
               "count", "share")


def heat_style(value: float, top: float) -> str:
    """A background from dark (0) to warm (top): the heatmap's colour scale."""
    x = 0.0 if top <= 0 else max(0.0, min(1.0, value / top))
    r, g, b = int(30 + 225 * x), int(30 + 140 * x), int(46 - 16 * x)
    return f"on rgb({r},{g},{b})" + (" black" if x > 0.6 else "")


def csv_rows(run_id: int, step: int, payload: dict, kind: str | None) -> list[tuple]:
    """Long-format rows of one layer's analysis: one per (category, expert)."""
    layer, top_k = payload["layer"], payload["top_k"]
    rows: list[tuple] = []
    if kind in (None, "histogram"):
        total = sum(payload["histogram"])
        for e, count in enumerate(payload["histogram"]):
            rows.append((run_id, step, layer, "histogram", "all", payload["tokens"], e, count,
                         count / total if total else 0.0))
    tables = {"by-class": ("classes", "class_tokens", "by_class"),
              "by-frequency": ("frequency_buckets", "bucket_tokens", "by_frequency")}
    for name, (labels, tokens, matrix) in tables.items():
        if kind not in (None, name):
            continue
        for c, label in enumerate(payload[labels]):
            slots = payload[tokens][c] * top_k
            for e, row in enumerate(payload[matrix]):
                rows.append((run_id, step, layer, name, label, payload[tokens][c], e, row[c],
                             row[c] / slots if slots else 0.0))
    return rows


def histogram_table(payload: dict) -> Table:
    hist, first = payload["histogram"], payload["first_choice"]
    total, n_first = sum(hist) or 1, sum(first) or 1
    fair = 1 / payload["num_experts"]
    table = Table("expert", "assignments", "share", "", "first choice", box=None,
                  header_style="bold", title=f"per-expert assignments (fair share {fair:.1%})",
                  title_justify="left")
    top = max(hist) / total if hist else 0.0
    for e, count in enumerate(hist):
        share = count / total
        bar = "█" * round(30 * share / top) if top else ""
        table.add_row(f"E{e}", f"{count:,}", f"{share:.1%}",
                      Text(bar or "·", style="red" if count == 0 else "cyan"),
                      f"{first[e] / n_first:.1%}")
    return table


def matrix_table(payload: dict, kind: str) -> Table:
    if kind == "by-class":
        labels, tokens, title = payload["classes"], payload["class_tokens"], "token class"
        shares = class_expert_shares(payload)
    else:
        labels, tokens = payload["frequency_buckets"], payload["bucket_tokens"]
        title = "frequency quarter"
        shares = [[row[c] / (tokens[c] * payload["top_k"]) if tokens[c] else 0.0
                   for row in payload["by_frequency"]] for c in range(len(labels))]
    experts = range(payload["num_experts"])
    table = Table(title, "tokens", *[f"E{e}" for e in experts], box=None, header_style="bold",
                  title=f"share of each {title}'s assignments per expert (fair "
                        f"{1 / payload['num_experts']:.0%})", title_justify="left")
    top = max((v for row in shares for v in row), default=0.0)
    for label, n, row in zip(labels, tokens, shares, strict=True):
        if not n:
            continue
        table.add_row(label, f"{n:,}", *[Text(f"{v:6.1%}", style=heat_style(v, top))
                                         for v in row])
    return table


@app.command()
def analysis(
    ref: LatestRunArg = None,
    kind: Annotated[str | None, typer.Option(
        "--kind", help="histogram, by-class or by-frequency (default: all).")] = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print long-format CSV.")] = False,
    step: Annotated[int | None, typer.Option(
        help="The evaluation step to show (default: the newest).")] = None,
    layer: Annotated[int | None, typer.Option(help="Only this MoE block.")] = None,
    png: Annotated[Path | None, typer.Option(
        "--png", help="Write routing-analysis.png and expert-by-class.png into this folder.",
        show_default=False)] = None,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Routing analysis of a topk run: expert histogram and expert-by-class heatmaps."""
    if kind is not None and kind not in KINDS:
        fail(f"--kind: got {kind!r}; allowed values: {', '.join(KINDS)}")
    if as_csv and as_json:
        fail("choose one of --csv and --json")
    try:
        reader = open_reader(home_of(home))
        info = reader.run(ref) if ref is not None else reader.latest_run()
        found = reader.latest_routing(info.id, step)
    except StoreError as exc:
        fail(str(exc))
    if layer is not None:
        found = {k: v for k, v in found.items() if k == layer}
    if not found:
        steps = sorted({s for name in reader.analysis_names(info.id)
                        if name.startswith(ROUTING_PREFIX)
                        for s in reader.analysis_steps(info.id, name)})
        where = f" at step {step} (steps with one: {steps or 'none'})" if step is not None else ""
        fail(f"run {info.id} ({info.name}, {info.kind}) has no routing analysis{where}; a topk "
             "run records one at each evaluation and at its end")
    if png is not None:
        from moedesk.plots import routing_pngs

        steps = sorted({at for at, _ in found.values()})
        try:
            paths = routing_pngs({k: p for k, (_, p) in found.items()}, png,
                                 f"run {info.id} ({info.name}), step {', '.join(map(str, steps))}")
        except OSError as exc:
            fail(f"--png: cannot write into {str(png)}: {exc.strerror or exc}")
        console.print(f"wrote {' and '.join(str(p) for p in paths)}", highlight=False,
                      soft_wrap=True)
        return
    if as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(CSV_COLUMNS)
        for at, payload in found.values():
            writer.writerows(csv_rows(info.id, at, payload, kind))
        return
    if as_json:
        print_json({str(k): {"step": at, "payload": payload, "specialization":
                             specialization(payload)} for k, (at, payload) in found.items()})
        return
    for layer_idx, (at, payload) in sorted(found.items()):
        spec = specialization(payload)
        console.print(styled((f"run {info.id} ({info.name}) block {layer_idx}, step {at}", "bold"),
                             f": {payload['tokens']:,} validation tokens x top-{payload['top_k']}"))
        if kind in (None, "histogram"):
            console.print(histogram_table(payload))
        for name in ("by-class", "by-frequency"):
            if kind in (None, name):
                console.print(matrix_table(payload, name))
        console.print(f"routing explained by token class U = {spec['class']['u']:.3f}, by token "
                      f"frequency U = {spec['frequency']['u']:.3f} (0 = not at all, 1 = fully); "
                      f"pattern: {spec['pattern']}")
