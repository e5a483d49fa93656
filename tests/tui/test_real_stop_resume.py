"""Stop a real run gracefully from the TUI, resume it in place, then kill it."""

from __future__ import annotations

import pytest

from moedesk.paths import db_path
from moedesk.store import Reader
from moedesk.tui.screens.confirm_stop import ConfirmStop
from moedesk.tui.screens.resume_dialog import ResumeDialog
from tests.tui.conftest import make_app, screen_text, until
from tests.tui.realruns import kill_leftovers, launch_from_picker, shorten

pytestmark = pytest.mark.slow


async def test_stop_then_resume_from_the_tui(tmp_path, profiles_dir):
    home = tmp_path / "home"
    # long enough that neither part completes before its stop on a fast machine (400
    # steps did: the resumed run ended `completed` before the kill reached it)
    shorten(profiles_dir / "tiny_dense.toml", train__steps="1000000", train__eval_every="0",
            checkpoint__every="0")
    app = make_app(home, profiles_dir, fixed_clock=False)
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            monitor = await launch_from_picker(pilot, "tiny_dense.toml")
            run_id = monitor.run_id
            await until(pilot, lambda: monitor.data.row and monitor.data.row.step >= 5,
                        timeout=90, what="training to start")
            await pilot.press("s")
            await until(pilot, lambda: isinstance(app.screen, ConfirmStop), what="confirm")
            await pilot.press("y")  # graceful: finish the step, checkpoint, exit
            await until(pilot, lambda: "stopped" in monitor.sub_title, timeout=60,
                        what="the stopped status")
            stopped_at = monitor.data.row.step
            assert 5 <= stopped_at < 1000000
            generation = monitor.data.generation

            await pilot.press("r")
            await until(pilot, lambda: isinstance(app.screen, ResumeDialog), what="dialog")
            await until(pilot, lambda: f"step {stopped_at:>7}" in screen_text(app),
                        what="the stop checkpoint")
            await pilot.press("enter")
            await until(pilot, lambda: monitor.data.generation > generation
                        and monitor.data.row.step > stopped_at, timeout=90,
                        what="the resumed run to train on")
            await pilot.press("s", "k")  # kill this time: no checkpoint needed
            await until(pilot, lambda: "stopped" in monitor.sub_title, timeout=60,
                        what="the kill")
        reader = Reader(db_path(home))
        try:
            steps = [s for s, _ in reader.series(run_id, "train/loss")]
            assert steps == list(range(1, len(steps) + 1))  # resumed in place, no overlap
            assert len(steps) > stopped_at
            assert [r["from_step"] for r in reader.resumes(run_id)] == [stopped_at]
        finally:
            reader.close()
    finally:
        kill_leftovers(home)
