"""MoedeskApp: the full-screen front door of moedesk (bare `moedesk` calls `run_app`).

The app owns the poller: one long-lived thread worker that reads the store over a
read-only connection and posts coalescing messages (`messages.py`); screens get new
data from the app ("attributes down", the `DataScreen` protocol of screens/base.py),
never by reading SQLite on the UI thread; one-off reads go through `reading.py`. Runs
are launched, stopped and resumed through `moedesk.runner.launch`, the same API as the
CLI, in thread workers. Runs are detached processes: quitting leaves them running.

Errors are never silent and never fatal: every worker belongs to the app and its one
`Worker.StateChanged` handler turns an unexpected failure into a notification; a
screen that fails to draw new data says so in a notification and keeps running; no
text from the store, a file or an exception is read as markup (`notify` is literal).
Only a real crash ends the app, and `run_app` then exits with status 1.
This package never imports torch (tests/tui/test_import_hygiene.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.worker import Worker, WorkerState, get_current_worker

from moedesk.paths import profiles_dir as default_profiles_dir
from moedesk.profiles import ProfileError, load_profile
from moedesk.runner.launch import RunError, resume_run, start_run, start_watch, stop_run
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
from moedesk.tui.screens.base import DataScreen

POLL_ACTIVE_S = 0.3  # with the charts' spacing (line_chart.py), commit -> screen <= 0.5 s
POLL_IDLE_S = 1.0
WAKE_CHECK_S = 0.1


class MoedeskApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "moedesk"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (34, "-tall")]
    BINDINGS = [
        Binding("n", "new_run", "New run", id="new-run",
                tooltip="Launch a run from a profile"),
        Binding("a", "alerts", "Alerts", id="alerts",
                tooltip="Alerts across all runs"),
        Binding("p", "profiles", "Profiles", id="profiles",
                tooltip="Edit, validate and launch profiles"),
        Binding("q", "quit", "Quit", id="quit",
                tooltip="Quit moedesk; runs keep running"),
        # not in the footer (it is full at 80 columns); in the palette like every key
        Binding("x", "watch_command", "Watch command", show=False, id="watch-command",
                tooltip="Run any command as a supervised run (moedesk watch -- CMD)"),
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
        self._guard_errors: dict[str, str] = {}  # hook -> its last failure, shown once
        self.followed_run: int | None = None  # the runs cursor goes there (launched, opened)
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
          description="polling the run store")
    def _poll_loop(self) -> None:
        worker = get_current_worker()
        poller = self.poller
        try:
            while not worker.is_cancelled:
                try:
                    result = poller.poll()
                except Exception as exc:  # noqa: BLE001 - one bad tick must not end polling
                    self.post_message(StoreProblem(f"reading the store failed: "
                                                   f"{type(exc).__name__}: {exc}"))
                    poller.close()  # reopen on the next tick
                    self._wake.wait(POLL_IDLE_S)
                    continue
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
        if screen is not None:
            self.guard(f"showing the runs on {type(screen).__name__}", screen.runs_refreshed,
                       message.runs)

    def on_run_data_changed(self, message: RunDataChanged) -> None:
        screen = self._data_screen()
        if screen is not None and screen.run_id == message.run_id:
            self.guard(f"drawing run {message.run_id}", screen.apply)

    def _data_screen(self) -> DataScreen | None:
        """The screen showing data: the top one, or the one under an open dialog."""
        for screen in reversed(self.screen_stack):
            if not screen.is_modal:
                return screen if isinstance(screen, DataScreen) else None
        return None

    def guard(self, what: str, call: Callable, *args) -> None:
        """Run a screen's data hook; a failure (a row it cannot draw) is shown, not fatal.

        The same failure on every tick is shown once, until the hook succeeds again."""
        try:
            call(*args)
        except Exception as exc:  # noqa: BLE001 - data must never take the app down
            text = f"{what} failed: {type(exc).__name__}: {exc}"
            if self._guard_errors.get(what) != text:
                self._guard_errors[what] = text
                self.log.error(text)
                self.notify(text, title="unexpected error", severity="error", timeout=15)
            return
        self._guard_errors.pop(what, None)

    # errors: one handler for every worker, literal notifications

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state != WorkerState.ERROR:
            return
        worker, error = event.worker, event.worker.error
        what = worker.description or worker.name or "background work"
        self.log.error(f"worker {what!r} failed", error)
        self.notify(f"{what} failed: {type(error).__name__}: {error}", title="unexpected error",
                    severity="error", timeout=15)

    def notify(self, message: str, *, title: str = "", severity: SeverityLevel = "information",
               timeout: float | None = None, markup: bool = False) -> None:
        """Every notification is literal text: run names, paths and error messages may
        hold `[` and must show as typed (Textual's default would parse them as markup)."""
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=False)

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
        self.followed_run = message.run_id
        if message.open_monitor:
            self.open_monitor(message.run_id)

    # navigation

    def open_monitor(self, run_id: int) -> None:
        from moedesk.tui.screens.monitor import MonitorScreen

        self.followed_run = run_id
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

    def action_watch_command(self) -> None:
        from moedesk.tui.screens.watch_dialog import WatchDialog

        def chosen(request) -> None:
            if request is not None:
                self._watch(*request)

        self.push_screen(WatchDialog(), chosen)

    # run operations: the runner's API (the CLI's semantics), off the UI thread

    def request_launch(self, path: Path) -> None:
        self._launch(Path(path))

    @work(thread=True, group="run-ops", exit_on_error=False, description="launching a run")
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

    @work(thread=True, group="run-ops", exit_on_error=False, description="starting a command")
    def _watch(self, argv: list[str], folder: Path) -> None:
        try:
            launched = start_watch(self.home, argv, folder)
        except (RunError, StoreError, OSError) as exc:
            self.post_message(ActionFailed(f"cannot start {argv[0]}", [str(exc)]))
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

    @work(thread=True, group="run-ops", exit_on_error=False, description="stopping a run")
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

    def request_delete(self, rows: list[RunRow]) -> None:
        from moedesk.tui.screens.confirm_delete import ConfirmDelete

        busy = [r for r in rows if r.active]
        if busy:
            self.notify("; ".join(f"run {r.id} is {r.status}: stop it first" for r in busy),
                        title="delete", severity="warning")
            return
        if not rows:
            return

        def chosen(yes: bool | None) -> None:
            if yes:
                self._delete([r.id for r in rows])

        self.push_screen(ConfirmDelete(rows), chosen)

    @work(thread=True, group="run-ops", exit_on_error=False, description="deleting runs")
    def _delete(self, run_ids: list[int]) -> None:
        from moedesk.store.housekeeping import remove_runs

        try:
            removed = remove_runs(self.home, run_ids)  # refuses (all of them) if any is active
        except (StoreError, OSError) as exc:
            self.post_message(ActionFailed("cannot delete", [str(exc)]))
            return
        freed = sum(r.bytes_freed for r in removed) / 1e6
        names = ", ".join(f"{r.run_id} ({r.name})" for r in removed)
        self.call_from_thread(self.notify, f"removed run {names}; {freed:.1f} MB freed",
                              title="delete")
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

        self.push_screen(ResumeDialog(row), chosen)

    @work(thread=True, group="run-ops", exit_on_error=False, description="resuming a run")
    def _resume(self, run_id: int, step: int) -> None:
        try:
            info, from_step = resume_run(self.home, run_id, step)
        except (RunError, StoreError) as exc:
            self.post_message(ActionFailed("cannot resume", [str(exc)]))
            return
        self.post_message(RunLaunched(info.id, info.name, None, open_monitor=False))
        self.call_from_thread(self.notify, f"run {info.id} resumes from step {from_step}",
                              title="resume")

    # the command palette: every key of the current screen, and the app's extras

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for command in super().get_system_commands(screen):
            if command.title != "Quit":  # Textual's own; ours is the `q` binding below
                yield command
        yield from binding_commands(self, screen)


