"""ProfilePicker: choose a profile to launch; returns its path or None.

Each profile is validated in a thread worker with the CLI's loader, so a broken one
shows its first problem before anything is launched.
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

from moedesk.profiles import ProfileError, load_profile
from moedesk.profiles.edit import list_profiles


class ProfilePicker(ModalScreen[Path | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="picker-cancel")]

    @dataclass
    class Checked(Message):
        rows: list[tuple[Path, str]]

    def __init__(self, folder: Path):
        super().__init__(classes="dialog-screen")
        self.folder = folder
        self.paths = list_profiles(folder)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(f"New run from a profile in {self.folder.name}/", classes="dialog-title")
            yield OptionList(*[Option(p.name, id=str(i)) for i, p in enumerate(self.paths)]
                             or [Option("no profiles found", disabled=True)], id="profiles")

    def on_mount(self) -> None:
        self.query_one("#profiles", OptionList).focus()
        self._check()

    @work(thread=True, exclusive=True, group="picker-check", exit_on_error=False)
    def _check(self) -> None:
        rows = []
        for path in self.paths:
            try:
                p = load_profile(path)
                rows.append((path, f"{p.kind:<8} {p.train.steps} steps"))
            except ProfileError as exc:
                rows.append((path, "invalid: " + exc.lines[0].split(": ", 1)[-1]))
        self.post_message(self.Checked(rows))

    def on_profile_picker_checked(self, message: Checked) -> None:
        options = self.query_one("#profiles", OptionList)
        for i, (path, note) in enumerate(message.rows):
            options.replace_option_prompt(str(i), f"{path.name:<24} {note}")

    @on(OptionList.OptionSelected, "#profiles")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.paths[int(event.option.id)])
