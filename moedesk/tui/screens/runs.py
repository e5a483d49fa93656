"""RunsScreen: the front door. Every run; filter, sort, select; open, stop, resume, compare,
delete."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Input, Static

from moedesk.tui.model import RunRow
from moedesk.tui.screens.base import DataScreen
from moedesk.tui.widgets.key_footer import KeyFooter
from moedesk.tui.widgets.run_table import RunTable
from moedesk.tui.widgets.title_header import TitleHeader

AGE_REFRESH_S = 5.0


class RunsScreen(DataScreen):
    BINDINGS = [
        Binding("space", "toggle_select", "Select", id="select",
                tooltip="Select or unselect the run under the cursor (for compare)"),
        Binding("slash", "filter", "Filter", key_display="/", id="filter",
                tooltip="Filter runs: words, tag:T, status:S, kind:K, name:N, -TERM negates"),
        Binding("o", "cycle_sort", "Sort", id="sort",
                tooltip="Cycle the sort: newest, name, status, loss, health"),
        Binding("s", "stop", "Stop", id="stop",
                tooltip="Graceful stop (finish the step, checkpoint, exit) or kill"),
        Binding("r", "resume", "Resume", id="resume",
                tooltip="Continue a stopped run from a checkpoint"),
        Binding("c", "compare", "Compare", id="compare",
                tooltip="Compare the selected runs side by side"),
        # in the palette (ctrl+p), not the footer: a destructive key is not advertised
        Binding("d", "delete", "Delete", show=False, id="delete",
                tooltip="Delete the selected runs (or the one under the cursor), after a"
                        " confirm: rows, checkpoints and folder, like moedesk rm"),
        Binding("escape", "clear_filter", "Clear filter", show=False, id="clear-filter",
                tooltip="Clear the filter"),
    ]

    def compose(self) -> ComposeResult:
        yield TitleHeader()
        yield Input(placeholder="filter: words, tag:lab, status:failed,crashed, -kind:dense",
                    id="runs-filter")
        yield RunTable(self.app.clock, id="runs-table")
        yield Static(id="runs-status")
        yield KeyFooter(compact=True)

    def on_mount(self) -> None:
        self.title = "moedesk"
        self.sub_title = "runs"
        self.query_one("#runs-filter").display = False
        self.runs_refreshed(self.app.runs)
        self.set_interval(AGE_REFRESH_S, self._tick_ages)

    def on_screen_resume(self) -> None:
        self.runs_refreshed(self.app.runs)
        self.table.focus()

    def _follow(self) -> None:
        """The cursor goes to the run last launched or opened (`app.followed_run`)."""
        run_id = self.app.followed_run
        if run_id is not None and self.table.follow(run_id):
            self.app.followed_run = None

    @property
    def table(self) -> RunTable:
        return self.query_one(RunTable)

    def runs_refreshed(self, runs: tuple[RunRow, ...]) -> None:
        self.table.show_runs(runs)
        self._follow()
        self._update_status()

    def _tick_ages(self) -> None:
        self.table.refresh_ages()

    def _update_status(self) -> None:
        table = self.table
        runs = list(table.rows_by_id.values())
        active = sum(1 for r in runs if r.active)
        parts = [f"{len(runs)} runs", f"{active} active", f"sort: {table.sort}"]
        if table.selected:
            parts.append(f"{len(table.selected)} selected")
        if table.filter_text:
            parts.append(f"filter: {table.filter_text!r} ({table.row_count} shown)")
        if not runs:
            parts = [getattr(self.app.poller, "problem", None)
                     or f"no runs yet in {self.app.home}: press n to start one from a profile"]
        self.query_one("#runs-status", Static).update(Text("  ·  ".join(parts)))

    # keys

    def action_open_run(self) -> None:
        row = self.table.current_row()
        if row:
            self.app.open_monitor(row.id)

    @on(DataTable.RowSelected, "#runs-table")
    def _row_chosen(self, event: DataTable.RowSelected) -> None:
        self.action_open_run()

    def action_toggle_select(self) -> None:
        self.table.toggle_selected()
        self._update_status()

    def action_filter(self) -> None:
        box = self.query_one("#runs-filter", Input)
        box.display = True
        self.set_focus(box)  # at once: what is typed right after `/` goes to the filter

    @on(Input.Changed, "#runs-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.table.set_filter(event.value)
        self._update_status()

    @on(Input.Submitted, "#runs-filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        self.table.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#runs-filter", Input)
        box.value = ""
        box.display = False
        self.table.set_filter("")
        self.table.focus()
        self._update_status()

    def action_cycle_sort(self) -> None:
        self.table.cycle_sort()
        self._update_status()

    def action_stop(self) -> None:
        row = self.table.current_row()
        if row:
            self.app.request_stop(row)

    def action_resume(self) -> None:
        row = self.table.current_row()
        if row:
            self.app.request_resume(row)

    def action_delete(self) -> None:
        self.app.request_delete(self.table.chosen())

    def action_compare(self) -> None:
        rows = self.table.chosen()
        if len(rows) < 2:
            self.app.notify("Select two or more runs with space, then press c.",
                            title="compare", severity="warning")
            return
        self.app.open_compare([r.id for r in rows])
