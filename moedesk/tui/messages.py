"""App-wide messages: what the poller thread and the action workers tell the UI.

Poll messages carry whole snapshots or just "this run moved" (the data itself sits in
the run's `RunData` with per-part versions), so a newer message can replace an older
one still queued (toolong's `can_replace`) without losing anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from moedesk.tui.model import RunRow


@dataclass
class RunsRefreshed(Message, bubble=False):
    """The runs list changed; `alerts_key` moves when any alert fires or clears."""

    runs: tuple[RunRow, ...]
    alerts_key: tuple

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunsRefreshed)


@dataclass
class RunDataChanged(Message, bubble=False):
    """New rows arrived for a watched run; read them from `app.poller.data(run_id)`."""

    run_id: int

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunDataChanged) and message.run_id == self.run_id


@dataclass
class StoreProblem(Message, bubble=False):
    """The database could not be read (shown once per distinct problem)."""

    text: str


@dataclass
class RunLaunched(Message, bubble=False):
    """A run was started (new, resumed or forked) by this app."""

    run_id: int
    name: str
    supervisor_pid: int | None
    open_monitor: bool = True


@dataclass
class ActionFailed(Message, bubble=False):
    """A launch, stop or resume was refused; `lines` say why, as the CLI would."""

    title: str
    lines: list[str]
