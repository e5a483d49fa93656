"""`moedesk compare A B`: the dense-vs-MoE protocol as one command (seed 002).

Runs both profiles for each seed through the real runner, then writes manifest.json,
findings.md and the plots (the MoE model's routing-analysis.png and expert-by-class.png,
loss-curves.png) and prints the comparison table and the verdict. A few lines over
`moedesk.compare`; nothing here imports torch.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from moedesk.cli.app import (
    EXIT_FAILED,
    EXIT_STOPPED,
    HomeOpt,
    JsonOpt,
    app,
    console,
    fail,
    home_of,
    plural,
    print_json,
    styled,
)
from moedesk.compare import (
    CompareError,
    compare_runs,
    execute,
    make_plan,
    run_ids,
    table_rows,
    verdict_line,
    write_outputs,
)
from moedesk.runner.launch import RunError
from moedesk.store import StoreError

VERDICT_STYLE = {"adopt": "bold green", "defer": "bold yellow", "never": "bold red"}


def default_out(home: Path, baseline: str, variant: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return home / "compare" / f"{Path(baseline).stem}-vs-{Path(variant).stem}-{stamp}"


@app.command()
def compare(
    profile_a: Annotated[str, typer.Argument(
        help="Baseline profile, e.g. profiles/lab_dense.toml.", show_default=False)],
    profile_b: Annotated[str, typer.Argument(
        help="Variant profile, e.g. profiles/lab_moe.toml; only kind, \\[model] and \\[moe] may "
             "differ from the baseline.", show_default=False)],
    seeds: Annotated[int, typer.Option(
        min=1, help="Seeds per model: seed i runs both profiles with seed = base + i.")] = 3,
    steps: Annotated[int | None, typer.Option(
        min=1, help="Train this many steps instead of train.steps (warmup scales along).")
    ] = None,
    out: Annotated[Path | None, typer.Option(
        help="Folder for manifest.json, findings.md and the PNG plots (default "
             "HOME/compare/A-vs-B-TIME).",
        show_default=False)] = None,
    jobs: Annotated[int | None, typer.Option(
        min=1, help="Runs at once (default and maximum: the machine's cores).",
        show_default=False)] = None,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Compare two profiles honestly: same data, schedule and steps, several seeds, a verdict."""
    home = home_of(home)
    try:
        plan = make_plan(profile_a, profile_b, seeds=seeds, steps=steps, jobs=jobs)
    except CompareError as exc:
        fail(str(exc).splitlines())
    for note in plan.notes:
        console.print(styled(("note:", "dim"), f" {note}"))
    n_runs = 2 * len(plan.seeds)
    console.print(f"comparing {plan.baseline.name} ({plan.baseline.kind}) with "
                  f"{plan.variant.name} ({plan.variant.kind}): {plural(len(plan.seeds), 'seed')}, "
                  f"{plan.steps} steps, {plan.jobs} run(s) at a time x {plan.threads} "
                  f"thread(s); data in {home}")
    try:
        slots = _run(plan, home, n_runs)
    except KeyboardInterrupt:
        fail("interrupted: the runs still training were asked to stop", code=EXIT_STOPPED)
    except (CompareError, RunError, StoreError) as exc:
        fail(str(exc))
    baseline_ids, variant_ids = run_ids(slots)
    try:
        manifest = compare_runs(home, baseline_ids, variant_ids, extra=plan.describe())
    except (CompareError, StoreError) as exc:
        fail(str(exc))
    out_dir = out or default_out(home, profile_a, profile_b)
    try:
        plots = write_plots(home, manifest, out_dir)
    except (OSError, StoreError) as exc:
        plots = []
        console.print(styled(("note:", "yellow"), f" the plots were not drawn: {exc}"))
    manifest_path, findings_path = write_outputs(manifest, out_dir)
    if as_json:
        print_json(manifest)
    else:
        table = Table("metric", plan.baseline.name, plan.variant.name, "difference", box=None,
                      header_style="bold")
        for row in table_rows(manifest):
            table.add_row(*row)
        console.print(table)
        style = VERDICT_STYLE.get(manifest["verdict"], "bold")
        console.print(styled("verdict: ", (verdict_line(manifest), style)))
        console.print(styled(f"wrote {manifest_path}, {findings_path}"
                             + "".join(f", {p.name}" for p in plots)))
    failed = [s for s in slots if s.status != "completed"]
    if failed:
        fail([f"run {s.run_id} ({s.name}, {s.role} seed {s.seed}) ended {s.status}; see "
              f"`moedesk show {s.run_id}`" for s in failed], code=EXIT_FAILED)


def write_plots(home: Path, manifest: dict, out_dir: Path) -> list[Path]:
    """The comparison's PNGs beside manifest.json; their names go into the manifest."""
    from moedesk.plots import compare_pngs
    from moedesk.store import open_reader

    with open_reader(home) as reader:
        paths = compare_pngs(reader, manifest, out_dir)
    manifest["plots"] = [p.name for p in paths]
    return paths


def _run(plan, home: Path, n_runs: int):
    columns = [TextColumn("{task.description}", style="bold", markup=False), BarColumn(),
               TextColumn("{task.fields[done]}/{task.fields[runs]} runs", markup=False),
               TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("compare", total=n_runs * plan.steps, done=0, runs=n_runs)
        slots: dict[int, object] = {}

        def on_change(slot) -> None:
            slots[slot.run_id] = slot
            if slot.status == "queued":
                progress.console.print(f"started run {slot.run_id} ({slot.name}): {slot.role} "
                                       f"seed {slot.seed}")
            elif slot.status not in ("running",):
                progress.console.print(f"run {slot.run_id} ({slot.name}) {slot.status} at step "
                                       f"{slot.step}")
            done = sum(1 for s in slots.values() if s.status not in ("queued", "running"))
            progress.update(task, completed=sum(s.step for s in slots.values()), done=done)

        return execute(plan, home, on_change=on_change)
