"""What every moedesk plot shares: headless figures, the load colour scale, saving.

Figures are plain `matplotlib.figure.Figure` objects drawn by the Agg backend (no
pyplot, no display, no global state), so plotting works over SSH, in threads and in
tests. The colour scale of routing heatmaps and histogram bars is the TUI's expert-load
palette (`moedesk.tui.palette`: dead, < 1/4, 1/2, .8, fair, 2x, 4x, > 4x of the fair
share), so a plot reads like the terminal views.
"""

from __future__ import annotations

from pathlib import Path

from moedesk.tui.palette import BOUNDS, COLOURS, DEAD

DPI = 130
# the palette's level bounds as colour-bar edges; past the last one everything is "> 4x"
LOAD_EDGES = (0.0, *BOUNDS[:-1], 2 * BOUNDS[-2])
LOAD_LABEL = "load = share ÷ fair share (×, 1 = fair; black = none)"


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def load_scale():
    """(colormap, norm) of load ratios on the palette's levels; a masked value is dead."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    cmap = ListedColormap(list(COLOURS[DEAD + 1:]), name="moedesk-load").with_extremes(
        bad=COLOURS[DEAD], over=COLOURS[-1])
    return cmap, BoundaryNorm(list(LOAD_EDGES), cmap.N)


def load_colour(ratio: float) -> str:
    """The palette colour of one load ratio (for bars)."""
    from moedesk.tui.palette import level

    return COLOURS[level(ratio)]


def add_load_colourbar(fig, axes) -> None:
    from matplotlib.cm import ScalarMappable

    cmap, norm = load_scale()
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, extend="max",
                       ticks=list(LOAD_EDGES), shrink=0.9, pad=0.02)
    bar.ax.set_yticklabels([f"{b:g}" for b in LOAD_EDGES])
    bar.set_label(LOAD_LABEL)


def save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path
