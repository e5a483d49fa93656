"""No file, row or worker failure takes the TUI down; errors are visible; data is never markup.

Each test drives the real app under Pilot. Before these fixes a profile with a TOML syntax
error, or a run named "[/]", ended the app with a traceback (and exit status 0).
"""

from __future__ import annotations

import re

import pytest
from rich.text import Text

import moedesk.tui.app as tui_app
from moedesk.store.reads import Reader
from moedesk.tui.messages import RunLaunched
from moedesk.tui.screens.alerts import AlertsScreen
from moedesk.tui.screens.compare import CompareScreen
from moedesk.tui.screens.confirm_stop import ConfirmStop
from moedesk.tui.screens.monitor import MonitorScreen
from moedesk.tui.screens.profiles import ProfilesScreen
from moedesk.tui.screens.resume_dialog import ResumeDialog
from moedesk.tui.screens.runs import RunsScreen
from moedesk.tui.widgets.alert_list import AlertList
from moedesk.tui.widgets.profile_table import ProfileTable
from moedesk.tui.widgets.run_stats import RunStats
from moedesk.tui.widgets.run_table import RunTable
from tests.tui.conftest import loaded, make_app, screen_text, until
from tests.tui.fixtures import add_markup_runs

BROKEN = 'name = "x"\nkind = "topk"\n[model\ndim = 3\n'  # newuser.md B1, verbatim


def notes(app) -> list[str]:
    return [n.message for n in app._notifications]


async def test_a_profile_with_a_toml_syntax_error_opens_in_the_editor(canned, profiles_dir):
    (profiles_dir / "aa_syntax.toml").write_text(BROKEN)  # sorts first: `p` opens it
    (profiles_dir / "zz_syntax.toml").write_text(BROKEN)
    app = make_app(canned.path, profiles_dir)
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(pilot)
        await pilot.press("p")
        screen = await until(pilot, lambda: isinstance(app.screen, ProfilesScreen)
                             and "cannot be opened" in screen_text(app) and app.screen)
        text = screen_text(app)
        assert screen.doc is None
        assert "aa_syntax.toml  cannot be opened" in text
        assert "(toml): not valid TOML" in text and "line 3" in text  # the CLI's own line
        assert screen.query_one("#edit-value").disabled  # nothing to edit
        lst = screen.query_one("#profile-list")
        screen.set_focus(lst)
        await pilot.press("down", "enter")  # tiny_dense.toml: a good file still opens
        assert screen.doc is not None and screen.doc.path.name == "tiny_dense.toml"
        assert "model.dim" in screen_text(app)
        screen.set_focus(lst)
        await pilot.press("end", "enter")  # zz_syntax.toml, selected from the list
        await pilot.pause()
        assert screen.doc is None and "zz_syntax.toml  cannot be opened" in screen_text(app)
        (profiles_dir / "zz_syntax.toml").write_text(BROKEN.replace("[model\n", "[model]\n"))
        await pilot.press("enter")  # fixed in an editor: enter reads it again
        await pilot.pause()
        assert screen.doc is not None and screen.doc.path.name == "zz_syntax.toml"
        assert app.is_running


@pytest.mark.slow
def test_run_app_exits_non_zero_only_after_a_crash(canned, monkeypatch):
    real_run = tui_app.MoedeskApp.run
    monkeypatch.setattr(tui_app.MoedeskApp, "run",
                        lambda self, **kw: real_run(self, headless=True, size=(80, 24)))

    def quits(self):
        self.exit()

    monkeypatch.setattr(tui_app.MoedeskApp, "on_mount", quits)
    assert tui_app.run_app(canned.path) is None  # a normal quit: status 0

    def crashes(self):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(tui_app.MoedeskApp, "on_mount", crashes)
    with pytest.raises(SystemExit) as exc:
        tui_app.run_app(canned.path)
    assert exc.value.code == 1


async def test_an_unexpected_worker_error_is_a_notification(canned, monkeypatch):
    def broken(self, *args, **kwargs):
        raise RuntimeError("disk [/] on fire")

    app = make_app(canned.path)
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(pilot)
        monkeypatch.setattr(Reader, "alerts", broken)  # after the poller's first tick
        await pilot.press("a")
        await until(pilot, lambda: any("reading the alerts failed" in n for n in notes(app)),
                    what="the worker's error as a notification")
        assert "reading the alerts failed: RuntimeError: disk [/] on fire" in notes(app)
        assert isinstance(app.screen, AlertsScreen) and app.is_running
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


async def test_a_screen_that_cannot_draw_says_so_and_the_app_goes_on(canned, monkeypatch):
    def broken(self, data, row):
        raise ValueError("a row this screen cannot draw")

    monkeypatch.setattr(RunStats, "show", broken)
    app = make_app(canned.path)
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(pilot)
        app.open_monitor(canned.topk)
        await until(pilot, lambda: any(f"drawing run {canned.topk} failed" in n
                                       for n in notes(app)), what="the drawing error")
        ticks = app.polls
        await until(pilot, lambda: app.polls >= ticks + 3, what="three more ticks")
        app.guard(f"drawing run {canned.topk}", app.screen.apply, True)  # the same failure:
        assert sum(f"drawing run {canned.topk} failed" in n for n in notes(app)) == 1  # shown once
        assert app.is_running
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


