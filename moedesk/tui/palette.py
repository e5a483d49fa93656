"""moedesk's colours: the expert-load heatmap scale, and one colour per expert id.

Heatmaps: load ratio (tokens / fair share) -> colour. 1.0 is a fair share (c_i = mean).
Under-used experts go blue, balanced green, over-used yellow to red; an expert with no
tokens is drawn apart (a dark cell with a red cross), since dead experts are what the
health rules look for. Styles and segments are built once and shared, so a heatmap
update allocates almost nothing.

Expert ids (`EXPERT_COLOURS`, `expert_style`): the per-token routing views (`moedesk
sample --routing`, `moedesk route`, the TUI's sample view) and the PNG plots colour
expert e with `EXPERT_COLOURS[e % len]`, with dark or light text by luminance.
Only rich is imported: the CLI and the plots read this module without Textual.
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
# categorical, distinct in hue and lightness (Tableau 10 plus two); ids past 12 repeat
EXPERT_COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2",
                  "#edc948", "#ff9da7", "#9c755f", "#bab0ac", "#86bcb6", "#d37295")


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


def readable_on(colour: str) -> str:
    """Dark or light text, whichever reads on `colour`."""
    light = Color.parse(colour).get_truecolor()
    luminance = 0.299 * light.red + 0.587 * light.green + 0.114 * light.blue
    return "#101010" if luminance > 140 else "#f0f0f0"


@cache
def _text_on(lvl: int) -> Style:
    fg = "#e04040" if lvl == DEAD else readable_on(COLOURS[lvl])
    return Style(color=fg, bgcolor=COLOURS[lvl])


def expert_colour(expert: int) -> str:
    return EXPERT_COLOURS[expert % len(EXPERT_COLOURS)]


@cache
def expert_style(expert: int) -> Style:
    """Text of a token routed to `expert`: its colour as the background."""
    colour = expert_colour(expert)
    return Style(color=readable_on(colour), bgcolor=colour)


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
