"""ProfilePicker: choose a profile to launch; returns its path or None.

Each profile is validated in a thread worker (`reading.run_in_worker`) with the CLI's
loader, so a broken one shows its first problem before anything is launched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from moedesk.profiles import ProfileError, load_profile
from moedesk.profiles.edit import list_profiles
from moedesk.tui.reading import run_in_worker


class ProfilePicker(ModalScreen[Path | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="picker-cancel",
                        tooltip="Close without launching")]

    @dataclass
    class Checked(Message):
        rows: list[tuple[Path, str]]

    def __init__(self, folder: Path):
        super().__init__(classes="dialog-screen")
        self.folder = folder
        self.paths = list_profiles(folder)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(Text(f"New run from a profile in {self.folder.name}/"),
                         classes="dialog-title")
            yield OptionList(*[Option(Text(p.name), id=str(i)) for i, p in enumerate(self.paths)]
                             or [Option(Text(f"no profiles found in {self.folder}"),
                                        disabled=True)], id="profiles")
            yield Static("enter launches a run from it · esc cancels",
                         classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one("#profiles", OptionList).focus()
        self._check()

    def _check(self) -> None:
        paths = list(self.paths)

        def check() -> Message:
            rows = []
            for path in paths:
                try:
                    p = load_profile(path)
                    rows.append((path, f"{p.kind:<8} {p.train.steps} steps"))
                except ProfileError as exc:
                    rows.append((path, "invalid: " + exc.lines[0].split(": ", 1)[-1]))
            return self.Checked(rows)

        run_in_worker(self, check, name="picker", description="checking the profiles")

    def on_profile_picker_checked(self, message: Checked) -> None:
        options = self.query_one("#profiles", OptionList)
        for i, (path, note) in enumerate(message.rows):
            options.replace_option_prompt(str(i), Text(f"{path.name:<24} {note}"))

    @on(OptionList.OptionSelected, "#profiles")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.paths[int(event.option.id)])
