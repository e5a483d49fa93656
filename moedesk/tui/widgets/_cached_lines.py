"""CachedLines: the base of every widget the TUI draws line by line from cached Strips.

A subclass builds one line in `build_line(y)`; the base keeps each built Strip until the
data or the layout changes, so a repaint of an unchanged widget costs a dict lookup.
`layout_key()` names what the lines depend on besides the data (the width by default;
the heatmap adds whether two rows share a line): when it moves, every line is rebuilt.
Data changes call `invalidate()` (all lines) or `invalidate_line(y)` (one line).
Used by ExpertHeatmap, ExpertTimeline, BandGauge, ExpertBars and ClassHeatmap.
"""

from __future__ import annotations

from collections.abc import Hashable

from textual.geometry import Region
from textual.strip import Strip
from textual.widget import Widget


class CachedLines(Widget):
    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self._lines: dict[int, Strip] = {}
        self._layout_key: Hashable = None

    def layout_key(self) -> Hashable:
        return self.size.width

    def build_line(self, y: int) -> Strip:
        """Line `y` of the widget; the base pads or crops it to the width."""
        raise NotImplementedError

    def invalidate(self, layout: bool = False) -> None:
        """Forget every line (the data changed); `layout` when the height may change."""
        self._lines.clear()
        self.refresh(layout=layout)

    def invalidate_line(self, y: int) -> None:
        if self._lines.pop(y, None) is not None:
            self.refresh(Region(0, y, self.size.width, 1))

    def cached_lines(self) -> list[int]:
        """The lines built and kept so far (a subclass may invalidate some of them)."""
        return list(self._lines)

    def render_line(self, y: int) -> Strip:
        key = self.layout_key()
        if key != self._layout_key:
            self._lines.clear()
            self._layout_key = key
        strip = self._lines.get(y)
        if strip is None:
            strip = self._lines[y] = self.build_line(y).adjust_cell_length(self.size.width,
                                                                          self.rich_style)
        return strip
