"""LineChart: plotext line charts drawn into a Textual widget (no textual-plotext needed).

plotext builds the chart as ANSI text at the widget's size; `ansi_to_strips` turns it
into Strips (only the foreground codes of the "simple" theme occur: one per series,
remapped to our colours). The result is cached until the data key or the size
changes, so a chart costs nothing on ticks where its series did not move. Callers give
a source: a function from the plot width in braille columns to the lines to draw
(downsampled with `SeriesBuffer.envelope`); it runs again whenever the width changes,
so the points always match the pixels they land on.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Hashable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache

import plotext
from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget

from moedesk.tui.series import SeriesBuffer

# plotext colours its n-th signal with the n-th code of its default sequence
PLOTEXT_SEQUENCE = (12, 10, 9, 14, 13, 11, 0, 15, 8, 7, 1, 2)
MIN_BUILD_INTERVAL_S = 0.2  # plus the 0.3 s poll, new points show within 0.5 s
_SGR = re.compile(r"\x1b\[([0-9;]*)m")
Y_AXIS_WIDTH = 8  # room plotext leaves for y tick labels, in cells (approximately)


@dataclass(frozen=True)
class Line:
    """One series: its upper edge `ys` and, for a band, its lower edge `lows`."""

    label: str
    xs: list[float]
    ys: list[float]
    colour: str
    lows: list[float] | None = None
    last: float | None = None  # the newest value, for the legend


# plot columns -> (lines, shared x range or None)
Source = Callable[[int], tuple[list[Line], tuple[float, float] | None]]


def series_source(entries: list[tuple[str, SeriesBuffer, str]], lock=None) -> Source:
    """A chart source over live buffers: (label, buffer, colour), one shared x axis.

    `lock` guards the buffers while they are read (the poller thread appends to them).
    """
    def source(columns: int) -> tuple[list[Line], tuple[float, float] | None]:
        with lock if lock is not None else nullcontext():
            present = [(label, buf, colour) for label, buf, colour in entries if len(buf)]
            ranges = [buf.step_range() for _, buf, _ in present]
            x_range = (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None
            lines = []
            for label, buf, colour in present:
                xs, lows, highs = buf.envelope(columns, x_range)
                lines.append(Line(label, xs, highs, colour, None if lows == highs else lows,
                                  buf.last[1] if buf.last else None))
        return lines, x_range
    return source


@lru_cache(maxsize=64)
def _style(colour: str | None, base: Style) -> Style:
    return base + (Style(color=colour) if colour else Style(dim=True))


def ansi_to_strips(text: str, colours: dict[int, str], base: Style) -> list[Strip]:
    """plotext's ANSI output -> one Strip per line; 256-colour codes mapped by `colours`."""
    strips = []
    for raw in text.rstrip("\n").split("\n"):
        segments = []
        fg: str | None = None
        pos = 0
        for match in _SGR.finditer(raw):
            if match.start() > pos:
                segments.append(Segment(raw[pos:match.start()], _style(fg, base)))
            pos = match.end()
            codes = match.group(1).split(";")
            if codes == ["0"] or codes == [""]:
                fg = None
            elif codes[:2] == ["38", "5"]:
                n = int(codes[2])
                fg = colours.get(n) or Color.from_ansi(n).name
        if pos < len(raw):
            segments.append(Segment(raw[pos:], _style(fg, base)))
        strips.append(Strip(segments))
    return strips


def nice_ticks(lo: float, hi: float, max_ticks: int) -> list[int]:
    """Round step numbers (1, 2 or 5 times a power of ten apart) to label an x axis."""
    span = max(hi - lo, 1)
    raw = span / max(1, max_ticks)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = min((m * mag for m in (1, 2, 5, 10)), key=lambda c: abs(math.log(c / raw)))
    step = max(1, int(step))
    first = int(math.ceil(lo / step) * step)
    ticks = list(range(first, int(hi) + 1, step))
    return ticks if len(ticks) >= 2 else [int(lo), int(hi)]


