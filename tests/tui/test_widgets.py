"""Widgets on their own: heatmap grid and legend, partial redraws, gauges, chart parsing."""

from __future__ import annotations

from rich.style import Style
from textual.app import App, ComposeResult

from moedesk.tui import palette
from moedesk.tui.bands import TOPK_IMBALANCE, Band
from moedesk.tui.format import display_piece, terminal_safe
from moedesk.tui.widgets.band_gauge import BandGauge
from moedesk.tui.widgets.expert_heatmap import ExpertHeatmap
from moedesk.tui.widgets.expert_timeline import ExpertTimeline
from moedesk.tui.widgets.line_chart import ansi_to_strips
from moedesk.tui.widgets.token_stream import TokenStream


class Harness(App):
    def compose(self) -> ComposeResult:
        yield ExpertHeatmap(id="heat")
        yield ExpertTimeline(id="time")
        yield BandGauge("latency", [Band(1, 100, "green", "healthy"),
                                    Band(100, 500, "yellow", "slow"),
                                    Band(500, 10_000, "red", "concerning")],
                        log_scale=True, unit=" us", id="gauge")


def test_palette_levels_cover_dead_fair_and_hot():
    assert palette.level(0.0) == palette.DEAD
    assert palette.level(float("nan")) == palette.DEAD
    assert palette.level(1.0) == palette.LEGEND_LABELS.index("fair")
    assert palette.level(0.1) < palette.level(0.6) < palette.level(1.0) < palette.level(3.0)
    assert palette.level(100.0) == palette.NUM_LEVELS - 1


async def test_topk_grid_shows_numbers_and_legend():
    app = Harness()
    async with app.run_test(size=(60, 20)) as pilot:
        heat = app.query_one(ExpertHeatmap)
        heat.set_grid(["L0", "L1"], [[2.0, 1.0, 0.5, 0.0], [1.0, 1.0, 1.0, 1.0]], "step 7")
        await pilot.pause()
        lines = [heat.render_line(y).text for y in range(4)]
        assert lines[0].startswith("step 7")
        assert lines[1].split() == ["L0", "2.0", "1.0", ".50", "0"]
        assert "fair" in lines[3] and "dead" in lines[3]
        assert heat.size.height == 4  # caption, two layers, legend


async def test_ternary_grid_packs_two_clusters_per_line_and_redraws_only_changes():
    app = Harness()
    async with app.run_test(size=(60, 20)) as pilot:
        heat = app.query_one(ExpertHeatmap)
        rows = [[1.0] * 16 for _ in range(15)] + [[1.0, 1.0, 1.0]]  # 243 experts
        heat.set_grid([f"c{i}" for i in range(16)], rows, "243 experts")
        await pilot.pause()
        assert heat.size.height == 1 + 8 + 1
        for y in range(10):
            heat.render_line(y)
        assert len(heat._lines) == 10
        rows[9] = [0.0] + [1.0] * 15  # cluster 9 lives on grid line 4 (screen line 5)
        heat.set_grid([f"c{i}" for i in range(16)], rows, "243 experts")
        assert sorted(heat._lines) == [0, 1, 2, 3, 4, 6, 7, 8, 9]  # only line 5 dropped
        assert "▀" in heat.render_line(5).text


async def test_timeline_keeps_the_newest_columns_that_fit():
    app = Harness()
    async with app.run_test(size=(40, 20)) as pilot:
        timeline = app.query_one(ExpertTimeline)
        columns = [(step, (1.0, 0.0, 2.0, 1.0)) for step in range(1, 201)]
        timeline.set_columns(columns, "expert")
        await pilot.pause()
        assert timeline.size.height == 1 + 2
        shown = timeline.visible_columns()
        assert 0 < shown < 200
        assert f"steps {200 - shown + 1}..200" in timeline.render_line(0).text
        assert len(timeline.render_line(1).text) == timeline.size.width
        timeline.set_columns([(step, (1.0,) * 4) for step in range(1, 2001)], "expert")
        assert len(timeline.columns) == 512 and timeline.columns[-1][0] == 2000


async def test_gauge_names_the_band_and_marks_the_value():
    app = Harness()
    async with app.run_test(size=(60, 20)) as pilot:
        gauge = app.query_one(BandGauge)
        gauge.set_value(250.0)
        await pilot.pause()
        assert gauge.render_line(0).text.split() == ["latency", "250", "us", "slow"]
        scale = gauge.render_line(1).text
        assert "100" in scale and "500" in scale and "█" in scale
        assert scale.index("100") < scale.index("█") < scale.index("500")
        assert gauge.band_of(0.5) is gauge.bands[0]  # below the scale: first band
        assert BandGauge("x", TOPK_IMBALANCE).band_of(0.05).label == "balanced"


def test_plotext_colours_map_to_series_colours():
    text = "\x1b[0m1.0┤\x1b[0m\x1b[38;5;12m⠠⣄\x1b[0m  │\x1b[0m\n\x1b[0m   └┬─\x1b[0m"
    strips = ansi_to_strips(text, {12: "#ff0000"}, Style())
    assert [s.text for s in strips] == ["1.0┤⠠⣄  │", "   └┬─"]
    coloured = [seg for seg in strips[0] if seg.text == "⠠⣄"]
    assert coloured and coloured[0].style.color.name == "#ff0000"


def test_model_text_is_drawn_without_raw_control_characters():
    assert display_piece("a\nb\t\x01") == "a↵b⇥·"
    assert terminal_safe("a\x1b[31mb\n\tc\r\x9b") == "a·[31mb\n\tc␍·"
    assert terminal_safe("plain é") == "plain é"


class StreamHarness(App):
    def compose(self) -> ComposeResult:
        yield TokenStream(id="stream")


async def test_token_stream_keeps_the_raw_text_and_draws_it_safely():
    app = StreamHarness()
    async with app.run_test(size=(60, 20)) as pilot:
        stream = app.query_one(TokenStream)
        pieces = [("Hi", True, {0: 1}), ("\x1b[2J", False, {0: 2}), ("\n", False, {0: 2}),
                  ("ok\x07", False, {0: 0})]
        for text, prompt, top in pieces:
            stream.add(text, prompt, top)
        await pilot.pause()
        # the model's text, raw, for comparing with `moedesk sample --json`
        assert stream.text() == "Hi\x1b[2J\nok\x07" and stream.generated == 3
        assert stream.plain() == "Hi·[2J\nok·"
        stream.show_routing(True, 0, 4)
        drawn = stream.render()
        assert drawn.plain.startswith("L0 top expert per token")
        body = drawn.plain.split("\n", 1)[1]
        assert body == "Hi·[2J↵\nok·"  # the line break is marked and still breaks the line
        assert not any(c < " " and c != "\n" for c in drawn.plain)
        body_start = len(drawn.plain) - len(body)
        backgrounds = {drawn.plain[s.start:s.end]: s.style.bgcolor.name for s in drawn.spans
                       if getattr(s.style, "bgcolor", None) and s.start >= body_start}
        assert backgrounds == {"Hi": palette.EXPERT_COLOURS[1],
                               "·[2J": palette.EXPERT_COLOURS[2],
                               "↵": palette.EXPERT_COLOURS[2], "ok·": palette.EXPERT_COLOURS[0]}
        # the legend counts every token shown, prompt included
        assert " 1  25%" in drawn.plain and " 2  50%" in drawn.plain and " 3  0%" in drawn.plain
