"""RoutingScreen: a topk run's routing analysis, one MoE layer at a time (`g` in the monitor).

It shows what `moedesk analysis RUN` prints, for the newest evaluation: the layers and
the step, a one-line reading of specialization, the per-expert assignment bars and the
expert-by-class heatmap. All numbers come from `moedesk.compare.routing`: the shares
(`class_expert_shares`) and the U statistics (`specialization`). The rows are the
`routing/L{i}` analysis rows (`moedesk.store.analysis`). They are read in a thread
worker over a read-only Reader. Once every `CHECK_S` seconds a worker compares each
layer's analysis steps with those on screen, and reloads only when they moved.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, ScrollableContainer
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from moedesk.compare.routing import SPECIALIZATION_THRESHOLD, class_expert_shares, specialization
from moedesk.paths import db_path
from moedesk.store import Reader, StoreError
from moedesk.store.analysis import ROUTING_PREFIX, analysis_names, analysis_steps, latest_routing
from moedesk.tui.widgets.class_heatmap import ClassHeatmap
from moedesk.tui.widgets.expert_bars import ExpertBars

CHECK_S = 1.0



class RoutingScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="routing-back"),
        Binding("left_square_bracket", "layer(-1)", "Prev layer", id="routing-prev-layer"),
        Binding("right_square_bracket", "layer(1)", "Next layer", id="routing-next-layer"),
        # priority: the scroll area would take the arrows for sideways scrolling
        Binding("left", "layer(-1)", "Prev layer", show=False, priority=True,
                id="routing-prev-layer-arrow"),
        Binding("right", "layer(1)", "Next layer", show=False, priority=True,
                id="routing-next-layer-arrow"),
    ]

    @dataclass
    class Loaded(Message):
        key: tuple | None  # the analysis steps of each routing layer, as read
        routing: dict[int, tuple[int, dict]] | None  # {layer: (step, payload)}
        error: str | None

    def __init__(self, run_id: int):
        super().__init__()
        self.run_id = run_id
        self.routing: dict[int, tuple[int, dict]] = {}
        self.shown_layer: int | None = None
        self.loads = 0  # applied loads (tests wait on it)
        self.error: str | None = None
        self._key: tuple | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with ScrollableContainer(id="routing-scroll"):
            yield Static(id="routing-head")
            with Container(id="routing-panels"):
                yield ExpertBars(id="routing-bars")
                yield ClassHeatmap(id="routing-classes")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.title = "moedesk"
        row = next((r for r in self.app.runs if r.id == self.run_id), None)
        self.sub_title = f"{row.name if row else f'run {self.run_id}'} · routing analysis"
        self.query_one("#routing-head", Static).update("reading the routing analysis…")
        self._refresh()
        self.set_interval(CHECK_S, self._refresh)

    # reading, off the UI thread

    @work(thread=True, exclusive=True, group="routing-load", exit_on_error=False)
    def _refresh(self) -> None:
        known = self._key
        try:
            reader = Reader(db_path(Path(self.app.home)))
        except StoreError as exc:
            self.post_message(self.Loaded(None, None, str(exc)))
            return
        try:
            names = [n for n in analysis_names(reader, self.run_id)
                     if n.startswith(ROUTING_PREFIX)]
            key = tuple((n, tuple(analysis_steps(reader, self.run_id, n))) for n in names)
            if key == known:
                return
            routing = latest_routing(reader, self.run_id)
        except sqlite3.Error as exc:
            self.post_message(self.Loaded(None, None, f"cannot read the routing analysis: {exc}"))
            return
        finally:
            reader.close()
        self.post_message(self.Loaded(key, routing, None))

    def on_routing_screen_loaded(self, message: Loaded) -> None:
        self.error = message.error
        if message.error is not None:
            self._key = None  # read everything again once the store answers
        else:
            self._key, self.routing = message.key, message.routing or {}
            if self.shown_layer not in self.routing:
                self.shown_layer = min(self.routing, default=None)
        self._show()
        self.loads += 1

    # drawing

    def _show(self) -> None:
        head = self.query_one("#routing-head", Static)
        bars = self.query_one(ExpertBars)
        heatmap = self.query_one(ClassHeatmap)
        if self.error or self.shown_layer is None:
            head.update(Text(self.error, style="#ff5f5f") if self.error else Text(
                "no routing analysis yet: a topk run records one at each evaluation "
                "(train.eval_every) and at its end; this view shows it when it arrives",
                style="italic"))
            bars.set_counts([], [], "")
            heatmap.clear_grid("")
            return
        step, payload = self.routing[self.shown_layer]
        head.update(self._head_text(step, payload))
        num_experts = payload["num_experts"]
        bars.set_counts(payload["histogram"], payload["first_choice"],
                        f"per-expert assignments (fair share {1 / num_experts:.1%})")
        # empty classes say nothing about routing (the CLI leaves them out too)
        rows = [(label, n, shares) for label, n, shares in
                zip(payload["classes"], payload["class_tokens"], class_expert_shares(payload),
                    strict=True) if n]
        heatmap.set_grid([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                         f"share of each class's assignments per expert (fair {1 / num_experts:.1%})")

    def _head_text(self, step: int, payload: dict) -> Text:
        spec = specialization(payload)
        text = Text()
        text.append("layer ", style="dim")
        for layer in sorted(self.routing):
            style = "bold reverse" if layer == self.shown_layer else "dim"
            text.append(f" L{layer} ", style=style)
            text.append(" ")
        text.append(f" step {step}", style="bold")
        text.append(f" · {payload['tokens']:,} validation tokens × top-{payload['top_k']}\n",
                    style="dim")
        text.append("specialization: ")
        text.append(spec["pattern"], style="bold")
        text.append(f" · class U = {spec['class']['u']:.3f}"
                    f" · frequency U = {spec['frequency']['u']:.3f}\n")
        text.append("U = routing entropy explained by the property (0 none, 1 all; "
                    f"≥ {SPECIALIZATION_THRESHOLD:.2f} counts)", style="dim")
        return text

    # actions

    def action_layer(self, delta: int) -> None:
        layers = sorted(self.routing)
        if not layers or self.shown_layer is None:
            return
        self.shown_layer = layers[(layers.index(self.shown_layer) + delta) % len(layers)]
        self._show()