async def test_a_run_named_like_markup_shows_as_typed_everywhere(canned):
    """Run names, log lines, alert texts, errors and notifications holding `[/]` or
    `[red]x[/red]` display literally (a run named `[/]` used to crash the TUI)."""
    running, failed = add_markup_runs(canned.path)
    app = make_app(canned.path)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        # the table draws its rows a frame after the first refresh (late on a loaded machine)
        await until(pilot, lambda: " [/] " in screen_text(app)
                    and " [red]x[/red] " in screen_text(app), what="both names in the table")

        await pilot.press("slash", *"[/]")  # the filter text is data too
        await until(pilot, lambda: "filter: '[/]' (1 shown)" in screen_text(app),
                    what="the filter status")
        await pilot.press("enter", "escape")

        app.open_monitor(running)
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen)
                    and app.screen.caught_up and app.screen.data.log_total, what="the monitor")
        await until(pilot, lambda: "[/] · topk · running" in screen_text(app), what="header")
        await pilot.pause()
        text = screen_text(app)
        assert "12:00:00 [/] a log line [red]x[/red]" in text
        assert "[bold]LM Loss[/bold]" in text
        shown = str(app.screen.query_one(AlertList).render()).replace("\n", " ")
        assert "[/] closes nothing [red]x[/red]" in shown
        assert "set [b]moe.top_k[/b] = [/]" in shown
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmStop), what="stop dialog")
        assert f"Stop run {running} ([/])?" in screen_text(app)
        await pilot.press("escape", "escape")

        app.open_monitor(failed)
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen)
                    and app.screen.run_id == failed and app.screen.caught_up, what="the failed run")
        await until(pilot, lambda: "[/b] boom [red]x[/red]" in screen_text(app),
                    what="the error, literally")
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, ResumeDialog), what="resume dialog")
        await until(pilot, lambda: f"Resume run {failed} ([red]x[/red]) from"
                    in screen_text(app), what="the dialog title")
        await pilot.press("escape", "escape")

        app.open_compare([running, failed])
        await until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.loads,
                    what="compare")
        await pilot.pause()
        assert f"{running} [/]" in screen_text(app)
        await pilot.press("escape", "a")
        await until(pilot, lambda: isinstance(app.screen, AlertsScreen) and app.screen.loads,
                    what="alerts")
        await pilot.pause()
        assert "[/] closes nothing [red]x[/red]" in screen_text(app)

        app.post_message(RunLaunched(running, "[/]", None, open_monitor=False))
        await until(pilot, lambda: f"run {running} ([/]) started" in notes(app),
                    what="a literal notification")
        # a toast renders its message as markup only when asked to; ours never are
        assert not any(n.markup for n in app._notifications)
        await pilot.pause(0.2)
        assert app.is_running


async def test_profile_values_like_markup_show_as_typed(canned, profiles_dir):
    path = profiles_dir / "tiny_dense.toml"
    path.write_text(re.sub(r'^name = .*$', 'name = "[/]"', path.read_text(), flags=re.M))
    app = make_app(canned.path, profiles_dir)
    async with app.run_test(size=(110, 34)) as pilot:
        await loaded(pilot)
        await pilot.press("p")
        screen = await until(pilot, lambda: isinstance(app.screen, ProfilesScreen)
                             and app.screen.doc is not None and app.screen)
        table = screen.query_one(ProfileTable)
        assert table.get_cell("name", "value") == Text("[/]")
        table.move_cursor(row=[s.key for s in table.order].index("model.dim"))
        await pilot.press("enter", *["backspace"] * 2, *"[red]x[/red]")
        await pilot.pause()
        assert screen.problems["model.dim"] == "got '[red]x[/red]'; must be an integer"
        text = screen_text(app)
        assert "[/]" in text and "got '[red]x[/red]'; must be an integer" in text


async def test_the_runs_cursor_follows_the_run_opened_elsewhere(canned):
    """newuser.md B18: after opening (or launching) a run and coming back, enter opens it."""
    app = make_app(canned.path)
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(pilot)
        table = app.screen.query_one(RunTable)
        assert table.current_run_id() == canned.failed  # newest first
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, AlertsScreen) and app.screen.loads,
                    what="alerts")
        await pilot.press("enter")  # the newest alert: tern-c's
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen), what="monitor")
        assert app.screen.run_id == canned.ternary
        await pilot.press("escape", "escape")
        await until(pilot, lambda: isinstance(app.screen, RunsScreen), what="runs")
        assert table.current_run_id() == canned.ternary
        app.post_message(RunLaunched(canned.topk, "topk-b", None, open_monitor=True))
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen), what="monitor")
        await pilot.press("escape")
        assert table.current_run_id() == canned.topk
