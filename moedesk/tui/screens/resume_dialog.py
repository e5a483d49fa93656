"""ResumeDialog: pick the checkpoint a run continues from; returns its step or None.

The checkpoints are read in a thread worker (the store is never read on the UI
thread); the newest is highlighted, which is what `moedesk resume RUN` uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from moedesk.paths import db_path
from moedesk.store import Reader, StoreError
from moedesk.tui import format as fmt
from moedesk.tui.model import RunRow


class ResumeDialog(ModalScreen[int | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="resume-cancel")]

    @dataclass
    class Loaded(Message):
        checkpoints: list[dict]
        error: str | None

    def __init__(self, home: Path, row: RunRow):
        super().__init__(classes="dialog-screen")
        self.home = home
        self.row = row

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(f"Resume run {self.row.id} ({self.row.name}) from", classes="dialog-title")
            yield Static("Rows logged after the checkpoint are removed; the run continues "
                         "as if never interrupted.", classes="dialog-body")
            yield OptionList(id="checkpoints")

    def on_mount(self) -> None:
        self._load()

    @work(thread=True, exclusive=True, group="resume-checkpoints", exit_on_error=False)
    def _load(self) -> None:
        try:
            reader = Reader(db_path(self.home))
            try:
                found = reader.checkpoints(self.row.id)
            finally:
                reader.close()
            self.post_message(self.Loaded(found, None))
        except StoreError as exc:
            self.post_message(self.Loaded([], str(exc)))

    def on_resume_dialog_loaded(self, message: Loaded) -> None:
        options = self.query_one("#checkpoints", OptionList)
        if message.error or not message.checkpoints:
            options.add_option(Option(message.error or "no checkpoints: nothing to resume from",
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
