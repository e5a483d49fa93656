"""`loss-curves.png` of a comparison: training and validation loss of every seed, both models.

Left: the training loss per step, smoothed by a moving mean over 2% of the steps (the
raw curve is drawn faintly behind it); right: the validation loss at each evaluation.
One colour per model (the first two expert colours of the palette), one line style per
seed, so "is the gap bigger than the spread between seeds?" reads at a glance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from moedesk.plots.figure import new_figure, save
from moedesk.tui.palette import EXPERT_COLOURS

SEED_STYLES = ("-", "--", ":", "-.")
SMOOTH_SHARE = 0.02


@dataclass
class Curves:
    model: str  # the legend's name for the model (profile name)
    seed: int
    train: list[tuple[int, float]] = field(default_factory=list)  # (step, train/loss)
    val: list[tuple[int, float]] = field(default_factory=list)  # (step, val/loss)


def moving_mean(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` values (the first ones average what exists)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def loss_curves(curves: list[Curves], path: Path, title: str) -> Path:
    fig = new_figure(12.5, 4.6)
    ax_train, ax_val = fig.subplots(1, 2)
    models = list(dict.fromkeys(c.model for c in curves))
    colour = {m: EXPERT_COLOURS[i % len(EXPERT_COLOURS)] for i, m in enumerate(models)}
    drawn = dict.fromkeys(models, 0)  # curves of each model so far: its seeds' line styles
    for c in curves:
        style = SEED_STYLES[drawn[c.model] % len(SEED_STYLES)]
        drawn[c.model] += 1
        label = f"{c.model} seed {c.seed}"
        if c.train:
            steps, values = zip(*c.train, strict=True)
            window = max(1, round(SMOOTH_SHARE * len(values)))
            ax_train.plot(steps, values, color=colour[c.model], alpha=0.15, lw=0.6)
            ax_train.plot(steps, moving_mean(list(values), window), color=colour[c.model],
                          ls=style, lw=1.4, label=label)
        if c.val:
            steps, values = zip(*c.val, strict=True)
            ax_val.plot(steps, values, color=colour[c.model], ls=style, lw=1.4, marker="o",
                        ms=4, label=label)
    ax_train.set_title(f"training loss (moving mean over {SMOOTH_SHARE:.0%} of the steps)",
                       fontsize=10)
    ax_val.set_title("validation loss (the fixed evaluation windows)", fontsize=10)
    for ax, what in ((ax_train, "training"), (ax_val, "validation")):
        ax.set_xlabel("step")
        ax.set_ylabel(f"{what} loss (nats per token)")
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", useOffset=False)
        if ax.has_data():
            ax.legend(fontsize=8, ncols=2 if len(curves) > 4 else 1)
        else:
            ax.text(0.5, 0.5, f"no {what} loss recorded", ha="center", va="center",
                    transform=ax.transAxes)
    fig.suptitle(title, fontsize=11)
    return save(fig, path)
