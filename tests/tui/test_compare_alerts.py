"""Compare view (side by side, best values marked, curves overlaid) and the alerts view."""

from __future__ import annotations

from textual.widgets import DataTable

from moedesk.paths import db_path
from moedesk.runner.ingest import event_alert
from moedesk.store import connect_writer
from moedesk.store.ingest import Batch, write_batch
from moedesk.tui.screens.alerts import AlertsScreen
from moedesk.tui.screens.compare import CompareScreen
from moedesk.tui.screens.monitor import MonitorScreen
from moedesk.tui.widgets.line_chart import LineChart
from tests.tui.conftest import loaded, make_app, screen_text, until
from tests.tui.fixtures import FIXED_NOW


def column(table: DataTable, run_id: int) -> dict[str, str]:
    return {str(table.get_cell(label, "quantity")): str(table.get_cell(label, str(run_id)))
            for label in [row.value for row in table.rows]}


async def test_compare_side_by_side(canned):
    app = make_app(canned.path)
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(pilot)
        app.open_compare([canned.dense, canned.topk, canned.ternary])
        screen = await until(pilot, lambda: isinstance(app.screen, CompareScreen)
                             and app.screen.loads and app.screen)
        table = screen.query_one("#compare-table", DataTable)
        dense, topk = column(table, canned.dense), column(table, canned.topk)
        assert dense["kind"] == "dense" and topk["kind"] == "topk"
        assert dense["final train loss"] == "2.235" and topk["final train loss"] == "2.484"
        assert dense["final val ppl"] != "-"
        assert dense["params total"] == "115.0k" and topk["params active"] == "160.0k"
        assert dense["wall time"] == "2m00s"  # started 7200 s, ended 7080 s before FIXED_NOW
        assert topk["wall time"] == "2m00s"  # still running: measured to the app's clock
        assert topk["usage std"] == "0.011" and topk["dead experts"] == "0"
        assert dense["usage std"] == "-"
        best = table.get_cell("final train loss", str(canned.dense))
        assert "bold" in str(best.style)  # the lower loss is highlighted
        chart = screen.query_one("#compare-chart", LineChart)
        assert [line.label for line in chart.lines] == ["dense-a", "topk-b"]  # ternary: no loss
        assert chart.x_range == (1, 100)
        await until(pilot, lambda: "━ dense-a" in screen_text(app), what="the chart legend")


async def test_alerts_view_lists_every_run_and_filters_open(canned):
    app = make_app(canned.path)
    async with app.run_test(size=(120, 30)) as pilot:
        await loaded(pilot)
        await pilot.press("a")
        screen = await until(pilot, lambda: isinstance(app.screen, AlertsScreen)
                             and app.screen.loads and app.screen)
        table = screen.query_one("#alerts-table", DataTable)
        assert table.row_count == 3
        assert "3 total, 2 open" in screen.sub_title
        # the newest alert's action, in the detail under the table (drawn on the next frame)
        text = await until(pilot, lambda: "→ Enable hierarchical selection" in screen_text(app)
                           and screen_text(app), what="the alert's detail")
        assert "cleared @55" in text and "routing_latency" in text and "usage_std" in text
        await pilot.press("o")
        assert table.row_count == 2
        assert "cleared" not in screen_text(app)
        await pilot.press("enter")  # the newest open alert: tern-c's latency
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen), what="monitor")
        assert app.screen.run_id == canned.ternary


async def test_an_alert_that_watched_no_metric_shows_no_empty_reading(canned):
    # a trainer's own alert (and a user's) has no metric, value or threshold
    db = connect_writer(db_path(canned.path))
    write_batch(db.conn, canned.dense, Batch(alerts=[event_alert(
        {"title": "bf16 is emulated on this CPU", "text": "no bf16 instructions",
         "action": "set [train] bf16 = false", "step": 3, "wall": FIXED_NOW + 1},
        3, "bf16_emulated")]))
    db.close()
    app = make_app(canned.path)
    async with app.run_test(size=(120, 30)) as pilot:
        await loaded(pilot)
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, AlertsScreen) and app.screen.loads)
        text = await until(pilot, lambda: "→ set [train] bf16 = false" in screen_text(app)
                           and screen_text(app), what="the newest alert's detail")
        assert "bf16 is emulated on this CPU: no bf16 instructions" in text
        assert "(threshold" not in text and "= -" not in text
        # (a health rule's alert still shows its reading: tests/tui/test_snapshots.py)
