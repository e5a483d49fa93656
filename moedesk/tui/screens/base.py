"""DataScreen: the protocol between the app and a screen that shows store data.

The app holds the poller and pushes data down ("attributes down"): when the runs list
changes it calls `runs_refreshed(runs)` on the screen showing data (the top one, or the
one under an open dialog), and when the watched run `run_id` has new rows it calls
`apply()`. Both default to doing nothing, so a screen implements only what it shows.
"""

from __future__ import annotations

from textual.screen import Screen

from moedesk.tui.model import RunRow


class DataScreen(Screen):
    run_id: int | None = None  # the run whose new rows `apply` is called for, if any

    def runs_refreshed(self, runs: tuple[RunRow, ...]) -> None:
        """The runs list (or an alert) changed; `self.app.runs` already holds `runs`."""

    def apply(self) -> None:
        """New rows of `run_id` arrived; read them from `self.app.poller.data(run_id)`."""
