"""The run monitor on canned runs: every panel, live updates, resets after a resume."""

from __future__ import annotations

from moedesk.paths import db_path
from moedesk.store import connect_writer
from moedesk.store import runs as store_runs
from moedesk.store.ingest import Batch, write_batch
from moedesk.tui.app import POLL_ACTIVE_S
from moedesk.tui.screens.monitor import MonitorScreen
from moedesk.tui.widgets.band_gauge import BandGauge
from moedesk.tui.widgets.expert_heatmap import ExpertHeatmap
from moedesk.tui.widgets.expert_timeline import ExpertTimeline
from moedesk.tui.widgets.line_chart import LineChart
from moedesk.tui.widgets.run_stats import RunStats
from tests.tui.conftest import loaded, make_app, screen_text, until
from tests.tui.fixtures import FIXED_NOW, TOPK_EXPERTS, TOPK_LAYERS


async def open_monitor(pilot, run_id: int) -> MonitorScreen:
    await loaded(pilot)
    pilot.app.open_monitor(run_id)
    screen = await until(pilot, lambda: isinstance(pilot.app.screen, MonitorScreen)
                         and pilot.app.screen)
    await until(pilot, lambda: screen.caught_up and screen.data.log_total > 0,
                what="the first data")
    await pilot.pause()
    return screen


async def test_topk_monitor_shows_every_panel(canned):
    app = make_app(canned.path)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_monitor(pilot, canned.topk)
        text = screen_text(app)
        assert "topk-b · topk · running" in text and "running  step 60/200" in text
        assert "━ train 2.484" in text and "━ val" in text  # loss chart legend
        assert "learning rate" in text
        heat = screen.query_one(ExpertHeatmap)
        assert heat.row_labels == ["L0", "L1"] and len(heat.levels[0]) == TOPK_EXPERTS
        assert heat.ratios[1][7] == 0.0  # layer 1's starved expert, drawn as dead
        assert "layers × 8 experts · step 60" in text
        assert "fair" in text and "dead" in text  # the legend
        assert "imbalance 0.05" in text and "balanced" in text
        assert "routing latency 42 us" in text  # one-line gauge at 30 rows: colour, no label
        latency = screen.query_one("#latency", BandGauge)
        assert latency.size.height == 1 and latency.band_of(latency.value).label == "healthy"
        assert "8060 tokens/s" in text
        assert "usage_std @40" in text and "Increase moe.aux_loss_weight" in text
        assert "12:10:05 Step 50/200" in text
        assert screen.query_one("#loss-chart", LineChart).builds >= 1


async def test_new_rows_appear_within_a_few_poll_ticks(canned):
    """A commit is on screen by the third poll tick after it (a tick may be under way when
    it lands, the next reads it, the charts' 0.2 s spacing may span one more). Counted in
    ticks, not seconds: the latency itself is measured by bench/tui_refresh.py."""
    app = make_app(canned.path)
    app.poll_interval = POLL_ACTIVE_S  # the app's own cadence, not the tests' faster one
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_monitor(pilot, canned.topk)
        chart = screen.query_one("#loss-chart", LineChart)
        heat = screen.query_one(ExpertHeatmap)
        db = connect_writer(db_path(canned.path))
        batch = Batch()
        batch.add_metrics(61, {"train/loss": 1.234}, FIXED_NOW + 61)
        counts = [100] * TOPK_EXPERTS
        counts[3] = 900
        batch.add_expert_load(61, {str(layer): counts for layer in range(TOPK_LAYERS)},
                              FIXED_NOW + 61)
        write_batch(db.conn, canned.topk, batch)
        ticks_at_commit = app.polls
        db.close()
        await until(pilot, lambda: "train 1.234" in screen_text(app)
                    and "step 61" in heat.caption, timeout=30, what="the new step on screen")
        assert app.polls - ticks_at_commit <= 3
        assert heat.levels[0][3] > heat.levels[0][0]  # expert 3 now runs hot
        train = chart.lines[0]
        assert train.last == 1.234 and train.xs[-1] == 61
        assert (train.lows or train.ys)[-1] == 1.234  # the low edge of the newest column


async def test_resume_truncation_redraws_from_scratch(canned):
    app = make_app(canned.path)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_monitor(pilot, canned.topk)
        generation = screen.data.generation
        db = connect_writer(db_path(canned.path))
        store_runs.truncate_for_resume(db.conn, canned.topk, 20, "ckpt-20.pt")
        batch = Batch()
        batch.add_metrics(21, {"train/loss": 7.5}, FIXED_NOW)
        write_batch(db.conn, canned.topk, batch)
        db.close()
        await until(pilot, lambda: screen.data.generation > generation
                    and "train 7.5" in screen_text(app), what="the reset")
        chart = screen.query_one("#loss-chart", LineChart)
        assert chart.lines[0].xs[-1] == 21 and max(chart.lines[0].xs) == 21
        assert "queued" in screen.sub_title  # a resumed run waits for its supervisor


