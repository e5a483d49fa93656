"""MoedeskApp: the full-screen front door of moedesk (bare `moedesk` calls `run_app`).

The app owns the poller: one long-lived thread worker that reads the store over a
read-only connection and posts coalescing messages (`messages.py`); screens get new
data from the app ("attributes down"), never by reading SQLite on the UI thread. Runs
are launched, stopped and resumed through `moedesk.runner.launch`, the same API as the
CLI, in thread workers. Runs are detached processes: quitting leaves them running.
This package never imports torch (tests/tui/test_import_hygiene.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.worker import get_current_worker

from moedesk.paths import profiles_dir as default_profiles_dir
from moedesk.profiles import ProfileError, load_profile
from moedesk.runner.launch import RunError, resume_run, start_run, stop_run
from moedesk.store import StoreError
from moedesk.tui.messages import (
    ActionFailed,
    RunDataChanged,
    RunLaunched,
    RunsRefreshed,
    StoreProblem,
)
from moedesk.tui.model import RunRow
from moedesk.tui.poller import Poller, reap_child

POLL_ACTIVE_S = 0.3  # with the charts' spacing (line_chart.py), commit -> screen <= 0.5 s
POLL_IDLE_S = 1.0
WAKE_CHECK_S = 0.1


class MoedeskApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "moedesk"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (34, "-tall")]
    BINDINGS = [
        Binding("n", "new_run", "New run", id="new-run"),
        Binding("a", "alerts", "Alerts", id="alerts"),
        Binding("p", "profiles", "Profiles", id="profiles"),
        Binding("q", "quit", "Quit", id="quit"),
    ]

    def __init__(self, home: Path, *, profiles: Path | None = None,
                 clock: Callable[[], float] = time.time, poll_interval: float = POLL_ACTIVE_S):
        super().__init__()
        self.home = Path(home)
        self.profiles_folder = Path(profiles) if profiles else default_profiles_dir()
        self.clock = clock
        self.poll_interval = poll_interval
        self.poller = Poller(self.home)
        self.runs: tuple[RunRow, ...] = ()
        self.alerts_key: tuple = ()
        self.refreshes = 0  # RunsRefreshed messages applied (tests wait on it)
        self.polls = 0  # poll ticks completed by the worker
        self._wake = threading.Event()
        self._children: set[int] = set()

    def on_mount(self) -> None:
        from moedesk.tui.screens.runs import RunsScreen

        self.push_screen(RunsScreen())
        self._poll_loop()

    def on_unmount(self) -> None:
        self._wake.set()  # let the poll thread see its cancellation at once

    # the poller thread

    @work(thread=True, exclusive=True, group="poll", exit_on_error=False,
          description="Polling the run store")
    def _poll_loop(self) -> None:
        worker = get_current_worker()
        poller = self.poller
        try:
            while not worker.is_cancelled:
                result = poller.poll()
                self.polls += 1
                if result.error:
                    self.post_message(StoreProblem(result.error))
                if result.runs is not None or result.alerts_key != self.alerts_key:
                    self.post_message(RunsRefreshed(poller.runs, result.alerts_key))
                for run_id in result.changed:
                    self.post_message(RunDataChanged(run_id))
                for pid in list(self._children):
                    if not reap_child(pid):
                        self._children.discard(pid)
                busy = poller.active or bool(result.changed)
                interval = self.poll_interval if busy else max(self.poll_interval, POLL_IDLE_S)
                deadline = time.monotonic() + interval
                # short waits, so a cancelled worker (the app quitting) ends promptly
                while not worker.is_cancelled and not self._wake.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(min(left, WAKE_CHECK_S))
                self._wake.clear()
        finally:
            poller.close()

    def wake_poller(self) -> None:
        self._wake.set()

    def on_runs_refreshed(self, message: RunsRefreshed) -> None:
        self.runs = message.runs
        self.alerts_key = message.alerts_key
        self.refreshes += 1
        screen = self._data_screen()
        if screen is not None and hasattr(screen, "runs_refreshed"):
            screen.runs_refreshed(message.runs)

    def on_run_data_changed(self, message: RunDataChanged) -> None:
        screen = self._data_screen()
        if getattr(screen, "run_id", None) == message.run_id and hasattr(screen, "apply"):
            screen.apply()

    def _data_screen(self) -> Screen | None:
        """The screen showing data: the top one, or the one under an open dialog."""
        for screen in reversed(self.screen_stack):
            if not screen.is_modal:
                return screen
        return None

    def on_store_problem(self, message: StoreProblem) -> None:
        self.notify(message.text, title="store", severity="error", timeout=8)
        screen = self._data_screen()  # the runs list says why it is empty (poller.problem)
        if screen is not None and hasattr(screen, "runs_refreshed"):
            screen.runs_refreshed(self.runs)

    def on_action_failed(self, message: ActionFailed) -> None:
        self.notify("\n".join(message.lines), title=message.title, severity="error", timeout=10)

    def on_run_launched(self, message: RunLaunched) -> None:
        if message.supervisor_pid:
            self._children.add(message.supervisor_pid)
        self.wake_poller()
        self.notify(f"run {message.run_id} ({message.name}) started", title="launched")
        if message.open_monitor:
            self.open_monitor(message.run_id)

    # navigation

    def open_monitor(self, run_id: int) -> None:
        from moedesk.tui.screens.monitor import MonitorScreen

        self.push_screen(MonitorScreen(run_id))

    def open_compare(self, run_ids: list[int]) -> None:
        from moedesk.tui.screens.compare import CompareScreen

        self.push_screen(CompareScreen(run_ids))

    def action_alerts(self) -> None:
        from moedesk.tui.screens.alerts import AlertsScreen

        self.push_screen(AlertsScreen())

    def action_profiles(self) -> None:
        from moedesk.tui.screens.profiles import ProfilesScreen

        self.push_screen(ProfilesScreen(self.profiles_folder))

    def action_new_run(self) -> None:
        from moedesk.tui.screens.profile_picker import ProfilePicker

        def chosen(path: Path | None) -> None:
            if path is not None:
                self.request_launch(path)

        self.push_screen(ProfilePicker(self.profiles_folder), chosen)

    # run operations: the runner's API (the CLI's semantics), off the UI thread

    def request_launch(self, path: Path) -> None:
        self._launch(Path(path))

    @work(thread=True, group="run-ops", exit_on_error=False)
    def _launch(self, path: Path) -> None:
        try:
            profile = load_profile(path)
            launched = start_run(profile, self.home)
        except ProfileError as exc:
            self.post_message(ActionFailed(f"cannot launch {path.name}", exc.lines))
            return
        except (RunError, StoreError, OSError) as exc:
            self.post_message(ActionFailed(f"cannot launch {path.name}", [str(exc)]))
            return
        self.post_message(RunLaunched(launched.run_id, launched.name, launched.supervisor_pid))

    def request_stop(self, row: RunRow) -> None:
        from moedesk.tui.screens.confirm_stop import ConfirmStop

        if not row.active:
            self.notify(f"run {row.id} is {row.status}; only queued or running runs stop",
                        title="stop", severity="warning")
            return

        def chosen(how: str | None) -> None:
            if how is not None:
                self._stop(row.id, how == "kill")

        self.push_screen(ConfirmStop(row), chosen)

    @work(thread=True, group="run-ops", exit_on_error=False)
    def _stop(self, run_id: int, kill: bool) -> None:
        try:
            info = stop_run(self.home, run_id, kill=kill)
        except (RunError, StoreError) as exc:
            self.post_message(ActionFailed("cannot stop", [str(exc)]))
            return
        what = "kill" if kill else "graceful stop (step, checkpoint, exit)"
        self.call_from_thread(self.notify, f"{what} requested for run {info.id} ({info.name})",
                              title="stop")
        self.wake_poller()

    def request_resume(self, row: RunRow) -> None:
        from moedesk.tui.screens.resume_dialog import ResumeDialog

        if row.active:
            self.notify(f"run {row.id} is still {row.status}; stop it first", title="resume",
                        severity="warning")
            return

        def chosen(step: int | None) -> None:
            if step is not None:
                self._resume(row.id, step)

        self.push_screen(ResumeDialog(self.home, row), chosen)

    @work(thread=True, group="run-ops", exit_on_error=False)
    def _resume(self, run_id: int, step: int) -> None:
        try:
            info, from_step = resume_run(self.home, run_id, step)
        except (RunError, StoreError) as exc:
            self.post_message(ActionFailed("cannot resume", [str(exc)]))
            return
        self.post_message(RunLaunched(info.id, info.name, None, open_monitor=False))
        self.call_from_thread(self.notify, f"run {info.id} resumes from step {from_step}",
                              title="resume")

    # the command palette

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("New run", "Launch a run from a profile", self.action_new_run)
        yield SystemCommand("Alerts", "Alerts across all runs", self.action_alerts)
        yield SystemCommand("Profiles", "Edit, validate and launch profiles",
                            self.action_profiles)
        for action, title, help_text in (
                ("open_run", "Open run", "Monitor the run under the cursor"),
                ("stop", "Stop run", "Graceful stop: finish the step, checkpoint, exit"),
                ("resume", "Resume run", "Continue a stopped run from a checkpoint"),
                ("compare", "Compare selected runs", "Side by side, loss curves overlaid")):
            if hasattr(screen, f"action_{action}"):
                yield SystemCommand(title, help_text, getattr(screen, f"action_{action}"))
        yield SystemCommand("Quit moedesk", "Runs keep running", self.action_quit)


def run_app(home: Path, profiles: Path | None = None) -> None:
    """Open the TUI on the data home `home` (runs/moedesk.db lives there)."""
    MoedeskApp(Path(home), profiles=profiles).run()
