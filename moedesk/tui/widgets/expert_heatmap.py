"""ExpertHeatmap: the newest expert load as a grid, drawn line by line from cached segments.

Top-k runs: one row per MoE layer, one column per expert. Ternary runs: the 243 experts
as a grid with one row per routing cluster (rows of 27 for a flat router). Each cell is
the expert's load ratio (tokens / fair share, from `moedesk.stats.load`); the last line
is the colour legend. When rows outnumber the lines available two rows share a line
(upper half-block over lower). An update only swaps the level grid and drops the cached
lines that changed (`CachedLines`); a line is rebuilt from shared segments (`palette`),
which keeps a 243-expert update well under the 8 ms budget a Static with Rich text misses.
"""

from __future__ import annotations

from collections.abc import Hashable

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip

from moedesk.tui import palette
from moedesk.tui.widgets._cached_lines import CachedLines


class ExpertHeatmap(CachedLines):
    DEFAULT_CSS = "ExpertHeatmap { height: auto; }"

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.row_labels: list[str] = []
        self.ratios: list[list[float]] = []
        self.levels: list[tuple[int, ...]] = []
        self.caption = "waiting for expert load"
        self.max_lines = 8

    def set_grid(self, row_labels: list[str], ratios: list[list[float]], caption: str) -> None:
        """Show a new grid of load ratios (rows x experts); redraws only lines that changed."""
        levels = [tuple(palette.level(r) for r in row) for row in ratios]
        shape_changed = len(levels) != len(self.levels) or row_labels != self.row_labels
        old_levels = self.levels
        self.row_labels, self.ratios, self.levels = row_labels, ratios, levels
        changed_caption = caption != self.caption
        self.caption = caption
        if shape_changed:
            self.invalidate(layout=True)
            return
        if self._numbers_shown():
            self.invalidate()  # the numbers change even when the colours do not
            return
        packed = self._packed()
        for y in self.cached_lines():
            if y == 0:
                continue
            grid_line = y - 1  # line 0 is the caption
            rows = (2 * grid_line, 2 * grid_line + 1) if packed else (grid_line,)
            if any(r < len(levels) and levels[r] != old_levels[r] for r in rows):
                self.invalidate_line(y)
        if changed_caption:
            self.invalidate_line(0)

    def clear_grid(self, caption: str) -> None:
        self.set_grid([], [], caption)

    # geometry

    def _packed(self) -> bool:
        return len(self.levels) > self.max_lines

    def _grid_lines(self) -> int:
        n = len(self.levels)
        return (n + 1) // 2 if self._packed() else n

    def _label_width(self) -> int:
        return max((len(label) for label in self.row_labels), default=0) + 1

    def _cell_width(self) -> int:
        cols = max((len(row) for row in self.levels), default=1)
        usable = max(1, self.size.width - self._label_width())
        return max(1, min(6, usable // max(1, cols)))

    def _numbers_shown(self) -> bool:
        return not self._packed() and self._cell_width() >= 4

    def get_content_height(self, container, viewport, width: int) -> int:
        return 1 + self._grid_lines() + 1  # caption, grid, legend

    # drawing

    def layout_key(self) -> Hashable:
        return self.size.width, self._packed()

    def build_line(self, y: int) -> Strip:
        width = self.size.width
        base = self.rich_style
        label_style = base + Style(dim=True)
        grid_lines = self._grid_lines()
        if y == 0:
            segments = [Segment(self.caption, base + Style(bold=True))]
        elif y <= grid_lines:
            segments = self._grid_segments(y - 1, label_style)
        elif y == grid_lines + 1:
            segments = palette.legend_segments(width, label_style)
        else:
            segments = []
        return Strip(segments)

    def _grid_segments(self, line: int, label_style: Style) -> list[Segment]:
        label_w, cell_w = self._label_width(), self._cell_width()
        if self._packed():
            top = 2 * line
            label = self.row_labels[top] if top < len(self.row_labels) else ""
            upper = self.levels[top]
            lower = self.levels[top + 1] if top + 1 < len(self.levels) else ()
            segments = [Segment(label.rjust(label_w - 1) + " ", label_style)]
            for i, lvl in enumerate(upper):
                below = lower[i] if i < len(lower) else None
                if below is None:
                    segments.append(Segment("▀" * cell_w, Style(color=palette.COLOURS[lvl])))
                else:
                    segments.append(palette.half_cell(lvl, below, cell_w))
            return segments
        segments = [Segment(self.row_labels[line].rjust(label_w - 1) + " ", label_style)]
        numbers = self._numbers_shown()
        for lvl, ratio in zip(self.levels[line], self.ratios[line], strict=True):
            text = palette.format_ratio(ratio, cell_w - 1) if numbers else ""
            segments.append(palette.cell(lvl, cell_w, text))
        return segments
