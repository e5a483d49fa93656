"""WatchDialog: run any command as a supervised run, the TUI's `moedesk watch -- CMD`.

Two fields: the command line (split as a POSIX shell would, `shlex`, but not run by a
shell: no pipes, globs or `$VAR`; write `bash -c '...'` for those) and the working
directory (default: where moedesk was started). Enter checks both with the runner's own
rule (`launch.check_watch`) and says what is wrong under the fields, or returns
(argv, folder); the app then starts the run (`launch.start_watch`) in a worker.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from moedesk.runner.launch import RunError, check_watch

WatchRequest = tuple[list[str], Path]


def parse_command(line: str) -> list[str]:
    """The argv of a command line; RunError on an unclosed quote."""
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise RunError(f"watch: cannot read the command line ({exc})") from None


class WatchDialog(ModalScreen[WatchRequest | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="watch-cancel",
                        tooltip="Close without starting anything")]

    def __init__(self, cwd: str | Path | None = None):
        super().__init__(classes="dialog-screen")
        self.cwd = str(cwd or os.getcwd())

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static("Watch a command", classes="dialog-title")
            yield Static("Runs it detached as a supervised run: its output goes to the run's "
                         "log, its exit code decides the status, a moedesk.init inside joins "
                         "the run.", classes="dialog-body")
            yield Static("command", classes="dialog-label")
            yield Input(placeholder="python train.py --lr 3e-4", id="watch-command")
            yield Static("working directory", classes="dialog-label")
            yield Input(value=self.cwd, id="watch-cwd")
            yield Static(id="watch-error", classes="dialog-error")
            yield Static("enter starts · tab moves between the fields · esc cancels",
                         classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one("#watch-command", Input).focus()

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        command = self.query_one("#watch-command", Input).value
        cwd = self.query_one("#watch-cwd", Input).value.strip()
        try:
            argv = parse_command(command)
            if not argv:
                raise RunError("type the command to run, e.g. python train.py")
            argv, folder = check_watch(argv, cwd or self.cwd)
        except RunError as exc:
            self.query_one("#watch-error", Static).update(
                Text(str(exc).removeprefix("watch: ")))
            return
        self.dismiss((argv, folder))
