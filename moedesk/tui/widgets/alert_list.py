"""AlertList: open alerts, worst first, each with its message and suggested action."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from moedesk.store.reads import SEVERITY_RANK
from moedesk.tui import format as fmt


class AlertList(Static):
    DEFAULT_CSS = "AlertList { height: auto; }"

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__("", id=id, classes=classes)
        self._shown: list[tuple] = [("init",)]

    def show_alerts(self, alerts: list[dict]) -> None:
        """Open alerts (cleared_step is NULL), most severe first, newest first within."""
        open_alerts = sorted((a for a in alerts if a.get("cleared_step") is None),
                             key=lambda a: (-SEVERITY_RANK.get(a["severity"], 0), -a["id"]))
        key = [(a["id"], a["severity"], a.get("message")) for a in open_alerts]
        if key == self._shown:
            return
        self._shown = key
        if not open_alerts:
            self.update(Text("no open alerts", style="#5f875f"))
            return
        text = Text()
        for alert in open_alerts:
            severity = alert["severity"]
            style = fmt.SEVERITY_STYLES.get(severity, "")
            if text:
                text.append("\n")
            text.append(f"{fmt.SEVERITY_ICONS.get(severity, '?')} {alert['rule']}", style=style)
            text.append(f" @{alert['step']}: ", style="dim")
            text.append(alert.get("message") or "")
            if alert.get("action"):
                text.append("\n  → ", style="dim")
                text.append(alert["action"], style="italic")
        self.update(text)
