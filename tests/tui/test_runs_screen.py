"""The runs view on the canned home: columns, crashed runs, filter, sort, select, keys."""

from __future__ import annotations

import importlib
import pkgutil

from textual.app import App
from textual.binding import Binding
from textual.command import CommandPalette
from textual.widget import Widget

import moedesk.tui.app as tui_app
from moedesk.store import open_reader
from moedesk.tui.screens.alerts import AlertsScreen
from moedesk.tui.screens.compare import CompareScreen
from moedesk.tui.screens.confirm_stop import ConfirmStop
from moedesk.tui.screens.monitor import MonitorScreen
from moedesk.tui.screens.profile_picker import ProfilePicker
from moedesk.tui.screens.profiles import ProfilesScreen
from moedesk.tui.screens.resume_dialog import ResumeDialog
from moedesk.tui.screens.runs import RunsScreen
from moedesk.tui.widgets.run_table import RunTable
from tests.tui.conftest import loaded, make_app, screen_text, until


def table_names(app) -> list[str]:
    table = app.screen.query_one(RunTable)
    return [table.rows_by_id[i].name for i in table._shown]


async def test_every_run_with_status_progress_loss_health_and_age(canned):
    app = make_app(canned.path)
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(pilot)
        await pilot.pause()
        text = screen_text(app)
        names = ("dense-a", "topk-b", "tern-c", "dense-d", "topk-e")
        lines = {name: line for line in text.splitlines() for name in names
                 if f" {name} " in line}
        assert set(lines) == set(names)
        assert "crashed" in lines["dense-d"]  # stored as running, supervisor dead
        assert "running" in lines["topk-b"] and "60/200" in lines["topk-b"]
        assert "▲ warning" in lines["topk-b"] and "2m" in lines["topk-b"]
        assert "✖ critical" in lines["tern-c"] and "Δg" in lines["tern-c"]
        assert "completed" in lines["dense-a"] and "2h" in lines["dense-a"]
        assert "failed" in lines["topk-e"]
        assert table_names(app) == ["topk-e", "dense-d", "tern-c", "topk-b", "dense-a"]


async def test_filter_sort_and_select(canned):
    app = make_app(canned.path)
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(pilot)
        await pilot.press("slash", "t", "o", "p", "k")
        assert table_names(app) == ["topk-e", "topk-b"]
        await pilot.press("enter", "escape")  # back to the table, then clear the filter
        assert len(table_names(app)) == 5
        await pilot.press("o")  # sort by name
        assert table_names(app) == ["dense-a", "dense-d", "tern-c", "topk-b", "topk-e"]
        await pilot.press("o")  # by status: running first
        assert table_names(app)[0] == "topk-b"
        await pilot.press("space", "down", "space")
        table = app.screen.query_one(RunTable)
        assert len(table.selected) == 2
        assert "2 selected" in screen_text(app)
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen), what="compare")
        assert sorted(app.screen.run_ids) == sorted(table.selected)


async def test_compare_needs_two_runs(canned):
    app = make_app(canned.path)
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(pilot)
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen)
        assert any("two or more" in n.message for n in app._notifications)


async def test_enter_opens_the_monitor_and_escape_comes_back(canned):
    app = make_app(canned.path)
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(pilot)
        await pilot.press("down", "down")  # tern-c
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen), what="monitor")
        assert app.screen.run_id == canned.ternary
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


async def test_stop_asks_first_and_only_for_active_runs(canned, monkeypatch):
    calls = []
    monkeypatch.setattr(tui_app, "stop_run", lambda home, ref, kill=False: calls.append(
        (ref, kill)) or type("Info", (), {"id": ref, "name": "x"})())
    app = make_app(canned.path)
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(pilot)
        await pilot.press("s")  # topk-e failed: nothing to stop
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen)
        assert any("only queued or running" in n.message for n in app._notifications)
        await pilot.press("o", "o")  # by status: the running topk-b on top
        app.screen.query_one(RunTable).move_cursor(row=0)  # the cursor follows its run
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmStop), what="confirm")
        await pilot.press("escape")
        await pilot.pause()
        assert calls == []
        await pilot.press("s", "y")
        await until(pilot, lambda: calls, what="stop_run call")
        assert calls == [(canned.topk, False)]
        await pilot.press("s", "k")
        await until(pilot, lambda: len(calls) == 2, what="kill")
        assert calls[1] == (canned.topk, True)


async def test_resume_offers_checkpoints_and_reports_the_runner_error(canned):
    app = make_app(canned.path)
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(pilot)
        await pilot.press("r")  # topk-e failed without checkpoints
        await until(pilot, lambda: isinstance(app.screen, ResumeDialog), what="dialog")
        await until(pilot, lambda: "no checkpoints" in screen_text(app), what="empty list")
        await pilot.press("escape")
        await pilot.press("down", "down", "r")  # tern-c: checkpoints at 40 and 80
        await until(pilot, lambda: isinstance(app.screen, ResumeDialog), what="dialog")
        await until(pilot, lambda: "step      80" in screen_text(app), what="checkpoints")
        text = screen_text(app)
        assert text.index("step      80") < text.index("step      40")  # newest first
        await pilot.press("enter")
        # the fixture's checkpoint files do not exist: the runner refuses, as the CLI would
        await until(pilot, lambda: any(n.title == "cannot resume" for n in app._notifications),
                    what="the runner's refusal")
        assert isinstance(app.screen, RunsScreen)


