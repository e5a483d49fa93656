"""The colour scale of expert-load heatmaps: load ratio (tokens / fair share) -> colour.

1.0 is a fair share (c_i = mean). Under-used experts go blue, balanced green, over-used
yellow to red; an expert with no tokens is drawn apart (a dark cell with a red cross),
since dead experts are what the health rules look for. Styles and segments are built
once and shared, so a heatmap update allocates almost nothing.
"""

from __future__ import annotations

from functools import cache, lru_cache

from rich.color import Color
from rich.segment import Segment
from rich.style import Style

# upper bounds of each level's load ratio; level 0 is "dead" (exactly zero tokens)
BOUNDS = (0.25, 0.5, 0.8, 1.25, 2.0, 4.0, float("inf"))
COLOURS = ("#262626", "#084594", "#2171b5", "#6baed6", "#41ab5d", "#fed976", "#fd8d3c", "#d7301f")
LEGEND_LABELS = ("dead", "<¼", "½", ".8", "fair", "2×", "4×", ">4×")
NUM_LEVELS = len(COLOURS)
DEAD = 0


def level(ratio: float) -> int:
    """The colour level of a load ratio (NaN and negatives count as dead)."""
    if not ratio > 0:
        return DEAD
    for i, bound in enumerate(BOUNDS):
        if ratio < bound:
            return i + 1
    return NUM_LEVELS - 1


@cache
def background(lvl: int) -> Style:
    return Style(bgcolor=COLOURS[lvl])


@cache
def _text_on(lvl: int) -> Style:
    light = Color.parse(COLOURS[lvl]).get_truecolor()
    luminance = 0.299 * light.red + 0.587 * light.green + 0.114 * light.blue
    fg = "#101010" if luminance > 140 else "#f0f0f0"
    if lvl == DEAD:
        fg = "#e04040"
    return Style(color=fg, bgcolor=COLOURS[lvl])


@lru_cache(maxsize=4096)
def cell(lvl: int, width: int, text: str = "") -> Segment:
    """A `width`-wide cell of level `lvl`, optionally with centred text."""
    if lvl == DEAD and not text:
        text = "×" if width >= 1 else ""
    return Segment(text[:width].center(width), _text_on(lvl))


@lru_cache(maxsize=8192)
def half_cell(top: int, bottom: int, width: int) -> Segment:
    """Two rows in one line: the upper half-block in `top`'s colour over `bottom`'s."""
    style = Style(color=COLOURS[top], bgcolor=COLOURS[bottom])
    return Segment("▀" * width, style)


def legend_segments(width: int, label_style: Style) -> list[Segment]:
    """"load: ×dead <¼ ½ .8 fair 2× 4× >4×" squeezed into `width` cells."""
    segments = [Segment("share vs fair ", label_style)]
    for lvl, label in enumerate(LEGEND_LABELS):
        segments.append(cell(lvl, 1, "×" if lvl == DEAD else " "))
        segments.append(Segment(label + " ", label_style))
    total = sum(s.cell_length for s in segments)
    if total > width:
        segments = segments[1:]  # drop the caption first; the swatches matter most
    return segments


def format_ratio(ratio: float, width: int) -> str:
    """A load ratio written to fit a cell: '1.2', '.35', '12', '0'."""
    if ratio <= 0:
        return "0"
    if ratio >= 10:
        return f"{ratio:.0f}"[:width]
    text = f"{ratio:.1f}" if ratio >= 1 else f"{ratio:.2f}".lstrip("0")
    return text[:width]
