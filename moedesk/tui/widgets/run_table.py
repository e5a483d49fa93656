"""RunTable: every run with its status, progress, latest loss, health and age.

Filtering (`store/filters.py`, the CLI's syntax: `tag:lab status:failed -kind:dense`, any
other word a substring of name, kind, status or tags), sorting and the multi-selection live
here; a run's tags follow its name (`#lab`). The screen pushes new `RunRow`s with
`show_runs`. When the visible rows keep their order only changed cells are rewritten, so
the cursor and scroll stay put while runs train.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable

from moedesk.store.filters import parse_filter
from moedesk.tui import format as fmt
from moedesk.tui.model import RunRow

COLUMNS = (("sel", " "), ("id", "id"), ("name", "name"), ("kind", "kind"), ("status", "status"),
           ("step", "step"), ("loss", "loss"), ("health", "health"), ("age", "age"))
SORTS = ("newest", "name", "status", "loss", "health")
_HEALTH_RANK = {"critical": 0, "warning": 1, "info": 2, None: 3}
_STATUS_RANK = {"running": 0, "queued": 1, "crashed": 2, "failed": 3, "stopped": 4,
                "completed": 5}


class RunTable(DataTable):
    # DataTable hides its enter binding; here enter opens the run, so the footer says so
    BINDINGS = [Binding("enter", "select_cursor", "Open", id="open",
                        tooltip="Monitor the run under the cursor")]

    def __init__(self, clock: Callable[[], float], *, id: str | None = None):
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.clock = clock
        self.rows_by_id: dict[int, RunRow] = {}
        self.selected: set[int] = set()
        self.filter_text = ""
        self.sort = SORTS[0]
        self._shown: list[int] = []
        self._cells: dict[int, tuple] = {}

    def on_mount(self) -> None:
        for key, label in COLUMNS:
            self.add_column(label, key=key)

    # what the screen calls

    def show_runs(self, rows: tuple[RunRow, ...]) -> None:
        self.rows_by_id = {r.id: r for r in rows}
        self.selected &= set(self.rows_by_id)
        self._render()

    def set_filter(self, text: str) -> None:
        self.filter_text = text.strip()
        self._render()

    def cycle_sort(self) -> str:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self._render()
        return self.sort

    def toggle_selected(self) -> None:
        run_id = self.current_run_id()
        if run_id is None:
            return
        self.selected ^= {run_id}
        self._render()

    def follow(self, run_id: int) -> bool:
        """Put the cursor on `run_id` (clearing a filter that hides it); False when the
        list does not have it yet (a run just launched: call again on the next refresh)."""
        if run_id not in self.rows_by_id:
            return False
        if run_id not in self._shown and self.filter_text:
            self.set_filter("")
        if run_id in self._shown:
            self.move_cursor(row=self._shown.index(run_id), animate=False)
        return True

    def current_run_id(self) -> int | None:
        if not self._shown or self.cursor_row >= len(self._shown):
            return None
        return self._shown[self.cursor_row]

    def current_row(self) -> RunRow | None:
        run_id = self.current_run_id()
        return None if run_id is None else self.rows_by_id.get(run_id)

    def chosen(self) -> list[RunRow]:
        """The selected runs, or the one under the cursor when none is selected."""
        if self.selected:
            return [self.rows_by_id[i] for i in sorted(self.selected) if i in self.rows_by_id]
        row = self.current_row()
        return [row] if row else []

    def refresh_ages(self) -> None:
        self._render()

    # drawing

    def _visible(self) -> list[RunRow]:
        rows = list(self.rows_by_id.values())
        if self.filter_text:
            # partial: a term still being typed (`tag:`) filters nothing yet, never an error
            wanted = parse_filter(self.filter_text, partial=True)
            rows = [r for r in rows if wanted.matches(name=r.name, kind=r.kind,
                                                      status=r.status, tags=r.tags)]
        keys = {
            "newest": lambda r: -r.id,
            "name": lambda r: (r.name.lower(), -r.id),
            "status": lambda r: (_STATUS_RANK.get(r.status, 9), -r.id),
            "loss": lambda r: (r.loss is None, r.loss or 0.0, -r.id),
            "health": lambda r: (_HEALTH_RANK.get(r.health, 3), -r.id),
        }
        return sorted(rows, key=keys[self.sort])

    def _cells_of(self, row: RunRow, now: float) -> tuple:
        loss = fmt.number(row.loss)
        if row.kind == "ternary" and row.loss is not None:
            loss = f"Δg {fmt.number(row.loss, 3)}"
        return (
            Text("✓", style="bold #5fd75f") if row.id in self.selected else Text(" "),
            str(row.id),
            self._name_cell(row),
            Text(row.kind),
            fmt.status_text(row.status),
            fmt.step_text(row.step, row.total_steps),
            loss,
            fmt.health_text(row.health),
            fmt.age(now - row.created_at) if row.created_at is not None else "-",
        )

    @staticmethod
    def _name_cell(row: RunRow) -> Text:
        # data is never markup: a run named "[/]" (or tagged so) shows as typed
        cell = Text(row.name)
        for tag in row.tags:
            cell.append(f" #{tag}", style="dim")
        return cell

    def _render(self) -> None:
        now = self.clock()
        visible = self._visible()
        ids = [r.id for r in visible]
        cells = {r.id: self._cells_of(r, now) for r in visible}
        if ids == self._shown:
            for run_id in ids:
                old, new = self._cells.get(run_id), cells[run_id]
                if old == new:
                    continue
                for (key, _), before, after in zip(COLUMNS, old or (None,) * len(new), new,
                                                   strict=True):
                    if before != after:
                        self.update_cell(str(run_id), key, after)
            self._cells = cells
            return
        keep = self.current_run_id()
        self.clear()
        for run_id in ids:
            self.add_row(*cells[run_id], key=str(run_id))
        self._shown, self._cells = ids, cells
        if keep in ids:
            self.move_cursor(row=ids.index(keep), animate=False)
