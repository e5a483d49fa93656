"""Run commands: run, runs, show, stop, resume. Each a few lines over runner/launch.py."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from moedesk.cli.app import (
    EXIT_FAILED,
    EXIT_FOR_STATUS,
    HomeOpt,
    JsonOpt,
    LatestRunArg,
    RunArg,
    age,
    app,
    console,
    duration,
    err_console,
    fail,
    home_of,
    print_json,
    styled,
    when,
)
from moedesk.compare.finals import TAIL_FRACTION, run_finals
from moedesk.profiles import ProfileError, load_profile, parse_overrides
from moedesk.runner import launch, stopping
from moedesk.runner.checkpoints import CheckpointError, parse_at
from moedesk.stats import names
from moedesk.store import Reader, StoreError, open_reader
from moedesk.store.filters import FilterError, parse_filter

EveryOpt = Annotated[float | None, typer.Option(
    "--progress-every", metavar="SECONDS", min=0.5,
    help="Seconds between plain progress lines when stdout is not a terminal (default 10).",
    show_default=False)]


def _reader(home) -> Reader:
    """A read-only reader, after recording crashes of runs whose supervisor died."""
    try:
        return open_reader(home)
    except StoreError as exc:
        fail(str(exc))


def say(text: str) -> None:
    """Print a line holding user data (run names, paths): never parsed as markup."""
    console.print(text, highlight=False, markup=False, soft_wrap=True)


@app.command()
def run(
    profile: Annotated[str, typer.Argument(help="Profile TOML file, e.g. profiles/dense.toml.")],
    set_: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE", help="Override a key: --set train.lr=1e-3 (repeatable).")
    ] = None,
    name: Annotated[str | None, typer.Option(
        metavar="NAME", help="Run name, unique in the home (default PROFILE-ID).")] = None,
    detach: Annotated[bool, typer.Option("--detach", help="Start and return at once.")] = False,
    stop_on: Annotated[str | None, typer.Option(
        "--stop-on", metavar="SEVERITY", help="Alert severity that stops the run: warning, critical or never "
                          "(default: the profile's health.stop_on).")] = None,
    from_: Annotated[str | None, typer.Option(
        "--from", metavar="RUN[@STEP|@best]",
        help="Fork from another run's checkpoint: RUN, RUN@STEP or RUN@best.")] = None,
    init_from: Annotated[str | None, typer.Option(
        "--init-from", help="Start the weights (only) from a run's checkpoint: RUN, RUN@STEP "
                            "or RUN@best; dense -> topk upcycles.")] = None,
    stop_at: Annotated[int | None, typer.Option("--stop-at", hidden=True, min=1)] = None,
    every: EveryOpt = None,
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
    """Train a profile in a detached subprocess and follow it with a progress bar.

    Ctrl-C stops the run gracefully (it checkpoints); a second Ctrl-C kills it. When
    stdout is not a terminal a plain progress line is printed every 10 s instead.
    """
    if from_ and init_from:
        fail("give one of --from (continue a run's whole state) and --init-from (its weights)")
    if stop_on is not None and stop_on not in ("warning", "critical", "never"):
        fail(f"--stop-on: got {stop_on!r}; allowed values: 'warning', 'critical', 'never'")
    try:
        overrides = parse_overrides(set_ or [])  # a bad --set is a ProfileError too
        for key, value in (("train.nproc_per_node", nproc_per_node), ("train.nnodes", nnodes),
                           ("train.rdzv_endpoint", rdzv_endpoint)):
            if value is not None:
                overrides[key] = value
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
    say(f"started run {started.run_id} ({started.name}); data in {home}")
    if detach:
        return
    from moedesk.cli.follow import follow

    raise typer.Exit(follow(home, started.run_id, every))


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
def list_runs(
    tag: Annotated[list[str] | None, typer.Option(
        "--tag", metavar="TAG", help="Only runs with this tag (repeatable: all of them).")] = None,
    filter_: Annotated[str | None, typer.Option(
        "--filter", metavar="FILTER", help="tag:T status:S kind:K name:N, -term to negate, "
        "words to match anywhere; e.g. 'tag:lab status:failed,crashed'.")] = None,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """List every run with its status, progress, latest loss, health and tags."""
    try:
        wanted = parse_filter(" ".join([*(f"tag:{t}" for t in tag or []), filter_ or ""]))
    except FilterError as exc:
        fail(str(exc))
    reader = _reader(home_of(home))
    tags = reader.tags()
    runs = [r for r in reader.runs() if wanted.matches(
        name=r.name, kind=r.kind, status=r.status, tags=tags.get(r.id, ()))]
    badges = reader.worst_open_alert()
    loss = {r.id: reader.last_value(r.id, names.TRAIN_LOSS) for r in runs}
    if as_json:
        print_json([{"id": r.id, "name": r.name, "kind": r.kind, "status": r.status,
                     "step": r.last_step, "total_steps": r.total_steps, "loss": loss[r.id],
                     "health": badges.get(r.id, "ok"), "created_at": r.created_at,
                     "tags": tags.get(r.id, []), "note": r.row.get("note")}
                    for r in runs])
        return
    if not runs:
        console.print("no runs match the filter" if wanted else
                      "no runs yet: try `moedesk run profiles/quickstart.toml`")
        return
    table = Table("id", "name", "kind", "status", "step", "loss", "health", "age", "tags",
                  box=None, header_style="bold")
    # what identifies a run is never cut; tags give way first, then the name wraps
    for column in table.columns[:8]:
        column.no_wrap = True
    table.columns[8].overflow = "ellipsis"
    now = time.time()
    for r in runs:
        table.add_row(str(r.id), Text(r.name), r.kind, r.status, f"{r.last_step}/{r.total_steps}",
                      "-" if loss[r.id] is None else f"{loss[r.id]:.4f}",
                      badges.get(r.id, "ok"), age(now - r.created_at),
                      " ".join(tags.get(r.id, [])))
    console.print(table)


def _show_lines(info, data: dict, tags: list[str], finals: dict) -> None:
    console.print(styled((f"run {info.id}", "bold"), f" {info.name}  kind {info.kind}  ",
                         (info.status, "bold"), f"  step {info.last_step}/{info.total_steps}"))
    if info.row.get("note"):
        console.print(styled("  note: ", (info.row["note"], "italic")))
    if tags:
        console.print(styled("  tags: ", (" ".join(tags), "cyan")))
    for key in ("profile_path", "run_dir", "seed", "params_total", "params_active", "device",
                "parent_id", "parent_step", "resumed_from_step", "exit_code"):
        if data.get(key) is not None:
            console.print(f"  {key}: {data[key]}")
    started, ended = info.started_at, info.ended_at
    console.print(f"  created: {when(info.created_at)}  started: {when(started)}  "
                  f"ended: {when(ended)}" + (f"  ({duration(ended - started)})"
                                             if started and ended else ""))
    if data.get("error"):
        console.print(styled(("  error: ", "red"), data["error"]))
    if finals and info.status not in ("queued", "running"):
        # the compare views' own definition (moedesk.compare.finals), labelled as they are
        console.print("  " + "  ".join(f"{label} {value:.4g}" for label, value in finals.items()
                                       if value is not None)
                      + f"  (train loss and imbalance: mean of the last "
                        f"{TAIL_FRACTION:.0%} of logged steps)", soft_wrap=True)


@app.command()
def show(ref: LatestRunArg = None, as_json: JsonOpt = False, home: HomeOpt = None) -> None:
    """Everything about one run: status, note, tags, times, latest metrics, checkpoints, alerts."""
    reader = _reader(home_of(home))
    try:
        info = reader.run(ref) if ref is not None else reader.latest_run()
    except StoreError as exc:
        fail(str(exc))
    latest = reader.latest_metrics(info.id)
    tags = reader.tags(info.id).get(info.id, [])
    finals = run_finals(reader, info.id)
    data = {k: v for k, v in info.row.items() if k != "config_json"}
    data.update(status=info.status, config=info.config, tags=tags, finals=finals,
                latest_metrics={k: {"step": s, "value": v} for k, (s, v) in sorted(latest.items())},
                checkpoints=reader.checkpoints(info.id), resumes=reader.resumes(info.id),
                alerts=reader.alerts(info.id))
    if as_json:
        print_json(data)
        return
    _show_lines(info, data, tags, finals)
    table = Table("metric", "step", "value", box=None, header_style="bold")
    for name, (step, value) in sorted(latest.items()):
        table.add_row(name, str(step), "NaN" if value is None else f"{value:.6g}")
    console.print(table)
    for c in data["checkpoints"]:
        score = "" if c.get("score") is None else f" = {c['score']:.6g}"
        best = f", best {c['metric']}{score}" if c.get("best") else ""
        console.print(f"  checkpoint step {c['step']}: {c['path']} ({c['size']:,} bytes{best})")
    for a in data["alerts"]:
        state = "open" if a["cleared_step"] is None else f"cleared at {a['cleared_step']}"
        console.print(f"  {a['severity']} {a['rule']} step {a['step']} ({state}): {a['message']}")


@app.command()
def stop(ref: RunArg,
         kill: Annotated[bool, typer.Option("--kill", help="SIGKILL now, no checkpoint.")] = False,
         wait: Annotated[bool, typer.Option(
             "--wait/--no-wait", help="Wait for the run to end and report its checkpoint "
                                      "(default), or return once the stop is acknowledged.")
         ] = True,
         timeout: Annotated[float, typer.Option(
             "--timeout", min=0, help="Seconds to wait for the end.")] = stopping.END_TIMEOUT_S,
         home: HomeOpt = None) -> None:
    """Stop a run: it finishes its step, checkpoints and exits (--kill: at once).

    Says when the run's supervisor did not acknowledge the stop (a frozen supervisor),
    and the step the final checkpoint was written at."""
    try:
        out = stopping.stop_and_wait(home_of(home), ref, kill=kill, wait=wait, timeout=timeout)
    except (launch.RunError, StoreError) as exc:
        fail(str(exc))
    info = out.info
    label = f"run {info.id} ({info.name})"
    if out.recorded is not None:
        say(f"{label} had already ended: {out.recorded.reason}; recorded it as"
            f" {out.recorded.status}")
        return
    if out.ack is None and not out.ended_before_ack:
        if kill:
            final = out.final.status if out.final else "stopped"
            say(f"killed {label}: its supervisor did not acknowledge within"
                f" {stopping.ACK_TIMEOUT_S:.0f} s (unresponsive), so it was killed too;"
                f" recorded as {final}")
            return
        fail(f"stop requested for {label}, but its supervisor (pid"
             f" {info.row['supervisor_pid']}) did not acknowledge it within"
             f" {stopping.ACK_TIMEOUT_S:.0f} s: it is unresponsive (stopped, frozen or hung)."
             " The run stops when the supervisor runs again; `moedesk stop"
             f" {info.id} --kill` ends it now", code=EXIT_FAILED)
    if out.ack is not None:
        say(f"{'killing' if kill else 'stopping'} {label}: requested at step {out.ack['step']}")
    final = out.final
    if final is None:
        if wait:
            fail(f"{label} is still stopping after {timeout:.0f} s (finishing its step);"
                 f" `moedesk show {info.id}` tells when it has", code=EXIT_FAILED)
        return
    ckpt = out.checkpoint
    where = (f"; checkpoint written at step {ckpt['step']}: {ckpt['path']}" if ckpt
             and ckpt["step"] == final.last_step else
             f"; its newest checkpoint is at step {ckpt['step']}: {ckpt['path']}" if ckpt
             else "; no checkpoint")
    say(f"{label} {final.status} at step {final.last_step}{where}")


@app.command()
def resume(
    ref: RunArg,
    steps: Annotated[int | None, typer.Option(
        "--steps", metavar="N", min=1,
        help="Stop at this step, at most the run's train.steps (a resume never lengthens a"
             " run; fork it with --from to train on).")] = None,
    at: Annotated[str | None, typer.Option(
        "--at", metavar="STEP|best",
        help="Resume from the checkpoint at this step, or 'best' (default: the newest the"
             " stored rows reach).", show_default=False)] = None,
    detach: Annotated[bool, typer.Option("--detach", help="Start and return at once.")] = False,
    every: EveryOpt = None,
    home: HomeOpt = None,
) -> None:
    """Continue a run from its latest (or a chosen) checkpoint, exactly where it left off."""
    home = home_of(home)
    try:
        done = launch.resume(home, ref, step=parse_at(at, "--at"), stop_at=steps)
    except (launch.RunError, StoreError, CheckpointError) as exc:
        fail(str(exc))
    info = done.info
    say(f"resuming run {info.id} ({info.name}) from step {done.step}")
    if done.gap:
        err_console.print(f"warning: steps {done.gap[0]}..{done.gap[1]} are missing from the"
                          " stored curves (no checkpoint could restore them); recorded in"
                          " `resumes`", highlight=False, markup=False)
    if detach:
        return
    from moedesk.cli.follow import follow

    raise typer.Exit(follow(home, info.id, every))


__all__ = ["run", "list_runs", "show", "stop", "resume", "EXIT_FOR_STATUS"]
