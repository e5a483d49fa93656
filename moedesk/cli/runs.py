"""Run commands: run, runs, show, stop, resume. Each a few lines over runner/launch.py."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table

from moedesk.cli.app import (
    EXIT_FOR_STATUS,
    HomeOpt,
    JsonOpt,
    RunArg,
    age,
    app,
    console,
    fail,
    home_of,
    print_json,
)
from moedesk.paths import db_path
from moedesk.profiles import ProfileError, load_profile, parse_overrides
from moedesk.runner import launch
from moedesk.runner.checkpoints import CheckpointError, parse_at
from moedesk.stats import names
from moedesk.store import Reader, StoreError, open_reader


def _reader(home) -> Reader:
    """A read-only reader, after recording crashes of runs whose supervisor died."""
    try:
        if db_path(home).exists():
            launch.reconcile_crashed(home)
        return open_reader(home)
    except StoreError as exc:
        fail(str(exc))


@app.command()
def run(
    profile: Annotated[str, typer.Argument(help="Profile TOML file, e.g. profiles/dense.toml.")],
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a key: --set train.lr=1e-3 (repeatable).")] = None,
    name: Annotated[str | None, typer.Option(help="Run name (default PROFILE-ID).")] = None,
    detach: Annotated[bool, typer.Option("--detach", help="Start and return at once.")] = False,
    stop_on: Annotated[str | None, typer.Option(
        "--stop-on", help="Alert severity that stops the run: warning, critical or never "
                          "(default: the profile's health.stop_on).")] = None,
    from_: Annotated[str | None, typer.Option(
        "--from", help="Fork from another run's checkpoint: RUN, RUN@STEP or RUN@best.")] = None,
    init_from: Annotated[str | None, typer.Option(
        "--init-from", help="Start the weights (only) from a run's checkpoint: RUN, RUN@STEP "
                            "or RUN@best; dense -> topk upcycles.")] = None,
    stop_at: Annotated[int | None, typer.Option("--stop-at", hidden=True, min=1)] = None,
    home: HomeOpt = None,
) -> None:
    """Train a profile in a detached subprocess and follow it with a progress bar."""
    if from_ and init_from:
        fail("give one of --from (continue a run's whole state) and --init-from (its weights)")
    if stop_on is not None and stop_on not in ("warning", "critical", "never"):
        fail(f"--stop-on: got {stop_on!r}; allowed values: 'warning', 'critical', 'never'")
    try:
        loaded = load_profile(profile, parse_overrides(set_ or []))
    except ProfileError as exc:
        fail(exc.lines)
    home = home_of(home)
    try:
        if init_from:
            from moedesk.cli.init_from import start_from_weights

            started = start_from_weights(loaded, home, init_from, name=name, stop_on=stop_on,
                                         stop_at=stop_at)
        elif from_:
            started = launch.fork_run(loaded, home, from_, name=name, stop_on=stop_on,
                                      stop_at=stop_at)
        else:
            started = launch.start_run(loaded, home, name=name, stop_on=stop_on, stop_at=stop_at)
    except (launch.RunError, StoreError) as exc:
        fail(str(exc))
    console.print(f"started run {started.run_id} ({started.name}); data in {home}",
                  highlight=False)
    if detach:
        return
    from moedesk.cli.follow import follow

    raise typer.Exit(follow(home, started.run_id))


@app.command("runs")
def list_runs(as_json: JsonOpt = False, home: HomeOpt = None) -> None:
    """List every run with its status, progress, latest loss and health."""
    reader = _reader(home_of(home))
    runs, badges = reader.runs(), reader.worst_open_alert()
    loss = {r.id: reader.last_value(r.id, names.TRAIN_LOSS) for r in runs}
    if as_json:
        print_json([{"id": r.id, "name": r.name, "kind": r.kind, "status": r.status,
                     "step": r.last_step, "total_steps": r.total_steps, "loss": loss[r.id],
                     "health": badges.get(r.id, "ok"), "created_at": r.created_at}
                    for r in runs])
        return
    table = Table("id", "name", "kind", "status", "step", "loss", "health", "age",
                  box=None, header_style="bold")
    now = time.time()
    for r in runs:
        table.add_row(str(r.id), r.name, r.kind, r.status, f"{r.last_step}/{r.total_steps}",
                      "-" if loss[r.id] is None else f"{loss[r.id]:.4f}",
                      badges.get(r.id, "ok"), age(now - r.created_at))
    console.print(table if runs else "no runs yet: try `moedesk run profiles/tiny_dense.toml`")


@app.command()
def show(ref: RunArg, as_json: JsonOpt = False, home: HomeOpt = None) -> None:
    """Everything about one run: status, config, latest metrics, checkpoints, alerts."""
    reader = _reader(home_of(home))
    try:
        info = reader.run(ref)
    except StoreError as exc:
        fail(str(exc))
    latest = reader.latest_metrics(info.id)
    data = {k: v for k, v in info.row.items() if k != "config_json"}
    data.update(status=info.status, config=info.config,
                latest_metrics={k: {"step": s, "value": v} for k, (s, v) in sorted(latest.items())},
                checkpoints=reader.checkpoints(info.id), resumes=reader.resumes(info.id),
                alerts=reader.alerts(info.id))
    if as_json:
        print_json(data)
        return
    console.print(f"[bold]run {info.id}[/] {info.name}  kind {info.kind}  [bold]{info.status}[/]"
                  f"  step {info.last_step}/{info.total_steps}", highlight=False)
    for key in ("profile_path", "run_dir", "seed", "params_total", "params_active", "device",
                "parent_id", "parent_step", "resumed_from_step", "exit_code"):
        if data.get(key) is not None:
            console.print(f"  {key}: {data[key]}", highlight=False)
    if data.get("error"):
        console.print(f"  [red]error:[/] {data['error']}", highlight=False, markup=True)
    table = Table("metric", "step", "value", box=None, header_style="bold")
    for name, (step, value) in sorted(latest.items()):
        table.add_row(name, str(step), "NaN" if value is None else f"{value:.6g}")
    console.print(table)
    for c in data["checkpoints"]:
        score = "" if c.get("score") is None else f" = {c['score']:.6g}"
        best = f", best {c['metric']}{score}" if c.get("best") else ""
        console.print(f"  checkpoint step {c['step']}: {c['path']} ({c['size']} bytes{best})",
                      highlight=False)
    for a in data["alerts"]:
        state = "open" if a["cleared_step"] is None else f"cleared at {a['cleared_step']}"
        console.print(f"  {a['severity']} {a['rule']} step {a['step']} ({state}): {a['message']}",
                      highlight=False)


@app.command()
def stop(ref: RunArg,
         kill: Annotated[bool, typer.Option("--kill", help="SIGKILL now, no checkpoint.")] = False,
         home: HomeOpt = None) -> None:
    """Stop a run: it finishes its step, checkpoints and exits (--kill: at once)."""
    try:
        info = launch.stop_run(home_of(home), ref, kill=kill)
    except (launch.RunError, StoreError) as exc:
        fail(str(exc))
    console.print(f"{'killing' if kill else 'stopping'} run {info.id} ({info.name})",
                  highlight=False)


@app.command()
def resume(
    ref: RunArg,
    steps: Annotated[int | None, typer.Option(
        "--steps", min=1, help="Stop at this step (default: the profile's train.steps).")] = None,
    at: Annotated[str | None, typer.Option(
        "--at", help="Resume from the checkpoint at this step, or 'best' (default: newest).",
        show_default=False)] = None,
    detach: Annotated[bool, typer.Option("--detach", help="Start and return at once.")] = False,
    home: HomeOpt = None,
) -> None:
    """Continue a run from its latest (or a chosen) checkpoint, exactly where it left off."""
    home = home_of(home)
    try:
        info, step = launch.resume_run(home, ref, step=parse_at(at, "--at"), stop_at=steps)
    except (launch.RunError, StoreError, CheckpointError) as exc:
        fail(str(exc))
    console.print(f"resuming run {info.id} ({info.name}) from step {step}", highlight=False)
    if detach:
        return
    from moedesk.cli.follow import follow

    raise typer.Exit(follow(home, info.id))


__all__ = ["run", "list_runs", "show", "stop", "resume", "EXIT_FOR_STATUS"]
