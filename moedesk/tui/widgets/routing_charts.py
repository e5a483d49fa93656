"""Routing-analysis charts: the per-expert assignment bars and the expert-by-class heatmap.

Both colour a value by its share relative to the fair share 1/E, on the expert-load
palette (`palette.level`), so "fair", "hot" and "dead" read the same as in the monitor's
heatmap. Like `ExpertHeatmap` they draw with `render_line` from cached Strips: a line is
built once per width and reused until new data arrives (an evaluation, not every step).
"""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget

from moedesk.tui import format as fmt
from moedesk.tui import palette

MAX_CELL = 7  # "100.0%" plus a gap
MIN_NUMBER_CELL = 4  # narrower cells are colour only
EIGHTHS = " ▏▎▍▌▋▊▉"


def share_text(share: float, width: int) -> str:
    """A share written to fit `width` characters: '12.5%', '13%', '13', or '0'."""
    if share <= 0:
        return "0"
    pct = 100 * share
    for text in (f"{pct:.1f}%", f"{pct:.0f}%", f"{pct:.0f}"):
        if len(text) <= width:
            return text
    return ""


def axis_labels(n: int, cell_w: int) -> str:
    """Expert numbers under `n` columns of `cell_w` cells, skipping those that would collide."""
    chars = [" "] * (n * cell_w)
    free_from = 0
    for e in range(n):
        text = f"E{e}" if len(f"E{e}") <= cell_w else str(e)
        start = e * cell_w + max(0, (cell_w - len(text)) // 2)
        if start < free_from or start + len(text) > len(chars):
            continue
        chars[start:start + len(text)] = text
        free_from = start + len(text) + 1
    return "".join(chars)


class _CachedLines(Widget):
    """A widget drawn line by line; lines are cached until the width or the data changes."""

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self._lines: dict[int, Strip] = {}
        self._width = -1

    def _changed(self) -> None:
        self._lines.clear()
        self.refresh(layout=True)

    def render_line(self, y: int) -> Strip:
        if self.size.width != self._width:
            self._lines.clear()
            self._width = self.size.width
        strip = self._lines.get(y)
        if strip is None:
            segments = self._segments(y, self.rich_style, self.rich_style + Style(dim=True))
            strip = self._lines[y] = Strip(segments).adjust_cell_length(self.size.width,
                                                                        self.rich_style)
        return strip

    def _segments(self, y: int, base: Style, dim: Style) -> list[Segment]:
        raise NotImplementedError


class ExpertBars(_CachedLines):
    """One line per expert: assignments, share, first-choice share and a bar (max share = full)."""

    DEFAULT_CSS = "ExpertBars { height: auto; }"

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.caption = ""
        self.counts: list[int] = []
        self.first_choice: list[int] = []

    def set_counts(self, counts: list[int], first_choice: list[int], caption: str) -> None:
        self.counts, self.first_choice, self.caption = list(counts), list(first_choice), caption
        self._changed()

    @property
    def shares(self) -> list[float]:
        total = sum(self.counts)
        return [c / total if total else 0.0 for c in self.counts]

    def get_content_height(self, container, viewport, width: int) -> int:
        return 1 + (1 + len(self.counts) if self.counts else 0)

    def _columns(self) -> tuple[int, int]:
        label_w = len(f"E{max(0, len(self.counts) - 1)}")
        count_w = max([len("count"), *(len(f"{c:,}") for c in self.counts)])
        return label_w, count_w

    def _segments(self, y: int, base: Style, dim: Style) -> list[Segment]:
        if y == 0:
            return [Segment(self.caption, base + Style(bold=True))]
        if not self.counts or y > len(self.counts) + 1:
            return []
        label_w, count_w = self._columns()
        if y == 1:
            return [Segment(f"{'':{label_w}} {'count':>{count_w}}  {'share':>6}  {'first':>6}",
                            dim)]
        e = y - 2
        shares = self.shares
        n_first = sum(self.first_choice)
        first = self.first_choice[e] / n_first if n_first else 0.0
        segments = [Segment(f"E{e}".ljust(label_w) + " ", dim),
                    Segment(f"{self.counts[e]:>{count_w},}  {shares[e]:>6.1%}  ", base),
                    Segment(f"{first:>6.1%}  ", dim)]
        used = label_w + 1 + count_w + 2 + 6 + 2 + 6 + 2
        bar_w = max(1, self.size.width - used)
        top = max(shares)
        if self.counts[e] == 0:
            segments.append(palette.cell(palette.DEAD, 1))
            return segments
        ratio = shares[e] * len(self.counts)
        eighths = max(1, round(8 * bar_w * shares[e] / top)) if top else 0
        bar = "█" * (eighths // 8) + (EIGHTHS[eighths % 8] if eighths % 8 else "")
        segments.append(Segment(bar, base + Style(color=palette.COLOURS[palette.level(ratio)])))
        # the fair share as a tick, where it lies past the bar's end
        fair_at = round(bar_w / len(self.counts) / top) if top else 0
        if fair_at > len(bar):
            segments.append(Segment(" " * (fair_at - len(bar) - 1) + "┆", dim))
        return segments


class ClassHeatmap(_CachedLines):
    """Rows = token classes, columns = experts; a cell = the share of the class's assignments
    that went to the expert, coloured by share / fair share, written where it fits."""

    DEFAULT_CSS = "ClassHeatmap { height: auto; }"

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.caption = ""
        self.row_labels: list[str] = []
        self.row_tokens: list[int] = []
        self.shares: list[list[float]] = []  # [row][expert]
        self.levels: list[tuple[int, ...]] = []
        self.num_experts = 0

    def set_grid(self, row_labels: list[str], row_tokens: list[int],
                 shares: list[list[float]], caption: str) -> None:
        self.row_labels, self.row_tokens = list(row_labels), list(row_tokens)
        self.shares = [list(row) for row in shares]
        self.num_experts = max((len(row) for row in self.shares), default=0)
        # share / fair share, the load ratio the palette is made for
        self.levels = [tuple(palette.level(s * self.num_experts) for s in row)
                       for row in self.shares]
        self.caption = caption
        # one column per expert at the least: wider than the screen scrolls, never wraps
        self.styles.min_width = self._fixed_width() + self.num_experts
        self._changed()

    def clear_grid(self, caption: str) -> None:
        self.set_grid([], [], [], caption)

    # geometry

    def _label_width(self) -> int:
        return max([len("class"), *(len(label) for label in self.row_labels)])

    def _tokens_width(self) -> int:
        return max([len("tokens"), *(len(fmt.count(t)) for t in self.row_tokens)])

    def _fixed_width(self) -> int:
        return self._label_width() + 1 + self._tokens_width() + 1

    def cell_width(self) -> int:
        usable = self.size.width - self._fixed_width()
        return max(1, min(MAX_CELL, usable // max(1, self.num_experts)))

    def get_content_height(self, container, viewport, width: int) -> int:
        return 1 + (len(self.shares) + 2 if self.shares else 0)  # caption, axis, rows, legend

    # drawing

    def cell_text(self, row: int, expert: int) -> str:
        cell_w = self.cell_width()
        if cell_w < MIN_NUMBER_CELL:
            return ""
        return share_text(self.shares[row][expert], cell_w - 1)

    def _segments(self, y: int, base: Style, dim: Style) -> list[Segment]:
        if y == 0:
            return [Segment(self.caption, base + Style(bold=True))]
        if not self.shares:
            return []
        label_w, tokens_w, cell_w = self._label_width(), self._tokens_width(), self.cell_width()
        if y == 1:
            head = f"{'class':>{label_w}} {'tokens':>{tokens_w}} "
            return [Segment(head + axis_labels(self.num_experts, cell_w), dim)]
        row = y - 2
        if row == len(self.shares):
            return palette.legend_segments(self.size.width, dim)
        if row > len(self.shares):
            return []
        segments = [Segment(self.row_labels[row].rjust(label_w) + " ", dim),
                    Segment(fmt.count(self.row_tokens[row]).rjust(tokens_w) + " ", dim)]
        for e, lvl in enumerate(self.levels[row]):
            segments.append(palette.cell(lvl, cell_w, self.cell_text(row, e)))
        return segments
