"""Following a run from the terminal: progress, alerts as they fire, the outcome.

Polls the store read-only every 0.2 s with cursors (only new rows). At a terminal it
draws a Rich progress bar; otherwise (nohup, CI, `> log`) it prints a plain progress
line every `every` seconds. Both show the one ETA of `moedesk.runner.eta` (smoothed
from the recent `sys/step_s`). Ctrl-C asks the run to stop gracefully; a second
Ctrl-C kills it. Run names, values and alerts are data: never parsed as markup.
"""

from __future__ import annotations

import signal
import time
from collections import deque
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from moedesk.cli.app import EXIT_FOR_STATUS, EXIT_STOPPED, console, duration, err_console, styled
from moedesk.runner.eta import WINDOW, eta_seconds, step_seconds
from moedesk.runner.launch import RunError, stop_run
from moedesk.stats import names
from moedesk.store import Reader, RunInfo, open_reader
from moedesk.store.runs import ACTIVE

POLL_S = 0.2
PLAIN_EVERY_S = 10.0  # seconds between plain progress lines when stdout is not a terminal
# what the progress line shows, in order: (metric, format); the poll fetches just these
STATUS_FIELDS = ((names.TRAIN_LOSS, "loss {:.4f}"), (names.FF_GOODNESS_DELTA, "delta {:.3f}"),
                 (names.VAL_LOSS, "val {:.4f}"), (names.VAL_PPL, "ppl {:.2f}"),
                 (names.FF_ACCURACY, "acc {:.3f}"), (names.TRAIN_TOKENS_PER_S, "{:,.0f} tok/s"),
                 (names.TRAIN_SAMPLES_PER_S, "{:,.0f} samples/s"))
STEP_TIME = names.SYS_STEP_S  # what the ETA is smoothed from
SHOWN = [name for name, _ in STATUS_FIELDS] + [STEP_TIME]
SEVERITY_STYLE = {"info": "cyan", "warning": "yellow", "critical": "bold red"}


def print_alert(alert: dict, name: str) -> None:
    style = SEVERITY_STYLE.get(alert["severity"], "white")
    console.print(styled((alert["severity"].upper(), style),
                         f" {name} step {alert['step']}: {alert['message']}"))
    if alert.get("action"):
        console.print(styled(("    action:", "dim"), f" {alert['action']}"))


def _status_line(latest: dict[str, float]) -> str:
    return "  ".join(fmt.format(latest[name]) for name, fmt in STATUS_FIELDS if name in latest)


def timing_text(info: RunInfo, samples) -> str:
    """'45 ms/step  ETA 3m12s', from the one smoothed estimate."""
    per_step = step_seconds(samples)
    if per_step is None:
        return "ETA -"
    eta = eta_seconds(info.last_step, info.total_steps, samples)
    speed = f"{per_step * 1000:.0f} ms/step" if per_step < 10 else f"{per_step:.1f} s/step"
    return f"{speed}  ETA {duration(eta)}"


def follow(home: Path, run_id: int, every: float | None = None) -> int:
    """Show progress until the run ends; returns the exit code for its final status.

    `every`: seconds between plain lines when stdout is not a terminal."""
    interrupts = {"count": 0}

    def on_sigint(*_):
        interrupts["count"] += 1
        try:
            stop_run(home, run_id, kill=interrupts["count"] > 1)
            what = "killing the run" if interrupts["count"] > 1 else \
                "stopping the run gracefully (Ctrl-C again to kill)"
            err_console.print(what, style="yellow")
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
        return _follow(reader, run_id, PLAIN_EVERY_S if every is None else every)
    finally:
        reader.close()
        signal.signal(signal.SIGINT, previous)


class _Poll:
    """New metric rows and alerts of one run since the last call (cursors)."""

    def __init__(self, reader: Reader, run_id: int):
        self.reader, self.run_id = reader, run_id
        self.cursor, self.alert_cursor = 0, 0
        self.latest: dict[str, float] = {}
        self.samples: deque[tuple[int, float]] = deque(maxlen=WINDOW)

    def __call__(self) -> tuple[RunInfo, list[dict]]:
        info = self.reader.run(self.run_id)
        rows, self.cursor = self.reader.metrics_since(self.run_id, self.cursor, SHOWN)
        for _rowid, step, name, value in rows:
            if name == STEP_TIME:
                if value is not None:
                    self.samples.append((step, value))
            elif value is not None:
                self.latest[name] = value
            elif name == names.TRAIN_LOSS:
                self.latest[name] = float("nan")
        alerts = self.reader.alerts(self.run_id, after_id=self.alert_cursor)
        if alerts:
            self.alert_cursor = alerts[-1]["id"]
        return info, alerts


def _follow(reader: Reader, run_id: int, every: float) -> int:
    poll = _Poll(reader, run_id)
    info = reader.run(run_id)
    if console.is_terminal:
        info = _follow_bar(poll, info)
    else:
        info = _follow_lines(poll, info, every)
    color = {"completed": "green", "stopped": "yellow"}.get(info.status, "red")
    console.print(styled(f"run {info.id} ({info.name}) ", (info.status, color),
                         f" at step {info.last_step}/{info.total_steps}"))
    if info.row.get("error") and info.status != "completed":
        err_console.print(info.row["error"])
    return EXIT_FOR_STATUS.get(info.status, EXIT_STOPPED)


def _follow_bar(poll: _Poll, info: RunInfo) -> RunInfo:
    columns = [TextColumn("{task.description}", style="bold", markup=False), BarColumn(),
               TextColumn("{task.completed}/{task.total}", markup=False),
               TextColumn("{task.fields[stats]}", markup=False), TimeElapsedColumn(),
               TextColumn("{task.fields[timing]}", markup=False)]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(info.name, total=info.total_steps or 1, stats="starting",
                                 timing="ETA -")
        while True:
            info, alerts = poll()
            for alert in alerts:
                print_alert(alert, info.name)
            progress.update(task, completed=info.last_step, total=info.total_steps or 1,
                            stats=_status_line(poll.latest) or info.status,
                            timing=timing_text(info, poll.samples))
            if info.status not in ACTIVE:
                return info
            time.sleep(POLL_S)


def _follow_lines(poll: _Poll, info: RunInfo, every: float) -> RunInfo:
    """Not a terminal: a plain line every `every` seconds (and alerts as they fire)."""
    next_line = time.monotonic() + every
    while True:
        info, alerts = poll()
        for alert in alerts:
            print_alert(alert, info.name)
        if info.status not in ACTIVE:
            return info
        if time.monotonic() >= next_line:
            total = info.total_steps or 0
            share = f" ({info.last_step / total:.0%})" if total else ""
            console.print(f"{time.strftime('%H:%M:%S')} {info.name} {info.status} step "
                          f"{info.last_step}/{total}{share}  "
                          + "  ".join(filter(None, [_status_line(poll.latest),
                                                    timing_text(info, poll.samples)])),
                          soft_wrap=True)
            next_line = time.monotonic() + every
        time.sleep(POLL_S)
