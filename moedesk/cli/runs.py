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
        "--from", help="Fork from another run's checkpoint: RUN or RUN@STEP.")] = None,
    stop_at: Annotated[int | None, typer.Option("--stop-at", hidden=True, min=1)] = None,
    nproc_per_node: Annotated[int | None, typer.Option(
        "--nproc-per-node", help="Training processes on this node (sets "
                                 "train.nproc_per_node).", show_default=False)] = None,
    nnodes: Annotated[int | None, typer.Option(
        "--nnodes", help="Nodes the run spans (sets train.nnodes); run this command once "
                         "per node.", show_default=False)] = None,
    node_rank: Annotated[int, typer.Option(
        "--node-rank", min=0, help="This node's rank, 0..nnodes-1; node 0 owns the run and "
                                   "its store, the others only run their ranks.")] = 0,
    rdzv_endpoint: Annotated[str | None, typer.Option(
        "--rdzv-endpoint", help="HOST:PORT the nodes meet at: node 0's address and a free "
                                "port (sets train.rdzv_endpoint).", show_default=False)] = None,
    home: HomeOpt = None,
) -> None:
    """Train a profile in a detached subprocess and follow it with a progress bar."""
    if stop_on is not None and stop_on not in ("warning", "critical", "never"):
        fail(f"--stop-on: got {stop_on!r}; allowed values: 'warning', 'critical', 'never'")
    overrides = parse_overrides(set_ or [])
    for key, value in (("train.nproc_per_node", nproc_per_node), ("train.nnodes", nnodes),
                       ("train.rdzv_endpoint", rdzv_endpoint)):
        if value is not None:
            overrides[key] = value
    try:
        loaded = load_profile(profile, overrides)
    except ProfileError as exc:
        fail(exc.lines)
    home = home_of(home)
    if node_rank >= loaded.train.nnodes:
        fail(f"--node-rank: got {node_rank}; must be < train.nnodes ({loaded.train.nnodes})")
    if node_rank > 0:
        if from_ or name or stop_on or stop_at:
            fail("--from, --name, --stop-on and --stop-at belong to node 0, which owns the run; "
                 "node " + str(node_rank) + " only runs its ranks")
        raise typer.Exit(_run_node(loaded, home, node_rank, detach))
    try:
        if from_:
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


def _run_node(profile, home, node_rank: int, detach: bool) -> int:
    """A node other than 0: start its ranks, wait for them, exit with their status."""
    from moedesk.runner.node import read_exit, start_node

    started = start_node(profile, home, node_rank)
    console.print(f"node {node_rank} of {profile.train.nnodes}: {profile.train.nproc_per_node} "
                  f"rank(s) joining {profile.train.rdzv_endpoint}; log in "
                  f"{started.folder / 'train.log'}", highlight=False)
    if detach:
        return 0
    try:
        started.process.wait()
    except KeyboardInterrupt:  # stop this node's ranks: every rank stops at the same step
        started.process.terminate()
        started.process.wait()
    outcome = read_exit(started.folder) or {"status": "crashed", "exit_code": None,
                                            "error": "the node supervisor died"}
    if outcome["status"] == "ok":
        console.print(f"node {node_rank}: ranks finished (exit code 0)", highlight=False)
        return EXIT_FOR_STATUS["completed"]
    console.print(f"node {node_rank}: {outcome['status']}: {outcome['error']}", highlight=False)
    return EXIT_FOR_STATUS.get(outcome["status"], EXIT_FOR_STATUS["failed"])


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
        console.print(f"  checkpoint step {c['step']}: {c['path']} ({c['size']} bytes)",
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
    at: Annotated[int | None, typer.Option(
        "--at", min=0, help="Resume from the checkpoint at this step (default: newest).")] = None,
    detach: Annotated[bool, typer.Option("--detach", help="Start and return at once.")] = False,
    home: HomeOpt = None,
) -> None:
    """Continue a run from its latest (or a chosen) checkpoint, exactly where it left off."""
    home = home_of(home)
    try:
        info, step = launch.resume_run(home, ref, step=at, stop_at=steps)
    except (launch.RunError, StoreError) as exc:
        fail(str(exc))
    console.print(f"resuming run {info.id} ({info.name}) from step {step}", highlight=False)
    if detach:
        return
    from moedesk.cli.follow import follow

    raise typer.Exit(follow(home, info.id))


__all__ = ["run", "list_runs", "show", "stop", "resume", "EXIT_FOR_STATUS"]