async def test_app_keys_footer_and_command_palette(canned):
    app = make_app(canned.path)
    async with app.run_test(size=(140, 30)) as pilot:
        await loaded(pilot)
        await until(pilot, lambda: "Quit" in screen_text(app).splitlines()[-1], what="footer")
        footer = screen_text(app).splitlines()[-1]
        for label in ("Open", "Select", "Filter", "Sort", "Stop", "Resume", "Compare",
                      "New run", "Alerts", "Profiles", "Quit"):
            assert label in footer, label
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"New run", "Open", "Stop", "Resume", "Compare", "Alerts", "Profiles",
                "Quit"} <= titles  # the keys of the screen, by their footer names
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette), what="palette")
        await pilot.press(*"compare")
        await until(pilot, lambda: "Compare the selected runs side by side" in screen_text(app),
                    what="the compare command")
        await pilot.press("escape")
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, AlertsScreen), what="alerts")
        await pilot.press("escape", "p")
        await until(pilot, lambda: isinstance(app.screen, ProfilesScreen), what="profiles")
        await pilot.press("escape", "n")
        await until(pilot, lambda: isinstance(app.screen, ProfilePicker), what="picker")
        await pilot.press("escape", "q")
        await until(pilot, lambda: not app.is_running, what="quit")


def tui_classes() -> list[type]:
    """Every Screen and Widget subclass defined under moedesk.tui (all modules imported)."""
    import moedesk.tui

    for info in pkgutil.walk_packages(moedesk.tui.__path__, "moedesk.tui."):
        importlib.import_module(info.name)
    found, todo = set(), [Widget, App]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return sorted((c for c in found if c.__module__.startswith("moedesk.tui.")),
                  key=lambda c: c.__qualname__)


def test_every_binding_has_an_id():
    classes = tui_classes()
    names = {c.__name__ for c in classes}
    # the walk reaches the lazily imported screens and the widgets (the list is not kept by hand)
    assert {"MoedeskApp", "RunsScreen", "MonitorScreen", "RoutingScreen", "RunTable"} <= names
    for cls in classes:
        for binding in vars(cls).get("BINDINGS", ()):  # its own, not Textual's inherited ones
            assert isinstance(binding, Binding) and binding.id, (cls.__name__, binding)


async def test_tags_show_by_the_name_and_filter_with_the_cli_syntax(canned):
    from moedesk.store import housekeeping as hk

    hk.tag(canned.path, canned.dense, ["lab", "v1.2"])
    hk.tag(canned.path, canned.ternary, ["lab"])
    app = make_app(canned.path)
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(pilot)
        await until(pilot, lambda: "#lab" in screen_text(app), what="tags drawn")
        line = next(ln for ln in screen_text(app).splitlines() if " dense-a " in ln)
        assert "dense-a #lab #v1.2" in line, line
        await pilot.press("slash", *"tag:lab")
        assert sorted(table_names(app)) == ["dense-a", "tern-c"]
        await pilot.press(*" -kind:dense")
        assert table_names(app) == ["tern-c"]
        app.screen.query_one(RunTable).set_filter("status:failed,crashed")
        assert sorted(table_names(app)) == ["dense-d", "topk-e"]
        app.screen.query_one(RunTable).set_filter("tag:")  # still being typed: no error
        assert len(table_names(app)) == 5


async def test_delete_asks_first_refuses_active_runs_and_removes(canned):
    from moedesk.tui.screens.confirm_delete import ConfirmDelete

    app = make_app(canned.path)
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(pilot)
        await pilot.press("o", "o")  # by status: the running topk-b on top
        app.screen.query_one(RunTable).move_cursor(row=0)
        await pilot.press("d")  # running: refused without a dialog
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen)
        assert any("is running: stop it first" in n.message for n in app._notifications)
        names = table_names(app)
        app.screen.query_one(RunTable).move_cursor(row=names.index("dense-a"))
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDelete), what="confirm")
        await pilot.press("escape")
        await pilot.pause()
        assert "dense-a" in table_names(app)
        await pilot.press("d", "y")
        await until(pilot, lambda: "dense-a" not in table_names(app), what="run removed")
        assert any("removed run" in n.message for n in app._notifications)
    with open_reader(canned.path) as reader:
        assert canned.dense not in [r.id for r in reader.runs()]


async def test_the_monitor_shows_the_runs_resolved_config_as_toml(canned):
    import tomllib

    from moedesk.tui.screens.run_config import RunConfig

    app = make_app(canned.path)
    async with app.run_test(size=(100, 40)) as pilot:
        await loaded(pilot)
        names = table_names(app)
        app.screen.query_one(RunTable).move_cursor(row=names.index("dense-a"))
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen), what="monitor")
        await pilot.press("f")
        await until(pilot, lambda: isinstance(app.screen, RunConfig), what="config")
        static = app.screen.query_one("#config-text")
        await until(pilot, lambda: "[train]" in str(static.render()), what="config text")
        text = str(static.render())
        data = tomllib.loads(text)  # pasteable: TOML that reads back
        assert data["name"] == "dense-a" and data["kind"] == "dense"
        assert data["train"]["steps"] == 100 and "lr" in data["train"]
        await pilot.press("escape")
        assert isinstance(app.screen, MonitorScreen)