def moedesk_binding_ids(cls: type) -> set[str]:
    """The ids of the bindings moedesk's classes in `cls`'s MRO declare themselves."""
    return {b.id for c in cls.__mro__ if c.__module__.startswith("moedesk.")
            for b in vars(c).get("BINDINGS", ()) if isinstance(b, Binding) and b.id}


def binding_commands(app: App, screen: Screen) -> Iterable[SystemCommand]:
    """One palette command per moedesk binding active on `screen` (its focused widget's,
    its own and the app's; hidden ones too), so the palette holds every key.
    A key bound twice to one action (`[` and `←`) gives one command."""
    seen = set()
    for node, binding, enabled, tooltip in screen.active_bindings.values():
        if not enabled or binding.id not in moedesk_binding_ids(type(node)):
            continue  # Textual's own keys (tab, ctrl+c) are not the screen's
        if (id(node), binding.action) in seen:
            continue
        seen.add((id(node), binding.action))
        key = binding.key_display or app.get_key_display(binding)
        yield SystemCommand(binding.description, f"{key} · {tooltip or binding.description}",
                            partial(app.run_action, binding.action, node))


def run_app(home: Path, profiles: Path | None = None) -> None:
    """Open the TUI on the data home `home` (runs/moedesk.db lives there).

    Returns when the user quits; a crash (the traceback is printed) exits with status 1.
    """
    app = MoedeskApp(Path(home), profiles=profiles)
    app.run()
    if app.return_code:
        raise SystemExit(app.return_code)
