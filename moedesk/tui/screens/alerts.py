"""AlertsScreen: every alert of every run, newest first; open ones only with `o`.

Each row: run, step, severity, rule, open or cleared, message and suggested action.
Enter opens the run's monitor. The table is re-read (`reading.read_in_worker`) whenever
the poller reports that an alert fired or cleared.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable, Static

from moedesk.tui import format as fmt
from moedesk.tui.model import RunRow
from moedesk.tui.reading import read_in_worker
from moedesk.tui.screens.base import DataScreen
from moedesk.tui.widgets.key_footer import KeyFooter
from moedesk.tui.widgets.title_header import TitleHeader


class AlertsScreen(DataScreen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="alerts-back",
                tooltip="Back to the previous screen"),
        Binding("o", "toggle_open", "Open only", id="alerts-open-only",
                tooltip="Show only open alerts, or all"),
        Binding("enter", "open_run", "Open run", id="alerts-open-run",
                tooltip="Monitor the alert's run"),
    ]

    @dataclass
    class Loaded(Message):
        alerts: list[dict] | None
        error: str | None

    def __init__(self):
        super().__init__()
        self.open_only = False
        self.alerts: list[dict] = []
        self.loads = 0
        self.error: str | None = None
        self._key: tuple | None = None

    def compose(self) -> ComposeResult:
        yield TitleHeader()
        yield DataTable(id="alerts-table", cursor_type="row", zebra_stripes=True)
        yield Static(id="alert-detail")
        yield KeyFooter(compact=True)

    def on_mount(self) -> None:
        self.title = "moedesk"
        self.sub_title = "alerts"
        table = self.query_one("#alerts-table", DataTable)
        for key in ("run", "step", "severity", "rule", "state", "message"):
            table.add_column(key, key=key)
        self._reload()

    def runs_refreshed(self, runs: tuple[RunRow, ...]) -> None:
        if self.app.alerts_key != self._key:
            self._reload()

    def _reload(self) -> None:
        self._key = self.app.alerts_key
        read_in_worker(self, lambda reader: reader.alerts(), self.Loaded, name="alerts",
                       description="reading the alerts")

    def on_alerts_screen_loaded(self, message: Loaded) -> None:
        self.error = message.error
        if message.error is None:
            self.alerts = message.alerts or []
        else:
            self._key = None  # read again on the next refresh
        self._fill()
        self.loads += 1

    def _fill(self) -> None:
        table = self.query_one("#alerts-table", DataTable)
        names = {r.id: r.name for r in self.app.runs}
        shown = [a for a in reversed(self.alerts)
                 if not self.open_only or a.get("cleared_step") is None]
        table.clear()
        for a in shown:
            sev = a["severity"]
            state = ("open" if a.get("cleared_step") is None
                     else f"cleared @{a['cleared_step']}")
            # data cells are Text, never markup: a run named "[/]" shows as typed
            table.add_row(Text(names.get(a["run_id"], str(a["run_id"]))), str(a["step"]),
                          Text(f"{fmt.SEVERITY_ICONS.get(sev, '?')} {sev}",
                               style=fmt.SEVERITY_STYLES.get(sev, "")),
                          Text(a["rule"]), state, Text(a.get("message") or ""),
                          key=str(a["id"]))
        total_open = sum(1 for a in self.alerts if a.get("cleared_step") is None)
        self.sub_title = (f"alerts · {len(self.alerts)} total, {total_open} open"
                          + (" · showing open only" if self.open_only else ""))
        detail = self.query_one("#alert-detail", Static)
        if self.error is not None:
            detail.update(Text(self.error, style="#ff5f5f"))
            return
        if not shown:
            detail.update(Text("no alerts"))
        self._show_detail()

    def _current(self) -> dict | None:
        table = self.query_one("#alerts-table", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((a for a in self.alerts if str(a["id"]) == key), None)

    @on(DataTable.RowHighlighted, "#alerts-table")
    def _show_detail(self) -> None:
        alert = self._current()
        if alert is None:
            return
        text = Text()
        text.append(f"{alert['rule']}", style="bold")
        if alert.get("metric"):  # a health rule's; user and trainer alerts watch no metric
            text.append(f" · {alert['metric']} = {fmt.number(alert.get('value'))}"
                        f" (threshold {fmt.number(alert.get('threshold'))})", style="dim")
        text.append("\n")
        text.append((alert.get("message") or "") + "\n")
        if alert.get("action"):
            text.append("→ " + alert["action"], style="italic")
        self.query_one("#alert-detail", Static).update(text)

    def action_toggle_open(self) -> None:
        self.open_only = not self.open_only
        self._fill()

    def action_open_run(self) -> None:
        alert = self._current()
        if alert is not None:
            self.app.open_monitor(alert["run_id"])

    @on(DataTable.RowSelected, "#alerts-table")
    def _row_chosen(self) -> None:
        self.action_open_run()
