"""ExpertBars: a routing analysis's per-expert assignments, one line per expert.

Each line: the count of (token, slot) assignments, its share, the first-choice share,
and a bar scaled to the largest share. The bar's colour is the share against the fair
share 1/E on the expert-load palette (`palette.level`), so "fair", "hot" and "dead" read
as in the monitor's heatmap; a `┆` marks the fair share where it lies past the bar.
"""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip

from moedesk.tui import palette
from moedesk.tui.widgets._cached_lines import CachedLines

EIGHTHS = " ▏▎▍▌▋▊▉"


class ExpertBars(CachedLines):
    DEFAULT_CSS = "ExpertBars { height: auto; }"

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.caption = ""
        self.counts: list[int] = []
        self.first_choice: list[int] = []

    def set_counts(self, counts: list[int], first_choice: list[int], caption: str) -> None:
        self.counts, self.first_choice, self.caption = list(counts), list(first_choice), caption
        self.invalidate(layout=True)

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

    def build_line(self, y: int) -> Strip:
        base = self.rich_style
        dim = base + Style(dim=True)
        if y == 0:
            return Strip([Segment(self.caption, base + Style(bold=True))])
        if not self.counts or y > len(self.counts) + 1:
            return Strip([])
        label_w, count_w = self._columns()
        if y == 1:
            return Strip([Segment(
                f"{'':{label_w}} {'count':>{count_w}}  {'share':>6}  {'first':>6}", dim)])
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
            return Strip(segments)
        ratio = shares[e] * len(self.counts)
        eighths = max(1, round(8 * bar_w * shares[e] / top)) if top else 0
        bar = "█" * (eighths // 8) + (EIGHTHS[eighths % 8] if eighths % 8 else "")
        segments.append(Segment(bar, base + Style(color=palette.COLOURS[palette.level(ratio)])))
        # the fair share as a tick, where it lies past the bar's end
        fair_at = round(bar_w / len(self.counts) / top) if top else 0
        if fair_at > len(bar):
            segments.append(Segment(" " * (fair_at - len(bar) - 1) + "┆", dim))
        return Strip(segments)
