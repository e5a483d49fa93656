"""A real tiny dense run launched from the TUI, watched, left running on quit, completed."""

from __future__ import annotations

import pytest

from moedesk.tui.widgets.line_chart import LineChart
from tests.conftest import wait_for
from tests.tui.conftest import loaded, make_app, screen_text, until
from tests.tui.realruns import kill_leftovers, launch_from_picker, shorten, status_of

pytestmark = pytest.mark.slow


async def test_launch_watch_quit_and_the_run_completes(tmp_path, profiles_dir):
    home = tmp_path / "home"
    # long enough to outlast the first look and the quit on a loaded machine (30 steps
    # once finished before the TUI showed its third: 2 test workers and a benchmark on 2
    # cores)
    shorten(profiles_dir / "tiny_dense.toml", train__steps="200", train__eval_every="100",
            checkpoint__every="0")
    app = make_app(home, profiles_dir, fixed_clock=False)
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            monitor = await launch_from_picker(pilot, "tiny_dense.toml")
            run_id = monitor.run_id
            await until(pilot, lambda: monitor.data.row and monitor.data.row.step >= 3,
                        timeout=90, what="the first steps on screen")
            chart = monitor.query_one("#loss-chart", LineChart)
            assert chart.lines and chart.lines[0].label == "train"
            assert "tiny-dense" in monitor.sub_title and "running" in monitor.sub_title
            await pilot.press("q")  # quit while it trains
        # the run is detached: it goes on without the TUI and completes
        assert status_of(home, run_id) == "running"
        wait_for(lambda: status_of(home, run_id) == "completed", timeout=120,
                 what="the run to complete without the TUI")
        app = make_app(home, profiles_dir, fixed_clock=False)
        async with app.run_test(size=(100, 30)) as pilot:
            await loaded(pilot)
            app.open_monitor(run_id)
            await until(pilot, lambda: "completed  step 200/200" in screen_text(app),
                        what="the finished run")
            data = app.screen.data
            assert data.series["train/loss"].count == 200 and data.series["val/loss"].count == 2
            assert any("completed at step 200" in line for line in data.log_lines)
    finally:
        kill_leftovers(home)
