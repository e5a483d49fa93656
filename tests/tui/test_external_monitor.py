"""The monitor on an external run (moedesk.init, a real supervisor): curves, heatmap, gauges."""

from __future__ import annotations

import pytest

import moedesk
from moedesk.tui.screens.monitor import MonitorScreen
from moedesk.tui.widgets.expert_heatmap import ExpertHeatmap
from tests.tui.conftest import loaded, make_app, screen_text, until

pytestmark = pytest.mark.slow

EXPERTS = 6


def external_run(home) -> int:
    run = moedesk.init(name="ext-run", home=home, total_steps=40, config={"lr": 3e-4})
    for step in range(1, 31):
        run.log({"train/loss": 4.0 - step * 0.05, "train/lr": 3e-4}, step=step)
        hot = [step + 40] + [20] * (EXPERTS - 1)  # expert 0 of layer 3 runs hot
        run.log_expert_load({1: [25] * EXPERTS, 3: hot}, top_k=2)
    run.finish()
    return run.id


async def test_monitor_shows_an_external_runs_heatmap(home):
    run_id = external_run(home)
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(pilot)
        app.open_monitor(run_id)
        screen = await until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen)
        await until(pilot, lambda: screen.caught_up and screen.data.load_step == 30,
                    what="the run's data")
        heat = screen.query_one(ExpertHeatmap)
        await until(pilot, lambda: heat.row_labels == ["L1", "L3"], what="the heatmap rows")
        await pilot.pause()
        text = screen_text(app)
        assert "ext-run · external · completed" in text
        assert f"layers × {EXPERTS} experts · step 30" in text
        assert len(heat.levels[0]) == EXPERTS
        assert heat.ratios[1][0] > 1.5 > heat.ratios[0][0]  # layer 3's hot expert
        assert "━ train 2.5" in text  # the curve of run.log
        assert "imbalance 0.23" in text  # the supervisor's moe/imbalance
        assert "dead experts 0" in text
