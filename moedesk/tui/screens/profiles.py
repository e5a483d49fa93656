"""ProfilesScreen: list profiles/, edit a profile's keys with live validation, save, launch.

Enter on a key opens it in the edit line; every keystroke is validated with the CLI's
own rules and messages (`ProfileDocument.validate`). Ctrl+S saves through tomlkit
(comments and layout kept), Ctrl+L saves and launches, Ctrl+Z drops unsaved edits.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Input, OptionList, Static
from textual.widgets.option_list import Option

from moedesk.profiles import ProfileError
from moedesk.profiles.edit import ProfileDocument, list_profiles
from moedesk.tui.widgets.key_footer import KeyFooter
from moedesk.tui.widgets.profile_list import ProfileList
from moedesk.tui.widgets.profile_table import ProfileTable
from moedesk.tui.widgets.title_header import TitleHeader


def without_path(line: str, path: Path) -> str:
    """A CLI problem line (`FILE: key: message`) without the file, named above it."""
    prefix = f"{path}: "
    return line[len(prefix):] if line.startswith(prefix) else line


class ProfilesScreen(Screen):
    BINDINGS = [
        Binding("escape", "back", "Back", id="profiles-back",
                tooltip="Back (in the edit line: put the old value back)"),
        Binding("ctrl+s", "save", "Save", id="profile-save",
                tooltip="Save the profile (refused while it is invalid)"),
        Binding("ctrl+l", "launch", "Launch", id="profile-launch",
                tooltip="Save the profile and launch a run from it"),
        Binding("ctrl+z", "revert", "Revert", id="profile-revert",
                tooltip="Drop the unsaved edits"),
    ]

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = Path(folder)
        self.paths = list_profiles(self.folder)
        self.doc: ProfileDocument | None = None
        self.problems: dict[str, str] = {}
        self.problem_lines: list[str] = []
        self._editing = None

    def compose(self) -> ComposeResult:
        yield TitleHeader()
        with Horizontal(id="profiles-body"):
            # file names are data: Text, never markup
            yield ProfileList(*[Option(Text(p.name), id=p.name) for p in self.paths]
                              or [Option(Text(f"no profiles in {self.folder}"), disabled=True)],
                              id="profile-list")
            with Vertical(id="profile-editor"):
                yield ProfileTable(id="profile-table")
                yield Static(id="field-help")
                with Horizontal(id="edit-line"):
                    yield Static("", id="edit-key")
                    yield Input(id="edit-value", placeholder="select a key and press enter")
                yield Static(id="profile-problems")
        yield KeyFooter(compact=True)

    def on_mount(self) -> None:
        self.title = "moedesk"
        self.sub_title = f"profiles · {self.folder.name}/"
        opened = bool(self.paths) and self.open_profile(self.paths[0])
        if self.paths:
            self.query_one("#profile-list", OptionList).highlighted = 0
        # an unreadable first file: the list has focus, to pick another
        self.query_one(ProfileTable if opened else ProfileList).focus()

    # loading and validating

    def open_profile(self, path: Path) -> bool:
        """Open `path` in the editor; a file that cannot be read shows why, in the editor."""
        self._editing = None
        self.query_one("#edit-key", Static).update("")
        box = self.query_one("#edit-value", Input)
        box.value = ""
        try:
            self.doc = ProfileDocument(path)
        except ProfileError as exc:
            self.doc = None
            self._show_unreadable(path, exc.lines)
            return False
        box.disabled = False
        self.revalidate()
        return True

    def _show_unreadable(self, path: Path, lines: list[str]) -> None:
        self.problems, self.problem_lines = {}, lines
        self.query_one(ProfileTable).clear()
        self.query_one("#edit-value", Input).disabled = True
        self.query_one("#field-help", Static).update(Text(
            "Fix the file in an editor, then press enter on it in the list to read it again.",
            style="italic"))
        status = Text()
        status.append(path.name, style="bold")
        status.append("  cannot be opened; `moedesk run` says:", style="#ff5f5f")
        for line in lines:
            status.append("\n  " + without_path(line, path), style="#ff5f5f")
        self.query_one("#profile-problems", Static).update(status)

    def revalidate(self) -> None:
        doc = self.doc
        if doc is None:
            return
        _, self.problems, self.problem_lines = doc.validate()
        self.query_one(ProfileTable).show(doc, self.problems)
        self._update_status()

    def _update_status(self) -> None:
        doc = self.doc
        if doc is None:
            return
        status = Text()
        status.append(doc.path.name, style="bold")
        status.append(f"  ({len(doc.edits)} unsaved edit(s))" if doc.dirty else "  (saved)",
                      style="#ffd75f" if doc.dirty else "dim")
        if self.problem_lines:
            status.append(f"  {len(self.problem_lines)} problem(s)", style="#ff5f5f")
        else:
            status.append("  valid", style="#5fd75f")
        status.append("  ·  tab: files, keys, edit line", style="dim")
        if self.problem_lines:
            status.append("\nas `moedesk run` reports them:", style="#ff5f5f")
            for line in self.problem_lines:
                status.append("\n  " + without_path(line, doc.path), style="#ff5f5f")
        self.query_one("#profile-problems", Static).update(status)
        self._show_help()

    @on(OptionList.OptionSelected, "#profile-list")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        path = self.folder / str(event.option.id)
        if self.doc is not None and self.doc.dirty and path != self.doc.path:
            self.app.notify("Unsaved edits: save (ctrl+s) or revert (ctrl+z) first.",
                            title="profiles", severity="warning")
            return
        if self.open_profile(path):
            self.set_focus(self.query_one(ProfileTable))

    # editing one key

    @on(DataTable.RowHighlighted, "#profile-table")
    def _show_help(self) -> None:
        spec = self.query_one(ProfileTable).spec_at_cursor()
        if spec is None or self.doc is None:
            return
        text = Text()
        text.append(spec.key, style="bold")
        text.append(f" ({spec.type_name}) ", style="dim")
        text.append(spec.describe())
        if spec.key in self.problems:
            text.append(f"\n{spec.key}: {self.problems[spec.key]}", style="#ff5f5f")
        self.query_one("#field-help", Static).update(text)

    @on(DataTable.RowSelected, "#profile-table")
    def _row_clicked(self) -> None:
        self.action_edit_key()

    def action_edit_key(self) -> None:
        """Open the key under the cursor in the edit line (enter in the table)."""
        spec = self.query_one(ProfileTable).spec_at_cursor()
        if spec is None or self.doc is None:
            return
        self._editing = (spec, self.doc.raw(spec))
        self.query_one("#edit-key", Static).update(Text(f"{spec.key} = ", style="bold"))
        box = self.query_one("#edit-value", Input)
        box.value = self.doc.raw(spec)
        self.set_focus(box)  # at once, not after the queued events

    @on(Input.Changed, "#edit-value")
    def _typed(self, event: Input.Changed) -> None:
        if self._editing is None or self.doc is None:
            return
        spec, _ = self._editing
        if event.value != self.doc.raw(spec):
            self.doc.set_raw(spec, event.value)
            self.revalidate()

    @on(Input.Submitted, "#edit-value")
    def _committed(self) -> None:
        self._editing = None
        self.query_one("#edit-key", Static).update("")
        self.set_focus(self.query_one(ProfileTable))

    def action_back(self) -> None:
        if self._editing is not None and self.doc is not None:
            spec, before = self._editing  # escape in the edit line puts the value back
            self.doc.set_raw(spec, before)
            self._editing = None
            self.query_one("#edit-key", Static).update("")
            self.query_one("#edit-value", Input).value = ""
            self.revalidate()
            self.set_focus(self.query_one(ProfileTable))
            return
        if self.doc is not None and self.doc.dirty:
            self.app.notify("Unsaved edits kept in the editor; ctrl+s saves, ctrl+z reverts.",
                            title="profiles", severity="warning")
        self.app.pop_screen()

    # saving and launching

    def action_save(self) -> bool:
        if self.doc is None:
            return False
        if self.problem_lines:
            self.app.notify("\n".join(self.problem_lines), title="not saved: invalid profile",
                            severity="error")
            return False
        if self.doc.dirty:
            try:
                self.doc.save()
            except (OSError, ProfileError) as exc:
                lines = exc.lines if isinstance(exc, ProfileError) else [str(exc)]
                self.app.notify("\n".join(lines), title=f"not saved: {self.doc.path.name}",
                                severity="error")
                return False
            self.app.notify(f"saved {self.doc.path.name}", title="profiles")
        self.revalidate()
        return True

    def action_revert(self) -> None:
        if self.doc is not None:
            self.open_profile(self.doc.path)

    def action_launch(self) -> None:
        if self.doc is not None and self.action_save():
            self.app.request_launch(self.doc.path)