class LineChart(Widget):
    DEFAULT_CSS = "LineChart { height: 1fr; min-height: 4; }"

    def __init__(self, title: str, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.title = title
        self.lines: list[Line] = []
        self.x_range: tuple[float, float] | None = None
        self.empty_text = "waiting for data"
        self._source: Source | None = None
        self._key: Hashable = None
        self._lines_width = -1
        self._built_for: tuple = ()
        self._strips: list[Strip] = []
        self._last_build = 0.0
        self._pending = None
        self.builds = 0  # how many times plotext ran (tests and the benchmark read it)

    @staticmethod
    def columns_for(width: int) -> int:
        """Points worth sending for a chart `width` cells wide: one per cell column.

        plotext connects the points at braille resolution (two pixels per cell), so
        the curve stays continuous; its cost grows with the number of points.
        """
        return max(8, width - Y_AXIS_WIDTH)

    def plot_columns(self) -> int:
        return self.columns_for(self.size.width)

    def set_source(self, source: Source, key: Hashable) -> None:
        """Draw what `source` returns; `key` names the data, so an unchanged key is free.

        Rebuilds are at most one per `MIN_BUILD_INTERVAL_S`: a change arriving sooner is
        drawn when that interval ends (plotext is the costliest part of a live update).
        """
        if key == self._key:
            return
        self._key = key
        self._source = source
        wait = self._last_build + MIN_BUILD_INTERVAL_S - time.monotonic()
        if wait > 0 and self._built_for:
            if self._pending is None:
                self._pending = self.set_timer(wait, self._redraw)
            return
        self._redraw()

    def _redraw(self) -> None:
        self._pending = None
        self._take_lines(self.size.width)
        self._built_for = ()
        self.refresh()

    def _take_lines(self, width: int) -> None:
        if self._source is not None:
            self.lines, self.x_range = self._source(self.columns_for(width))
        self._lines_width = width

    def render_line(self, y: int) -> Strip:
        size = (self.size.width, self.size.height)
        if self._built_for != (self._key, size):
            if self._lines_width != size[0]:
                self._take_lines(size[0])  # resized: points for the new width
            base = self.rich_style
            strips = self._build(*size)[:size[1]]
            strips += [Strip.blank(size[0], base)] * (size[1] - len(strips))
            self._strips = [strip.adjust_cell_length(size[0], base) for strip in strips]
            self._built_for = (self._key, size)
        return self._strips[y] if y < len(self._strips) else Strip.blank(size[0])

    def _header(self, width: int, base: Style) -> Strip:
        segments = [Segment(self.title, base + Style(bold=True))]
        for line in self.lines:
            if line.xs:
                last = line.last if line.last is not None else line.ys[-1]
                segments.append(Segment("  ━ ", base + Style(color=line.colour)))
                segments.append(Segment(f"{line.label} {last:.4g}", base))
        return Strip(segments).adjust_cell_length(width, base)

    def _build(self, width: int, height: int) -> list[Strip]:
        base = self.rich_style
        header = self._header(width, base)
        drawn = [line for line in self.lines if line.xs]
        if height < 4 or width < 16 or not drawn:
            note = Strip([Segment(f"  {self.empty_text}", base + Style(dim=True))])
            return [header, note] if height > 1 else [header]
        self.builds += 1
        self._last_build = time.monotonic()
        fig = plotext.figure
        fig.clear()
        plotext.terminal.limit(False, False)
        fig.plot_size(width, height - 1)
        fig.theme("simple")
        colours = {}
        codes = iter(PLOTEXT_SEQUENCE)
        for line in drawn:
            # a band is its upper and lower edge; a zigzag between them would cost plotext
            # a full-height segment per column
            for ys in (line.ys, line.lows) if line.lows is not None else (line.ys,):
                code = next(codes, None)
                if code is None:
                    break
                fig.draw(fig.signal(line.xs, ys, marker="braille").lines())
                colours[code] = line.colour
        lo, hi = self.x_range or (min(min(ln.xs) for ln in drawn), max(max(ln.xs) for ln in drawn))
        if hi <= lo:
            hi = lo + 1
        fig.ruler("x").lim(lo, hi)
        ticks = nice_ticks(lo, hi, max(2, min(6, width // 12)))
        fig.ruler("x").ticks(ticks, [str(t) for t in ticks])
        return [header] + ansi_to_strips(fig.build().string(), colours, base)
