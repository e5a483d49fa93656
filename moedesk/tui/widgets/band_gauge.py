"""BandGauge: one value on a scale painted with its health bands (two lines).

Line 1: the title, the value and the band it falls in ("imbalance 0.31  healthy").
Line 2: the scale, each band in its colour with its edges written in, and a marker at
the value. Used for the imbalance score (bands per run kind) and the routing latency
(log scale, 100 and 500 us bands). The bands are `moedesk.tui.bands.Band`s. Given one
line of height (short terminals), it draws the title, the value in its band's colour and
the scale side by side.
"""

from __future__ import annotations

import math

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip

from moedesk.tui.bands import Band
from moedesk.tui.widgets._cached_lines import CachedLines


class BandGauge(CachedLines):
    DEFAULT_CSS = "BandGauge { height: 2; }"

    def __init__(self, title: str, bands: list[Band], *, log_scale: bool = False,
                 unit: str = "", digits: int = 2, id: str | None = None,
                 classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.title = title
        self.bands = bands
        self.log_scale = log_scale
        self.unit = unit
        self.digits = digits
        self.value: float | None = None
        self.note = ""

    def set_bands(self, bands: list[Band]) -> None:
        if bands != self.bands:
            self.bands = bands
            self.invalidate()

    def set_value(self, value: float | None, note: str = "") -> None:
        if value == self.value and note == self.note:
            return
        self.value, self.note = value, note
        self.invalidate()

    def band_of(self, value: float) -> Band | None:
        for band in self.bands:
            if band.lo <= value < band.hi:
                return band
        if self.bands and value >= self.bands[-1].hi:
            return self.bands[-1]
        return self.bands[0] if self.bands and value < self.bands[0].lo else None

    def _x(self, value: float, width: int) -> int:
        lo, hi = self.bands[0].lo, self.bands[-1].hi
        if self.log_scale:
            value, lo, hi = (math.log10(max(v, 1e-9)) for v in (value, lo, hi))
        frac = (value - lo) / (hi - lo) if hi > lo else 0.0
        return min(width - 1, max(0, int(frac * (width - 1) + 0.5)))

    def _fmt(self, value: float) -> str:
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if self.log_scale:
            # top-k routing costs well under a microsecond per token: keep what matters
            return f"{value:.2g}" if abs(value) < 10 else f"{value:.0f}"
        return f"{value:.{self.digits}f}"

    def layout_key(self) -> tuple[int, int]:
        return self.size.width, self.size.height

    def build_line(self, y: int) -> Strip:
        width, base = self.size.width, self.rich_style
        if y == 0 and self.size.height == 1:
            return self._one_line(width, base)
        if y == 0:
            segments = [Segment(self.title + " ", base + Style(bold=True))]
            if self.value is None or not math.isfinite(self.value):
                text = "nan" if self.value is not None else "no data yet"
                segments.append(Segment(text, base + Style(dim=True)))
            else:
                band = self.band_of(self.value)
                segments.append(Segment(f"{self._fmt(self.value)}{self.unit}", base))
                if band is not None:
                    segments.append(Segment(f"  {band.label}", base + Style(color=band.colour)))
            if self.note:
                segments.append(Segment(f"  {self.note}", base + Style(dim=True)))
            return Strip(segments)
        if y != 1 or width < 4 or not self.bands:
            return Strip.blank(width, base)
        return Strip(self._scale(width))

    def _one_line(self, width: int, base: Style) -> Strip:
        """A gauge one line tall (short terminals): title, value in its band's colour, the
        band's name where the scale keeps 16 cells, the scale."""
        segments = [Segment(self.title + " ", base + Style(bold=True))]
        if self.value is None or not math.isfinite(self.value):
            text = "nan " if self.value is not None else "no data yet "
            segments.append(Segment(text, base + Style(dim=True)))
        else:
            band = self.band_of(self.value)
            colour = Style(color=band.colour, bold=True) if band else Style()
            segments.append(Segment(f"{self._fmt(self.value)}{self.unit} ", base + colour))
            used = sum(s.cell_length for s in segments)
            if band is not None and width - used - len(band.label) - 1 >= 16:
                segments.append(Segment(f"{band.label} ", base + Style(color=band.colour)))
        used = sum(s.cell_length for s in segments)
        if self.bands and width - used >= 12:
            segments += self._scale(width - used)
        return Strip(segments)

    def _scale(self, width: int) -> list[Segment]:
        cells = [" "] * width
        colours = [""] * width
        for band in self.bands:
            start, end = self._x(band.lo, width), self._x(band.hi, width)
            for x in range(start, max(start + 1, end + 1)):
                colours[x] = band.colour
        # band edges written into the scale, where they fit without overlapping
        edges = sorted({b.lo for b in self.bands} | {self.bands[-1].hi})
        taken = -1
        for edge in edges:
            text = self._fmt(edge)
            if 0 < edge < 1 and not self.log_scale:
                text = text.rstrip("0").lstrip("0")  # ".1", ".25": edges need little room
            elif edge == 0:
                text = "0"
            x = min(self._x(edge, width), width - len(text))
            if x > taken:
                cells[x:x + len(text)] = list(text)
                taken = x + len(text)
        marker = None
        if self.value is not None and math.isfinite(self.value):
            marker = self._x(self.value, width)
        segments = []
        for x, char in enumerate(cells):
            style = Style(color="#101010", bgcolor=colours[x] or None, dim=False)
            if x == marker:
                char, style = "█", Style(color="#ffffff", bgcolor=colours[x] or None, bold=True)
            segments.append(Segment(char, style))
        return Segment.simplify(segments)
