"""External runs in the TUI (real supervisors): the monitor on a moedesk.init run (curves,
heatmap, gauges), and the watch dialog starting a command as a run."""

from __future__ import annotations

import sys

import pytest
from textual.widgets import Input, Static

import moedesk
from moedesk.store import Reader
from moedesk.tui.screens.monitor import MonitorScreen
from moedesk.tui.screens.watch_dialog import WatchDialog
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


JOB = """
import moedesk
run = moedesk.init(config={"lr": 0.1})
for step in range(1, 6):
    run.log({"train/loss": 2.0 / step}, step=step)
print("job done", flush=True)
"""


async def test_the_watch_dialog_starts_a_command_as_a_run(home, tmp_path):
    (tmp_path / "job.py").write_text(JOB)
    app = make_app(home, fixed_clock=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.polls > 0, what="a poll of the empty home")
        await pilot.press("x")
        dialog = await until(pilot, lambda: isinstance(app.screen, WatchDialog) and app.screen)
        command = dialog.query_one("#watch-command", Input)
        cwd = dialog.query_one("#watch-cwd", Input)
        # a bad command is said in the dialog; nothing is started
        command.value = "no-such-program-xyz --flag"
        await pilot.press("enter")
        error = dialog.query_one("#watch-error", Static)
        await until(pilot, lambda: "not an executable" in str(error.render()), what="the error")
        command.value = "python 'unclosed"
        await pilot.press("enter")
        await until(pilot, lambda: "No closing quotation" in str(error.render()),
                    what="the quoting error")
        assert app.screen is dialog and not (home / "moedesk.db").exists()
        command.value = f"{sys.executable} job.py"
        cwd.value = str(tmp_path)
        await pilot.press("enter")
        monitor = await until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen,
                              what="the new run's monitor")
        await until(pilot, lambda: monitor.caught_up and monitor.data.row.status == "completed"
                    and "job done" in "\n".join(monitor.data.log_lines),
                    timeout=120, what="the watched command to complete, its log on screen")
        assert "job done" in screen_text(app)  # the log panel
    with Reader(home / "moedesk.db") as reader:
        (info,) = reader.runs()
        series = reader.series(info.id, "train/loss")
    assert (info.kind, info.name, info.status) == ("external", f"job-{info.id}", "completed")
    assert info.config["external"]["command"] == [sys.executable, "job.py"]
    assert info.config["external"]["cwd"] == str(tmp_path) and info.config["config"] == {"lr": 0.1}
    assert [s for s, _ in series] == [1, 2, 3, 4, 5]
