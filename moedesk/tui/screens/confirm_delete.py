"""ConfirmDelete: ask before removing runs (`moedesk rm`); returns True or None."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from moedesk.tui.model import RunRow

LISTED = 6  # runs named one per line; the rest are counted


class ConfirmDelete(ModalScreen[bool | None]):
    BINDINGS = [
        Binding("escape", "dismiss(None)", "Cancel", id="delete-cancel",
                tooltip="Keep the runs"),
        Binding("y", "dismiss(True)", "Delete", id="delete-yes",
                tooltip="Remove the runs' rows, checkpoints and folders (cannot be undone)"),
    ]

    def __init__(self, rows: list[RunRow]):
        super().__init__(classes="dialog-screen")
        self.rows = rows

    def compose(self) -> ComposeResult:
        many = len(self.rows) > 1
        title = f"Delete {len(self.rows)} runs?" if many else \
            f"Delete run {self.rows[0].id} ({self.rows[0].name})?"
        with Vertical(classes="dialog"):
            yield Static(Text(title), classes="dialog-title")  # names are data, never markup
            if many:
                names = [f"{r.id}  {r.name}  {r.status}" for r in self.rows[:LISTED]]
                if len(self.rows) > LISTED:
                    names.append(f"... and {len(self.rows) - LISTED} more")
                yield Static(Text("\n".join(names)), classes="dialog-body")
            yield Static("Removes the rows, checkpoints and run folder (like `moedesk rm`). "
                         "This cannot be undone; the id is never given out again.",
                         classes="dialog-body")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Delete (y)", id="delete", variant="error")
                yield Button("Cancel", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(True if event.button.id == "delete" else None)
