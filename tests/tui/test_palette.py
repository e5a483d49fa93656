"""The command palette holds every key of the current screen, once, and runs it."""

from __future__ import annotations

from textual.command import CommandPalette

from moedesk.tui.app import moedesk_binding_ids
from moedesk.tui.screens.alerts import AlertsScreen
from moedesk.tui.screens.compare import CompareScreen
from moedesk.tui.screens.monitor import MonitorScreen
from moedesk.tui.screens.profiles import ProfilesScreen
from moedesk.tui.screens.routing import RoutingScreen
from moedesk.tui.widgets.expert_timeline import ExpertTimeline
from tests.tui.conftest import loaded, make_app, screen_text, until


def check_palette(app) -> list[str]:
    """The palette's titles for the current screen, after checking that each moedesk key
    active there (focused widget, screen, app) has its command and Quit is there once."""
    screen = app.screen
    titles = [c.title for c in app.get_system_commands(screen)]
    assert titles.count("Quit") == 1, titles
    for node, binding, enabled, _ in screen.active_bindings.values():
        if enabled and binding.id in moedesk_binding_ids(type(node)):
            assert binding.description in titles, (type(screen).__name__, binding)
    assert "Focus Next" not in titles  # Textual's tab is not a moedesk key
    return titles


async def test_every_key_of_every_screen_is_in_the_palette(canned):
    app = make_app(canned.path)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        titles = check_palette(app)
        assert {"Open", "Select", "Filter", "Sort", "Stop", "Resume", "Compare", "New run",
                "Alerts", "Profiles", "Clear filter", "Watch command"} <= set(titles)
        app.open_monitor(canned.topk)
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.caught_up,
                    what="the topk monitor")
        titles = check_palette(app)
        assert {"Timeline", "Routing", "Stop", "Resume", "Back"} <= set(titles)
        assert titles.count("Routing") == 1
        await pilot.press("g")
        await until(pilot, lambda: isinstance(app.screen, RoutingScreen), what="routing")
        titles = check_palette(app)
        assert titles.count("Prev layer") == 1 and titles.count("Next layer") == 1  # [ and ←
        await pilot.press("escape", "escape")
        app.open_monitor(canned.ternary)
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.caught_up,
                    what="the ternary monitor")
        assert check_palette(app).count("Routing") == 1  # the notice, on the same key
        await pilot.press("escape", "a")
        await until(pilot, lambda: isinstance(app.screen, AlertsScreen), what="alerts")
        assert "Open only" in check_palette(app)
        await pilot.press("escape", "p")
        await until(pilot, lambda: isinstance(app.screen, ProfilesScreen)
                    and app.screen.doc is not None, what="profiles")
        assert {"Save", "Launch", "Revert", "Edit"} <= set(check_palette(app))
        app.screen.set_focus(app.screen.query_one("#profile-list"))
        await pilot.pause()
        assert "Open" in check_palette(app)
        await pilot.press("escape")
        app.open_compare([canned.dense, canned.topk])
        await until(pilot, lambda: isinstance(app.screen, CompareScreen), what="compare")
        check_palette(app)


async def test_a_palette_command_does_what_its_key_does(canned):
    app = make_app(canned.path)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        app.open_monitor(canned.ternary)
        screen = await until(pilot, lambda: isinstance(app.screen, MonitorScreen)
                             and app.screen.caught_up and app.screen)
        timeline = screen.query_one(ExpertTimeline)
        assert timeline.display
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette), what="palette")
        await pilot.press(*"timeline")
        await until(pilot, lambda: "experts-over-time" in screen_text(app), what="the command")
        await pilot.press("enter")
        await until(pilot, lambda: not timeline.display, what="the strip hidden")
        assert app.screen is screen


async def test_the_footer_fits_its_width_after_a_live_resize(canned):
    """newuser.md B9: at 80 columns the footer leaked clipped labels (`p P▏^p paletteu`)."""
    app = make_app(canned.path)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        app.open_monitor(canned.topk)
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.caught_up,
                    what="the monitor")
        footer = lambda: screen_text(app).splitlines()[-1]  # noqa: E731
        await until(pilot, lambda: "p Profiles" in footer(), what="the wide footer")
        await pilot.resize_terminal(80, 24)
        fitted = "esc Back s Stop r Resume t Timeline g Routing w Sample q Quit"
        await until(pilot, lambda: footer().split("▏")[0].rstrip() == fitted,
                    what="the footer refitted to 80 columns")
        await pilot.pause(0.2)
        line = footer()
        assert line.split("▏")[0].rstrip() == fitted, line  # and it stays so
        assert line.rstrip().endswith("▏^p palette"), line  # nothing bleeds past it
        await pilot.resize_terminal(120, 40)
        await until(pilot, lambda: "p Profiles" in footer(), what="the wide footer again")
