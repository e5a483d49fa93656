"""Following a run from the terminal: a Rich progress bar, alerts as they fire, the outcome.

Polls the store read-only every 0.2 s with cursors (only new rows). Ctrl-C asks the run
to stop gracefully; a second Ctrl-C kills it.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from moedesk.cli.app import EXIT_FOR_STATUS, EXIT_STOPPED, console, err_console
from moedesk.runner.launch import RunError, stop_run
from moedesk.stats import names
from moedesk.store import Reader, open_reader
from moedesk.store.runs import ACTIVE

POLL_S = 0.2
# what the progress line shows, in order: (metric, format); the poll fetches just these
STATUS_FIELDS = ((names.TRAIN_LOSS, "loss {:.4f}"), (names.FF_GOODNESS_DELTA, "delta {:.3f}"),
                 (names.VAL_LOSS, "val {:.4f}"), (names.VAL_PPL, "ppl {:.2f}"),
                 (names.FF_ACCURACY, "acc {:.3f}"), (names.TRAIN_TOKENS_PER_S, "{:,.0f} tok/s"),
                 (names.TRAIN_SAMPLES_PER_S, "{:,.0f} samples/s"))
SHOWN = [name for name, _ in STATUS_FIELDS]
SEVERITY_STYLE = {"info": "cyan", "warning": "yellow", "critical": "bold red"}


def print_alert(alert: dict, name: str) -> None:
    style = SEVERITY_STYLE.get(alert["severity"], "white")
    console.print(f"[{style}]{alert['severity'].upper()}[/] {name} step {alert['step']}: "
                  f"{alert['message']}", highlight=False)
    if alert.get("action"):
        console.print(f"    [dim]action:[/] {alert['action']}", highlight=False)


def _status_line(latest: dict[str, float]) -> str:
    return "  ".join(fmt.format(latest[name]) for name, fmt in STATUS_FIELDS if name in latest)


def follow(home: Path, run_id: int) -> int:
    """Show progress until the run ends; returns the exit code for its final status."""
    interrupts = {"count": 0}

    def on_sigint(*_):
        interrupts["count"] += 1
        try:
            stop_run(home, run_id, kill=interrupts["count"] > 1)
            what = "killing the run" if interrupts["count"] > 1 else \
                "stopping the run gracefully (Ctrl-C again to kill)"
            err_console.print(f"[yellow]{what}[/]")
        except RunError:
            pass

    previous = signal.signal(signal.SIGINT, on_sigint)
    reader = None
    deadline = time.monotonic() + 30
    while reader is None:
        try:
            reader = open_reader(home)
        except Exception:  # noqa: BLE001 - the database may not exist for a moment
            if time.monotonic() > deadline:
                raise
            time.sleep(POLL_S)
    try:
        return _follow(reader, run_id)
    finally:
        reader.close()
        signal.signal(signal.SIGINT, previous)


def _follow(reader: Reader, run_id: int) -> int:
    info = reader.run(run_id)
    cursor, alert_cursor, latest = 0, 0, {}
    columns = [TextColumn("[bold]{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[stats]}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(info.name, total=info.total_steps or 1, stats="starting")
        while True:
            info = reader.run(run_id)
            rows, cursor = reader.metrics_since(run_id, cursor, SHOWN)
            for _rowid, _step, name, value in rows:
                if value is not None:
                    latest[name] = value
                elif name == names.TRAIN_LOSS:
                    latest[name] = float("nan")
            for alert in reader.alerts(run_id, after_id=alert_cursor):
                alert_cursor = alert["id"]
                print_alert(alert, info.name)
            progress.update(task, completed=info.last_step, total=info.total_steps or 1,
                            stats=_status_line(latest) or info.status)
            if info.status not in ACTIVE:
                break
            time.sleep(POLL_S)
    color = {"completed": "green", "stopped": "yellow"}.get(info.status, "red")
    console.print(f"run {info.id} ({info.name}) [{color}]{info.status}[/] at step "
                  f"{info.last_step}/{info.total_steps}", highlight=False)
    if info.row.get("error") and info.status != "completed":
        err_console.print(info.row["error"], highlight=False, markup=False)
    return EXIT_FOR_STATUS.get(info.status, EXIT_STOPPED)
