"""`moedesk watch [--name N] [--tag T] -- CMD ARGS...`: any command as a supervised run.

A few lines over `launch.start_watch`. The command runs detached (it survives the
terminal); this command then prints its log as it grows, and its alerts, until it ends
(`--detach` returns at once). Ctrl-C stops the run gracefully (SIGTERM to the command's
process group), a second Ctrl-C kills it; closing the terminal leaves it running.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from moedesk.cli.app import (
    EXIT_FOR_STATUS,
    EXIT_STOPPED,
    HomeOpt,
    app,
    console,
    err_console,
    fail,
    home_of,
    styled,
)
from moedesk.cli.follow import print_alert
from moedesk.paths import train_log
from moedesk.runner import launch
from moedesk.store import StoreError, open_reader
from moedesk.store.runs import ACTIVE

POLL_S = 0.2


@app.command(context_settings={"allow_interspersed_args": False})
def watch(
    command: Annotated[list[str], typer.Argument(
        help="The command and its arguments, after --: moedesk watch -- python train.py.",
        show_default=False)],
    name: Annotated[str | None, typer.Option(help="Run name (default SCRIPT-ID).")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="A tag (repeatable).")] = None,
    cwd: Annotated[Path | None, typer.Option(
        "--cwd", help="Working directory of the command (default: here).")] = None,
    stop_on: Annotated[str | None, typer.Option(
        "--stop-on", help="Alert severity that stops the run: warning, critical (default) "
                          "or never.")] = None,
    detach: Annotated[bool, typer.Option("--detach", help="Start and return at once.")] = False,
    home: HomeOpt = None,
) -> None:
    """Run any command as a detached, supervised run; a moedesk.init inside joins it."""
    home = home_of(home)
    try:
        started = launch.start_watch(home, command, cwd, name=name, tags=tag or [],
                                     stop_on=stop_on)
    except (launch.RunError, StoreError) as exc:
        fail(str(exc))
    console.print(f"watching run {started.run_id} ({started.name}); data in {home}",
                  highlight=False)
    if detach:
        return
    raise typer.Exit(follow_log(home, started.run_id))


def follow_log(home: Path, run_id: int) -> int:
    """Print the run's log and alerts until it ends; the exit code of its final status."""
    interrupts = {"count": 0}

    def on_sigint(*_):
        interrupts["count"] += 1
        try:
            launch.stop_run(home, run_id, kill=interrupts["count"] > 1)
            err_console.print("killing the run" if interrupts["count"] > 1 else
                              "stopping the run (Ctrl-C again to kill)", style="yellow")
        except (launch.RunError, StoreError):
            pass

    previous = signal.signal(signal.SIGINT, on_sigint)
    offset, alert_cursor = 0, 0
    try:
        with open_reader(home) as reader:
            while True:
                info = reader.run(run_id)
                offset = _print_new(train_log(info.row["run_dir"]), offset)
                for alert in reader.alerts(run_id, after_id=alert_cursor):
                    alert_cursor = alert["id"]
                    print_alert(alert, info.name)
                if info.status not in ACTIVE:
                    break
                time.sleep(POLL_S)
            _print_new(train_log(info.row["run_dir"]), offset)
    finally:
        signal.signal(signal.SIGINT, previous)
    colour = {"completed": "green", "stopped": "yellow"}.get(info.status, "red")
    console.print(styled(f"run {info.id} ({info.name}) ", (info.status, colour),
                         f" (exit code {info.row['exit_code']})"
                         if info.row.get("exit_code") is not None else ""))
    if info.row.get("error") and info.status != "completed":
        err_console.print(info.row["error"], highlight=False, markup=False)
    return EXIT_FOR_STATUS.get(info.status, EXIT_STOPPED)


def _print_new(path: Path, offset: int) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return offset
    if data:
        sys.stdout.write(data.decode("utf-8", "replace"))
        sys.stdout.flush()
    return offset + len(data)
