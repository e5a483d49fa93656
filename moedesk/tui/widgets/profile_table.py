"""ProfileTable: every key of a profile with its value, edit mark and validation problem.

Keys the profile's kind reads come first; the others are dimmed and marked unused.
The problem column shows the CLI's own message for that key ("got 0; must be >= 8 and
<= 16384"), updated on every keystroke in the editor.
"""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable

from moedesk.profiles.edit import KIND_SECTIONS, FieldSpec, ProfileDocument, field_specs


class ProfileTable(DataTable):
    # enter edits the key (shown in the footer). It runs the screen's action while the key
    # is handled, not through a RowSelected message, so the edit line has focus before
    # the next key arrives: nothing typed right after enter is lost (newuser.md B17)
    BINDINGS = [Binding("enter", "screen.edit_key", "Edit", id="profile-edit",
                        tooltip="Edit the key under the cursor")]

    def __init__(self, *, id: str | None = None):
        super().__init__(id=id, cursor_type="row", zebra_stripes=False)
        self.specs = field_specs()
        self.order: list[FieldSpec] = []
        self._kind = ""

    def on_mount(self) -> None:
        self.add_column("key", key="key")
        self.add_column("value", key="value")
        self.add_column("", key="mark")
        self.add_column("problem", key="problem")

    def spec_at_cursor(self) -> FieldSpec | None:
        if not self.order or self.cursor_row >= len(self.order):
            return None
        return self.order[self.cursor_row]

    def show(self, doc: ProfileDocument, problems: dict[str, str]) -> None:
        """Redraw for `doc`; rebuilds rows only when the kind (and so the order) changed."""
        kind = doc.kind
        used = KIND_SECTIONS.get(kind, ())
        if kind != self._kind or not self.order:
            keep = self.spec_at_cursor()
            self._kind = kind
            self.order = ([s for s in self.specs if s.section in ("", *used)]
                          + [s for s in self.specs if s.section not in ("", *used)])
            self.clear()
            for spec in self.order:
                self.add_row(*self._cells(doc, spec, problems, used), key=spec.key)
            if keep is not None:
                self.move_cursor(row=self.order.index(keep), animate=False)
            return
        for spec in self.order:
            cells = self._cells(doc, spec, problems, used)
            for column, cell in zip(("key", "value", "mark", "problem"), cells, strict=True):
                old = self.get_cell(spec.key, column)
                if (old.plain, str(old.style)) != (cell.plain, str(cell.style)):
                    self.update_cell(spec.key, column, cell)

    @staticmethod
    def _cells(doc: ProfileDocument, spec: FieldSpec, problems: dict[str, str],
               used: tuple[str, ...]) -> tuple[Text, Text, Text, Text]:
        unused = spec.section not in ("", *used)
        style = "dim" if unused else ""
        edited = spec.key in doc.edits
        problem = problems.get(spec.key, "")
        note = Text(problem, style="#ff5f5f") if problem else \
            Text(f"not used by {doc.kind} runs" if unused else "", style="dim")
        return (Text(spec.key, style=style),
                Text(doc.raw(spec), style="bold #ffd75f" if edited else style),
                Text("*" if edited else "", style="bold #ffd75f"),
                note)
