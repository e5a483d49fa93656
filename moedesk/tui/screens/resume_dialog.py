"""ResumeDialog: pick the checkpoint a run continues from; returns its step or None.

The checkpoints are read with `reading.read_in_worker` (the store is never read on the
UI thread); the newest is highlighted, which is what `moedesk resume RUN` uses.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from moedesk.tui import format as fmt
from moedesk.tui.model import RunRow
from moedesk.tui.reading import read_in_worker


class ResumeDialog(ModalScreen[int | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="resume-cancel",
                        tooltip="Close without resuming")]

    @dataclass
    class Loaded(Message):
        checkpoints: list[dict] | None
        error: str | None

    def __init__(self, row: RunRow):
        super().__init__(classes="dialog-screen")
        self.row = row

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(Text(f"Resume run {self.row.id} ({self.row.name}) from"),
                         classes="dialog-title")
            yield Static("Rows logged after the checkpoint are removed; the run continues "
                         "as if never interrupted.", classes="dialog-body")
            yield OptionList(id="checkpoints")
            yield Static("enter resumes from the highlighted step · esc cancels",
                         classes="dialog-hint")

    def on_mount(self) -> None:
        self._load()

    def _load(self) -> None:
        run_id = self.row.id
        read_in_worker(self, lambda reader: reader.checkpoints(run_id), self.Loaded,
                       name="checkpoints", description="reading the checkpoints")

    def on_resume_dialog_loaded(self, message: Loaded) -> None:
        options = self.query_one("#checkpoints", OptionList)
        if message.error or not message.checkpoints:
            options.add_option(Option(Text(message.error or
                                           "no checkpoints: nothing to resume from"),
                                      disabled=True))
            return
        newest_first = list(reversed(message.checkpoints))
        options.add_options(
            Option(f"step {c['step']:>7}   {fmt.count(c.get('size'))}B", id=str(c["step"]))
            for c in newest_first)
        options.highlighted = 0
        options.focus()

    @on(OptionList.OptionSelected, "#checkpoints")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id))
