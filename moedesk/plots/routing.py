"""Seed 002's two routing plots from `routing/L{i}` payloads (one panel per MoE layer).

- `routing_analysis`: the per-expert assignment histogram on the validation windows:
  each expert's share of the (token, slot) assignments as a bar coloured by its load on
  the palette (dead experts marked), its share of first choices as a ring, and the fair
  share 1/E as a dashed line. Is it uniform? Skewed? Are some experts dead?
- `expert_by_class`: an expert x token-class heatmap: each cell is the share of a
  class's assignments that went to the expert (written in the cell), coloured by that
  share over the fair share 1/E. Do experts specialize on word classes?
The numbers are `moedesk.stats.routing`'s (the one definition the CLI and TUI show).
"""

from __future__ import annotations

from pathlib import Path

from moedesk.plots.figure import add_load_colourbar, load_colour, load_scale, new_figure, save
from moedesk.stats.load import load_stats
from moedesk.stats.routing import class_expert_shares, specialization
from moedesk.tui.palette import COLOURS, DEAD, readable_on

DEAD_MARK = "#d7301f"


def _expert_ticks(ax, num_experts: int) -> None:
    step = max(1, num_experts // 16)
    ticks = list(range(0, num_experts, step))
    ax.set_xticks(ticks, [f"E{e}" for e in ticks])


def _head(payload: dict) -> str:
    runs = f", {payload['runs']} runs pooled" if payload.get("runs", 1) > 1 else ""
    return (f"block {payload['layer']}: {payload['tokens']:,} validation tokens × "
            f"top-{payload['top_k']}{runs}")


def routing_analysis(payloads: dict[int, dict], path: Path, title: str) -> Path:
    layers = sorted(payloads)
    width = max(5.5, 1.6 + 0.45 * payloads[layers[0]]["num_experts"])
    fig = new_figure(width * len(layers) + 1.2, 4.2)
    axes = fig.subplots(1, len(layers), squeeze=False)[0]
    for ax, layer in zip(axes, layers, strict=True):
        payload = payloads[layer]
        num_experts = payload["num_experts"]
        hist, first = payload["histogram"], payload["first_choice"]
        total, n_first = sum(hist) or 1, sum(first) or 1
        shares = [100 * c / total for c in hist]
        experts = list(range(num_experts))
        ax.bar(experts, shares, color=[load_colour(s * num_experts / 100) for s in shares],
               edgecolor="#303030", linewidth=0.6, label="all assignments")
        ax.plot(experts, [100 * c / n_first for c in first], "o", mfc="none", mec="#202020",
                ms=7, label="first choices only")
        fair = 100 / num_experts
        ax.axhline(fair, ls="--", lw=1.2, color="#505050", label=f"fair share {fair:.1f}%")
        top = max([*shares, *(100 * c / n_first for c in first), fair])
        for e, count in enumerate(hist):
            if count == 0:
                ax.text(e, top * 0.04, "dead", ha="center", va="bottom", rotation=90,
                        color=DEAD_MARK, fontweight="bold")
        ax.set_ylim(0, top * 1.25)
        _expert_ticks(ax, num_experts)
        ax.set_xlabel("expert")
        ax.set_ylabel("share of (token, slot) assignments (%)")
        spec = specialization(payload)
        usage_std = load_stats(hist, payload["top_k"])["usage_std"]
        ax.set_title(f"{_head(payload)}\nusage std {usage_std:.3f} · "
                     f"U(class) {spec['class']['u']:.2f} · U(frequency) "
                     f"{spec['frequency']['u']:.2f}", fontsize=9)
        ax.legend(fontsize=8, loc="upper right", framealpha=0.9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=11)
    add_load_colourbar(fig, list(axes))
    return save(fig, path)


def expert_by_class(payloads: dict[int, dict], path: Path, title: str) -> Path:
    import numpy as np

    layers = sorted(payloads)
    rows_of = {}
    for layer in layers:
        payload = payloads[layer]
        shares = class_expert_shares(payload)
        rows_of[layer] = [(name, n, row) for name, n, row in
                          zip(payload["classes"], payload["class_tokens"], shares, strict=True)
                          if n]
    num_experts = payloads[layers[0]]["num_experts"]
    n_rows = max(len(r) for r in rows_of.values())
    fig = new_figure((2.6 + 0.62 * num_experts) * len(layers) + 1.4, 1.6 + 0.34 * n_rows)
    axes = fig.subplots(1, len(layers), squeeze=False)[0]
    cmap, norm = load_scale()
    for ax, layer in zip(axes, layers, strict=True):
        rows = rows_of[layer]
        share_CE = np.array([row for _, _, row in rows])
        ratio_CE = np.ma.masked_equal(share_CE * num_experts, 0.0)  # zero: dead colour
        ax.imshow(ratio_CE, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
        for c in range(share_CE.shape[0]):
            for e in range(share_CE.shape[1]):
                value = share_CE[c, e]
                colour = COLOURS[DEAD] if value == 0 else load_colour(value * num_experts)
                text = f"{100 * value:.0f}" if value >= 0.005 else "<1" if value else "0"
                ax.text(e, c, text, ha="center", va="center", fontsize=7,
                        color=readable_on(colour))
        ax.set_yticks(range(len(rows)), [f"{name} ({n:,})" for name, n, _ in rows], fontsize=8)
        _expert_ticks(ax, num_experts)
        ax.set_xlabel("expert")
        ax.set_ylabel("token class (tokens)")
        ax.set_title(f"{_head(payloads[layer])}\n% of each class's assignments per expert "
                     f"(fair {100 / num_experts:.0f}%)", fontsize=9)
    fig.suptitle(title, fontsize=11)
    add_load_colourbar(fig, list(axes))
    return save(fig, path)


