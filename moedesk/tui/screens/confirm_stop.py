"""ConfirmStop: ask before stopping a run; returns "graceful", "kill" or None."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from moedesk.tui.model import RunRow


class ConfirmStop(ModalScreen[str | None]):
    BINDINGS = [
        Binding("escape", "dismiss(None)", "Cancel", id="stop-cancel",
                tooltip="Keep the run going"),
        Binding("y", "choose('graceful')", "Stop", id="stop-graceful",
                tooltip="Finish the step, write a checkpoint, exit (resume continues exactly)"),
        Binding("k", "choose('kill')", "Kill", id="stop-kill",
                tooltip="SIGKILL now, no checkpoint"),
    ]

    def __init__(self, row: RunRow):
        super().__init__(classes="dialog-screen")
        self.row = row

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(Text(f"Stop run {self.row.id} ({self.row.name})?"),
                         classes="dialog-title")
            yield Static("Stop: the trainer finishes its step, writes a checkpoint and exits "
                         "(resume continues exactly). Kill: SIGKILL now, no checkpoint.",
                         classes="dialog-body")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Stop (y)", id="graceful", variant="warning")
                yield Button("Kill (k)", id="kill", variant="error")
                yield Button("Cancel", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None if event.button.id == "cancel" else event.button.id)

    def action_choose(self, how: str) -> None:
        self.dismiss(how)
