"""Snapshots of every screen at 80x24 (and the main ones at 120x40) over the canned home,
with a fixed clock and fixed data: at 80x24 each screen must stay usable (no clipped
footer, no wrapped stats, charts with room to read).

Review a changed snapshot in the HTML report before `--snapshot-update`.
"""

from __future__ import annotations

import pytest

from moedesk.tui.screens.compare import CompareScreen
from moedesk.tui.screens.confirm_stop import ConfirmStop
from moedesk.tui.screens.monitor import MonitorScreen
from moedesk.tui.screens.profile_picker import ProfilePicker
from moedesk.tui.screens.profiles import ProfilesScreen
from moedesk.tui.screens.routing import RoutingScreen
from moedesk.tui.widgets.line_chart import LineChart
from moedesk.tui.widgets.run_table import RunTable
from tests.tui.conftest import loaded, make_app, screen_text, until
from tests.tui.fixtures import add_markup_runs

SNAPSHOT_PROFILE = """\
# A profile owned by the snapshot tests, so edits to the shipped ones never move them.
name = "snap"
kind = "topk"
seed = 3  # fixed

[model]
dim = 64
n_layers = 2

[moe]
num_experts = 8
top_k = 2

[train]
steps = 100
warmup_steps = 10
"""


@pytest.fixture
def snap_profiles(tmp_path):
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "snap.toml").write_text(SNAPSHOT_PROFILE)
    return folder


def monitor_of(run_id: int):
    async def run_before(pilot) -> None:
        await loaded(pilot)
        pilot.app.open_monitor(run_id)
        screen = await until(pilot, lambda: isinstance(pilot.app.screen, MonitorScreen)
                             and pilot.app.screen)
        await until(pilot, lambda: screen.caught_up and screen.data.log_total > 0)
        # no chart redraw still waiting on its 0.2 s spacing (it would land mid-snapshot)
        await until(pilot, lambda: all(c._pending is None for c in screen.query(LineChart)))
        # a Static that grew (the alert list) is laid out on a later frame than its update
        await pilot.pause(0.1)
        await pilot.pause(0.1)
    return run_before


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_runs_screen(snap_compare, canned, size):
    async def run_before(pilot) -> None:
        await loaded(pilot)
        await pilot.press("down", "space")
        await pilot.pause()
    assert snap_compare(make_app(canned.path), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_monitor_topk(snap_compare, canned, size):
    assert snap_compare(make_app(canned.path), terminal_size=size,
                        run_before=monitor_of(canned.topk))


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_monitor_ternary(snap_compare, canned, size):
    assert snap_compare(make_app(canned.path), terminal_size=size,
                        run_before=monitor_of(canned.ternary))


def test_monitor_dense(snap_compare, canned):
    assert snap_compare(make_app(canned.path), terminal_size=(80, 24),
                        run_before=monitor_of(canned.dense))


def test_routing_topk(snap_compare, canned):
    async def run_before(pilot) -> None:
        await monitor_of(canned.topk)(pilot)
        await pilot.press("g")
        await until(pilot, lambda: isinstance(pilot.app.screen, RoutingScreen)
                    and pilot.app.screen.loads)
        await pilot.press("right_square_bracket")  # layer 1: its starved expert 7
        await pilot.pause()
    assert snap_compare(make_app(canned.path), terminal_size=(80, 24), run_before=run_before)


def test_compare(snap_compare, canned):
    async def run_before(pilot) -> None:
        await loaded(pilot)
        pilot.app.open_compare([canned.dense, canned.topk, canned.crashed])
        await until(pilot, lambda: isinstance(pilot.app.screen, CompareScreen)
                    and pilot.app.screen.loads)
        chart = pilot.app.screen.query_one(LineChart)
        await until(pilot, lambda: chart.builds and chart._pending is None, what="the chart")
        await pilot.pause()
    assert snap_compare(make_app(canned.path), terminal_size=(80, 24), run_before=run_before)


def test_alerts(snap_compare, canned):
    async def run_before(pilot) -> None:
        await loaded(pilot)
        await pilot.press("a")
        await until(pilot, lambda: getattr(pilot.app.screen, "loads", 0))
        await pilot.pause()
    assert snap_compare(make_app(canned.path), terminal_size=(80, 24), run_before=run_before)


def test_profile_editor(snap_compare, canned, snap_profiles):
    async def run_before(pilot) -> None:
        await loaded(pilot)
        await pilot.press("p")
        await until(pilot, lambda: isinstance(pilot.app.screen, ProfilesScreen))
        await pilot.press("down", "down", "down", "down")  # model.dim's help below
        await pilot.pause()
    assert snap_compare(make_app(canned.path, snap_profiles), terminal_size=(80, 24),
                        run_before=run_before)


# ---- every other screen at 80x24: dialogs, the palette, an unreadable profile ----

def test_profile_picker(snap_compare, canned, snap_profiles):
    (snap_profiles / "broken.toml").write_text('name = "x"\n[model\n')

    async def run_before(pilot) -> None:
        await loaded(pilot)
        await pilot.press("n")
        await until(pilot, lambda: isinstance(pilot.app.screen, ProfilePicker))
        await until(pilot, lambda: "invalid" in screen_text(pilot.app), what="the check")
        await pilot.pause()
    assert snap_compare(make_app(canned.path, snap_profiles), terminal_size=(80, 24),
                        run_before=run_before)


# dialogs over the runs screen: a modal over a screen pushed a moment before may be
# captured with an older background (Textual paints the screen below lazily)

def test_stop_dialog(snap_compare, canned):
    async def run_before(pilot) -> None:
        await loaded(pilot)
        await pilot.press("o", "o")  # by status: the running topk-b first
        pilot.app.screen.query_one(RunTable).move_cursor(row=0)  # the cursor kept its run
        await pilot.press("s")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmStop))
        await pilot.pause()
    assert snap_compare(make_app(canned.path), terminal_size=(80, 24), run_before=run_before)


def test_resume_dialog(snap_compare, canned):
    async def run_before(pilot) -> None:
        await loaded(pilot)
        await pilot.press("down", "down", "r")  # tern-c: checkpoints at 40 and 80
        await until(pilot, lambda: "step      80" in screen_text(pilot.app), what="checkpoints")
        await pilot.pause()
    assert snap_compare(make_app(canned.path), terminal_size=(80, 24), run_before=run_before)


def test_profile_editor_unreadable_file(snap_compare, canned, snap_profiles):
    (snap_profiles / "aa_syntax.toml").write_text('name = "x"\nkind = "topk"\n[model\ndim = 3\n')

    async def run_before(pilot) -> None:
        await loaded(pilot)
        await pilot.press("p")
        await until(pilot, lambda: "cannot be opened" in screen_text(pilot.app))
        await pilot.pause()
    assert snap_compare(make_app(canned.path, snap_profiles), terminal_size=(80, 24),
                        run_before=run_before)


def test_markup_names_in_the_runs_list(snap_compare, canned):
    add_markup_runs(canned.path)

    async def run_before(pilot) -> None:
        await loaded(pilot)
        await pilot.pause()
    assert snap_compare(make_app(canned.path), terminal_size=(80, 24), run_before=run_before)