async def test_ternary_monitor_cluster_grid_gauges_and_goodness(canned):
    app = make_app(canned.path)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_monitor(pilot, canned.ternary)
        text = screen_text(app)
        heat = screen.query_one(ExpertHeatmap)
        assert len(heat.row_labels) == 16 and sum(len(r) for r in heat.ratios) == 243
        assert heat.size.height == 1 + 8 + 1  # two clusters per line
        assert "243 experts, 16 per row · step 80" in text
        assert "goodness delta" in text and "Δg 1.1 healthy" in text
        assert "stopped  step 80/300  took 1m40s" in text
        assert "stopped by request (exit code 0)" in text  # how it ended, under the stats
        assert "1500 samples/s" in text and "dead experts 1" in text
        assert "imbalance 0.31  healthy" in text
        assert "routing latency 130 us  slow" in text
        assert "routing_latency @60" in text and "goodness_delta @30" not in text  # cleared
        timeline = screen.query_one(ExpertTimeline)
        assert timeline.display and timeline.num_rows == 16  # clusters over time, tall
        assert "clusters over time" in text
        await pilot.press("t")
        assert not timeline.display


async def test_short_terminal_hides_the_timeline_until_asked(canned):
    app = make_app(canned.path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_monitor(pilot, canned.topk)
        timeline = screen.query_one(ExpertTimeline)
        assert not timeline.display
        await pilot.press("t")
        assert timeline.display


async def test_dense_and_crashed_runs(canned):
    app = make_app(canned.path)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_monitor(pilot, canned.dense)
        assert not screen.query_one(ExpertHeatmap).display
        assert "dense-a · dense · completed" in screen_text(app)
        await pilot.press("escape")
        app.open_monitor(canned.crashed)
        await until(pilot, lambda: "dense-d · dense · crashed" in screen_text(app),
                    what="a crashed run")


def stats_lines(screen) -> list[str]:
    return str(screen.query_one(RunStats).render()).splitlines()


async def test_stats_follow_every_status_change_with_its_reason(canned):
    """Completed, stopped by an alert, failed: the stats line changes with the status, even
    when no new metric arrives (it used to keep `running ... ETA` for minutes)."""
    app = make_app(canned.path)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_monitor(pilot, canned.topk)
        assert stats_lines(screen)[0].startswith("running  step 60/200  ETA")
        assert len(stats_lines(screen)) == 3  # no outcome line while it runs
        for status, error, first, last in (
                ("stopped", "stopped by health rule routing_collapse: moe/L1/max_token_fraction"
                            " = 1 > 0.8 for 3 logged steps", "stopped  step 60/200  took",
                 "stopped by health rule routing_collapse: moe/L1/max_token_fraction = 1"),
                ("failed", "CUDA out of memory\nTraceback ...", "failed  step 60/200",
                 "CUDA out of memory"),
                ("completed", None, "completed  step 60/200  took", None)):
            db = connect_writer(db_path(canned.path))
            store_runs.finish_run(db.conn, canned.topk, status, 0, error)
            db.close()
            await until(pilot, lambda s=status: stats_lines(screen)[0].startswith(s),
                        what=f"the stats line to say {status}")
            lines = stats_lines(screen)
            assert lines[0].startswith(first) and "ETA" not in lines[0], lines
            assert f"topk-b · topk · {status}" in screen_text(app)
            if last is None:
                assert len(lines) == 3, lines
            else:
                assert lines[3].startswith(last) and len(lines) == 4, lines


async def test_the_newest_training_sample_shows_under_the_log_tail(canned):
    app = make_app(canned.path)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await open_monitor(pilot, canned.topk)
        log = screen.query_one("#log-tail")
        assert log.border_subtitle is None  # no samples yet
        db = connect_writer(db_path(canned.path))
        for step, text in ((40, " an older one"), (60, " [bold]sat\x1b[2J\nup")):
            batch = Batch()
            batch.samples.append((step, "The cat", text, 0.8, 7, 48, FIXED_NOW))
            write_batch(db.conn, canned.topk, batch)
        db.close()
        await until(pilot, lambda: "sample @ step 60" in screen_text(app), timeout=30,
                    what="the newest sample")
        # the model's text is neither markup nor raw control characters, and on one line
        assert "sample @ step 60: The cat [bold]sat·[2J↵up" in screen_text(app)
        assert "older one" not in screen_text(app)
        # a resume that drops the sample's step drops it from the monitor too
        db = connect_writer(db_path(canned.path))
        store_runs.truncate_for_resume(db.conn, canned.topk, 50, "ckpt-50.pt")
        db.close()
        await until(pilot, lambda: "sample @ step 40: The cat an older one" in screen_text(app),
                    timeout=30, what="the sample before the resume point")
