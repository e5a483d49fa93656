"""The routing-analysis screen (`g` in a topk monitor) on the canned topk run's analysis rows."""

from __future__ import annotations

import json

from textual.containers import ScrollableContainer

from moedesk.paths import db_path
from moedesk.store import connect_writer
from moedesk.store.ingest import Batch, write_batch
from moedesk.tui.screens.monitor import MonitorScreen
from moedesk.tui.screens.routing import RoutingScreen
from moedesk.tui.widgets.class_heatmap import ClassHeatmap, axis_labels, share_text
from moedesk.tui.widgets.expert_bars import ExpertBars
from tests.tui.conftest import loaded, make_app, screen_text, until
from tests.tui.fixtures import (
    ANALYSIS_STEPS,
    FIXED_NOW,
    TOPK_EXPERTS,
    TOPK_LAYERS,
    routing_payload,
)


def expected_rows(payload: dict) -> tuple[list[str], list[list[float]]]:
    """(class names, [class][expert] shares) straight from the payload's counts."""
    labels, shares = [], []
    for c, name in enumerate(payload["classes"]):
        slots = payload["class_tokens"][c] * payload["top_k"]
        if slots:
            labels.append(name)
            shares.append([payload["by_class"][e][c] / slots for e in range(TOPK_EXPERTS)])
    return labels, shares


async def open_monitor(pilot, run_id: int) -> MonitorScreen:
    await loaded(pilot)
    pilot.app.open_monitor(run_id)
    screen = await until(pilot, lambda: isinstance(pilot.app.screen, MonitorScreen)
                         and pilot.app.screen.caught_up and pilot.app.screen, what="monitor")
    await pilot.pause()
    return screen


async def open_routing(pilot, run_id: int) -> RoutingScreen:
    await open_monitor(pilot, run_id)
    await pilot.press("g")
    return await until(pilot, lambda: isinstance(pilot.app.screen, RoutingScreen)
                       and pilot.app.screen.loads and pilot.app.screen, what="routing screen")


def assert_shows(screen: RoutingScreen, layer: int, step: int) -> None:
    payload = routing_payload(layer, step)
    assert screen.shown_layer == layer
    bars, heat = screen.query_one(ExpertBars), screen.query_one(ClassHeatmap)
    assert bars.counts == payload["histogram"]
    labels, shares = expected_rows(payload)
    assert heat.row_labels == labels and "conjunction" not in labels  # no tokens: left out
    assert heat.shares == shares
    assert all(abs(sum(row) - 1) < 1e-9 for row in heat.shares)


async def test_g_opens_the_newest_analysis_with_bars_heatmap_and_reading(canned):
    app = make_app(canned.path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_routing(pilot, canned.topk)
        await pilot.pause()
        assert_shows(screen, 0, ANALYSIS_STEPS[-1])
        text = screen_text(app)
        assert "step 50 · 1,534 validation tokens × top-2" in text
        assert "specialization: word class" in text  # class c leans on expert c % 8
        payload = routing_payload(0, ANALYSIS_STEPS[-1])
        total = sum(payload["histogram"])
        e4 = next(line.split() for line in text.splitlines() if line.strip().startswith("E4 "))
        assert e4[1:3] == [f"{payload['histogram'][4]:,}", f"{payload['histogram'][4] / total:.1%}"]
        assert e4[3] == f"{payload['first_choice'][4] / payload['tokens']:.1%}"
        assert set(e4[4]) <= set("█▏▎▍▌▋▊▉")  # E4 has the largest share: the full bar
        # the cells carry the shares where they fit: the "space" row, every expert
        heat = screen.query_one(ClassHeatmap)
        assert heat.cell_width() >= 6
        space_line = heat.render_line(2).text
        assert space_line.split()[:2] == ["space", str(payload["class_tokens"][0])]
        assert space_line.split()[2:] == [f"{s:.1%}" for s in heat.shares[0]]
        # 80x24 is too short for everything: the legend is below, a scroll away
        scroll = screen.query_one(ScrollableContainer)
        assert scroll.max_scroll_y > 0 and "share vs fair" not in screen_text(app)
        await pilot.press("end")
        await until(pilot, lambda: "share vs fair" in screen_text(app), what="the legend")
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen), what="back")


async def test_layer_keys_switch_the_layer_shown(canned):
    app = make_app(canned.path)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_routing(pilot, canned.topk)
        step = ANALYSIS_STEPS[-1]
        assert_shows(screen, 0, step)
        await pilot.press("right_square_bracket")
        assert_shows(screen, 1, step)
        heat = screen.query_one(ClassHeatmap)
        assert all(row[7] == 0.0 for row in heat.shares)  # layer 1's starved expert
        await pilot.pause()
        assert "E7     0    0.0%    0.0%  ×" in screen_text(app)
        await pilot.press("right_square_bracket")  # wraps around
        assert_shows(screen, 0, step)
        await pilot.press("left")
        assert_shows(screen, TOPK_LAYERS - 1, step)
        await pilot.press("left_square_bracket", "right")
        assert_shows(screen, 1, step)


async def test_a_newer_analysis_step_replaces_the_shown_one(canned):
    app = make_app(canned.path)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_routing(pilot, canned.topk)
        await pilot.press("right_square_bracket")
        loads = screen.loads
        db = connect_writer(db_path(canned.path))
        batch = Batch()
        for layer in range(TOPK_LAYERS):
            batch.analysis.append((75, f"routing/L{layer}",
                                   json.dumps(routing_payload(layer, 75)), FIXED_NOW + 75))
        write_batch(db.conn, canned.topk, batch)
        db.close()
        await until(pilot, lambda: "step 75" in screen_text(app), timeout=5,
                    what="the new analysis")
        assert screen.loads == loads + 1
        assert_shows(screen, 1, 75)  # the layer chosen stays chosen
        await pilot.pause(1.3)  # another check finds nothing new and reloads nothing
        assert screen.loads == loads + 1


async def test_dense_run_gets_a_notice_and_no_screen(canned):
    app = make_app(canned.path)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_monitor(pilot, canned.dense)
        assert "Routing" not in screen_text(app).splitlines()[-1]  # the footer
        await pilot.press("g")
        await until(pilot, lambda: any("topk runs only" in n.message
                                       for n in app._notifications), what="the notice")
        assert isinstance(app.screen, MonitorScreen)
        await pilot.press("escape")
        await open_monitor(pilot, canned.topk)
        assert "g Routing" in screen_text(app).splitlines()[-1]


async def test_topk_run_without_an_analysis_says_so(canned):
    app = make_app(canned.path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_routing(pilot, canned.failed)
        assert screen.shown_layer is None
        assert "no routing analysis yet" in screen_text(app)
        assert screen.query_one(ClassHeatmap).shares == []


def test_share_text_and_axis_fit_their_cells():
    assert share_text(0.125, 6) == "12.5%"
    assert share_text(0.126, 3) == "13%"
    assert share_text(1.0, 4) == "100%" and share_text(1.0, 3) == "100"
    assert share_text(0.0, 6) == "0"
    assert axis_labels(3, 3) == "E0 E1 E2 "
    assert axis_labels(12, 1) == "0 2 4 6 8 10"  # no label overlaps its neighbour
