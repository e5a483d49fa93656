"""ExpertTimeline: experts (top-k) or routing clusters (ternary) over the last logged steps.

One column per logged step, newest on the right, two rows per line (upper half-block
over lower), coloured by load ratio with the heatmap's scale. It shows what a single
snapshot cannot: an expert drifting towards dead, or routing that oscillates.
"""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip

from moedesk.tui import palette
from moedesk.tui.widgets._cached_lines import CachedLines

MAX_COLUMNS = 512


class ExpertTimeline(CachedLines):
    DEFAULT_CSS = "ExpertTimeline { height: auto; }"

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.columns: list[tuple[int, tuple[int, ...]]] = []  # (step, level per row)
        self.row_name = "expert"
        self.num_rows = 0
        self._level_cache: dict[int, tuple[int, ...]] = {}
        self._generation = 0

    def set_columns(self, columns: list[tuple[int, tuple[float, ...]]], row_name: str,
                    generation: int = 0) -> None:
        """Show the history: (step, load ratio per expert or cluster) per column, oldest first.

        At most `MAX_COLUMNS` columns are kept (the widest screen shows fewer); each is
        levelled once, cached by step until the run's `generation` moves (a resume
        replaced the steps). Drawing takes as many of the newest as the width allows.
        """
        if generation != self._generation:
            self._level_cache.clear()
            self._generation = generation
        keep = MAX_COLUMNS
        shown = []
        for step, ratios in columns[-keep:]:
            levels = self._level_cache.get(step)
            if levels is None:
                levels = self._level_cache[step] = tuple(palette.level(r) for r in ratios)
            shown.append((step, levels))
        if len(self._level_cache) > 4 * keep:
            wanted = {step for step, _ in shown}
            self._level_cache = {s: v for s, v in self._level_cache.items() if s in wanted}
        self.columns = shown
        num_rows = max((len(levels) for _, levels in shown), default=0)
        relayout = num_rows != self.num_rows or row_name != self.row_name
        self.num_rows, self.row_name = num_rows, row_name
        self.invalidate(layout=relayout)

    def get_content_height(self, container, viewport, width: int) -> int:
        return 1 + (self.num_rows + 1) // 2

    def visible_columns(self) -> int:
        return max(0, self.size.width - self._label_width())

    def _label_width(self) -> int:
        return len(f"{max(0, self.num_rows - 1)}") * 2 + 2

    def build_line(self, y: int) -> Strip:
        width = self.size.width
        base = self.rich_style
        dim = base + Style(dim=True)
        shown = self.columns[-self.visible_columns():] if self.visible_columns() else []
        if y == 0:
            if not shown:
                text = f"{self.row_name}s over time: waiting for expert load"
            else:
                text = (f"{self.row_name}s over time, steps {shown[0][0]}..{shown[-1][0]}"
                        f" (rows {self.row_name} 0..{self.num_rows - 1})")
            return Strip([Segment(text, dim)])
        top = 2 * (y - 1)
        if top >= self.num_rows:
            return Strip.blank(width, base)
        label_w = self._label_width()
        label = f"{top}" + (f"/{top + 1}" if top + 1 < self.num_rows else "")
        segments = [Segment(label.rjust(label_w - 1) + " ", dim)]
        # runs of identical cells become one segment, so a steady expert costs one segment
        run_key, run_len = None, 0
        for _, levels in shown:
            upper = levels[top] if top < len(levels) else palette.DEAD
            lower = levels[top + 1] if top + 1 < len(levels) else None
            key = (upper, lower)
            if key == run_key:
                run_len += 1
                continue
            if run_key is not None:
                segments.append(self._cell(run_key, run_len))
            run_key, run_len = key, 1
        if run_key is not None:
            segments.append(self._cell(run_key, run_len))
        return Strip(segments)

    @staticmethod
    def _cell(key: tuple[int, int | None], length: int) -> Segment:
        upper, lower = key
        if lower is None:
            return Segment("▀" * length, Style(color=palette.COLOURS[upper]))
        return palette.half_cell(upper, lower, length)
