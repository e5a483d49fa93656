"""AlertsScreen: every alert of every run, newest first; open ones only with `o`.

Each row: run, step, severity, rule, open or cleared, message and suggested action.
Enter opens the run's monitor. The table is re-read (in a thread worker) whenever the
poller reports that an alert fired or cleared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from moedesk.paths import db_path
from moedesk.store import Reader, StoreError
from moedesk.tui import format as fmt
from moedesk.tui.model import RunRow


class AlertsScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="alerts-back"),
        Binding("o", "toggle_open", "Open only", id="alerts-open-only"),
        Binding("enter", "open_run", "Open run", id="alerts-open-run"),
    ]

    @dataclass
    class Loaded(Message):
        alerts: list[dict]
        error: str | None

    def __init__(self):
        super().__init__()
        self.open_only = False
        self.alerts: list[dict] = []
        self.loads = 0
        self._key: tuple | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="alerts-table", cursor_type="row", zebra_stripes=True)
        yield Static(id="alert-detail")
        yield Footer(compact=True)

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

    @work(thread=True, exclusive=True, group="alerts-load", exit_on_error=False)
    def _reload(self) -> None:
        self._key = self.app.alerts_key
        try:
            reader = Reader(db_path(Path(self.app.home)))
        except StoreError as exc:
            self.post_message(self.Loaded([], str(exc)))
            return
        try:
            alerts = reader.alerts()
        finally:
            reader.close()
        self.post_message(self.Loaded(alerts, None))

    def on_alerts_screen_loaded(self, message: Loaded) -> None:
        self.alerts = message.alerts
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
            table.add_row(names.get(a["run_id"], str(a["run_id"])), str(a["step"]),
                          Text(f"{fmt.SEVERITY_ICONS.get(sev, '?')} {sev}",
                               style=fmt.SEVERITY_STYLES.get(sev, "")),
                          a["rule"], state, a.get("message") or "", key=str(a["id"]))
        total_open = sum(1 for a in self.alerts if a.get("cleared_step") is None)
        self.sub_title = (f"alerts · {len(self.alerts)} total, {total_open} open"
                          + (" · showing open only" if self.open_only else ""))
        if not shown:
            self.query_one("#alert-detail", Static).update("no alerts")
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
        text.append(f" · {alert.get('metric') or ''} = {fmt.number(alert.get('value'))}"
                    f" (threshold {fmt.number(alert.get('threshold'))})\n", style="dim")
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
