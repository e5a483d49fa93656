"""ClassHeatmap: a routing analysis's expert-by-class shares, one row per token class.

Rows are token classes, columns experts; a cell is the share of that class's
assignments that went to the expert (each row sums to 100 %), coloured by share / fair
share on the expert-load palette and written in where the cell is wide enough. The
last line is the palette's legend. Wider than the screen scrolls, never wraps.
"""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip

from moedesk.tui import format as fmt
from moedesk.tui import palette
from moedesk.tui.widgets._cached_lines import CachedLines

MAX_CELL = 7  # "100.0%" plus a gap
MIN_NUMBER_CELL = 4  # narrower cells are colour only


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


class ClassHeatmap(CachedLines):
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
        self.invalidate(layout=True)

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

    def build_line(self, y: int) -> Strip:
        base = self.rich_style
        dim = base + Style(dim=True)
        if y == 0:
            return Strip([Segment(self.caption, base + Style(bold=True))])
        if not self.shares:
            return Strip([])
        label_w, tokens_w, cell_w = self._label_width(), self._tokens_width(), self.cell_width()
        if y == 1:
            head = f"{'class':>{label_w}} {'tokens':>{tokens_w}} "
            return Strip([Segment(head + axis_labels(self.num_experts, cell_w), dim)])
        row = y - 2
        if row == len(self.shares):
            return Strip(palette.legend_segments(self.size.width, dim))
        if row > len(self.shares):
            return Strip([])
        segments = [Segment(self.row_labels[row].rjust(label_w) + " ", dim),
                    Segment(fmt.count(self.row_tokens[row]).rjust(tokens_w) + " ", dim)]
        for e, lvl in enumerate(self.levels[row]):
            segments.append(palette.cell(lvl, cell_w, self.cell_text(row, e)))
        return Strip(segments)
