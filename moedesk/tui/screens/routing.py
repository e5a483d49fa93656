"""RoutingScreen: a topk run's routing analysis, one MoE layer at a time (`g` in the monitor).

It shows what `moedesk analysis RUN` prints, for the newest evaluation: the layers and
the step, a one-line reading of specialization, the per-expert assignment bars and the
expert-by-class heatmap. All numbers come from `moedesk.stats.routing`: the shares
(`class_expert_shares`) and the U statistics (`specialization`). The rows are the
`routing/L{i}` analysis rows (`moedesk.store.analysis`), read with
`reading.read_in_worker`, and shaped into a `LayerView` per layer in that worker: a
damaged payload becomes that layer's error line, never an exception on the UI thread.
Once every `CHECK_S` seconds a worker compares each layer's analysis steps with those on
screen, and reloads only when they moved.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, ScrollableContainer
from textual.message import Message
from textual.widgets import Static

from moedesk.stats.routing import SPECIALIZATION_THRESHOLD, class_expert_shares, specialization
from moedesk.store import Reader
from moedesk.store.analysis import ROUTING_PREFIX
from moedesk.tui.reading import read_in_worker
from moedesk.tui.screens.base import DataScreen
from moedesk.tui.widgets.class_heatmap import ClassHeatmap
from moedesk.tui.widgets.expert_bars import ExpertBars
from moedesk.tui.widgets.key_footer import KeyFooter
from moedesk.tui.widgets.title_header import TitleHeader

CHECK_S = 1.0


@dataclass(frozen=True)
class LayerView:
    """One layer's routing analysis, shaped for drawing (or the reason it cannot be)."""

    step: int
    error: str | None = None
    tokens: int = 0
    top_k: int = 0
    num_experts: int = 0
    histogram: tuple[int, ...] = ()
    first_choice: tuple[int, ...] = ()
    rows: tuple[tuple[str, int, list[float]], ...] = ()  # (class, tokens, share per expert)
    spec: dict | None = None


def layer_view(step: int, payload: dict) -> LayerView:
    try:
        # empty classes say nothing about routing (the CLI leaves them out too)
        rows = tuple((str(label), int(n), shares) for label, n, shares in
                     zip(payload["classes"], payload["class_tokens"],
                         class_expert_shares(payload), strict=True) if n)
        return LayerView(step, None, int(payload["tokens"]), int(payload["top_k"]),
                         int(payload["num_experts"]), tuple(payload["histogram"]),
                         tuple(payload["first_choice"]), rows, specialization(payload))
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError) as exc:
        return LayerView(step, f"the routing analysis at step {step} cannot be read: "
                               f"{type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class RoutingRead:
    key: tuple  # the analysis steps of each routing layer, as read
    layers: dict[int, LayerView]


def read_routing(reader: Reader, run_id: int, known: tuple | None) -> RoutingRead | None:
    """The newest analysis of every layer; None when the steps on screen are still current."""
    names = [n for n in reader.analysis_names(run_id) if n.startswith(ROUTING_PREFIX)]
    key = tuple((n, tuple(reader.analysis_steps(run_id, n))) for n in names)
    if key == known:
        return None
    try:
        found = reader.latest_routing(run_id)
    except (KeyError, TypeError, ValueError) as exc:  # a payload without a usable layer
        return RoutingRead(key, {0: LayerView(0, f"the routing analysis cannot be read: {exc}")})
    return RoutingRead(key, {layer: layer_view(step, payload)
                             for layer, (step, payload) in found.items()})


class RoutingScreen(DataScreen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="routing-back",
                tooltip="Back to the monitor"),
        Binding("left_square_bracket", "layer(-1)", "Prev layer", id="routing-prev-layer",
                tooltip="Previous MoE layer (also left)"),
        Binding("right_square_bracket", "layer(1)", "Next layer", id="routing-next-layer",
                tooltip="Next MoE layer (also right)"),
        # priority: the scroll area would take the arrows for sideways scrolling
        Binding("left", "layer(-1)", "Prev layer", show=False, priority=True,
                id="routing-prev-layer-arrow",
                tooltip="Previous MoE layer"),
        Binding("right", "layer(1)", "Next layer", show=False, priority=True,
                id="routing-next-layer-arrow",
                tooltip="Next MoE layer"),
    ]

    @dataclass
    class Loaded(Message):
        read: RoutingRead | None
        error: str | None

    def __init__(self, run_id: int):
        super().__init__()
        self.run_id = run_id
        self.routing: dict[int, LayerView] = {}
        self.shown_layer: int | None = None
        self.loads = 0  # applied loads (tests wait on it)
        self.error: str | None = None
        self._key: tuple | None = None

    def compose(self) -> ComposeResult:
        yield TitleHeader()
        with ScrollableContainer(id="routing-scroll"):
            yield Static(id="routing-head")
            with Container(id="routing-panels"):
                yield ExpertBars(id="routing-bars")
                yield ClassHeatmap(id="routing-classes")
        yield KeyFooter(compact=True)

    def on_mount(self) -> None:
        self.title = "moedesk"
        row = next((r for r in self.app.runs if r.id == self.run_id), None)
        self.sub_title = f"{row.name if row else f'run {self.run_id}'} · routing analysis"
        self.query_one("#routing-head", Static).update("reading the routing analysis…")
        self._refresh()
        self.set_interval(CHECK_S, self._refresh)

    # reading, off the UI thread

    def _refresh(self) -> None:
        known, run_id = self._key, self.run_id

        def loaded(read: RoutingRead | None, error: str | None) -> Message | None:
            return None if read is None and error is None else self.Loaded(read, error)

        read_in_worker(self, lambda reader: read_routing(reader, run_id, known), loaded,
                       name="routing", description="reading the routing analysis")

    def on_routing_screen_loaded(self, message: Loaded) -> None:
        self.error = message.error
        if message.read is None:
            self._key = None  # read everything again once the store answers
        else:
            self._key, self.routing = message.read.key, message.read.layers
            if self.shown_layer not in self.routing:
                self.shown_layer = min(self.routing, default=None)
        self._show()
        self.loads += 1

    # drawing

    def _show(self) -> None:
        head = self.query_one("#routing-head", Static)
        bars = self.query_one(ExpertBars)
        heatmap = self.query_one(ClassHeatmap)
        view = self.routing.get(self.shown_layer) if self.shown_layer is not None else None
        if self.error or view is None or view.error:
            error = self.error or (f"L{self.shown_layer}: {view.error}" if view else None)
            head.update(Text(error, style="#ff5f5f") if error else Text(
                "no routing analysis yet: a topk run records one at each evaluation "
                "(train.eval_every) and at its end; this view shows it when it arrives",
                style="italic"))
            bars.set_counts([], [], "")
            heatmap.clear_grid("")
            return
        head.update(self._head_text(view))
        fair = 1 / view.num_experts
        bars.set_counts(list(view.histogram), list(view.first_choice),
                        f"per-expert assignments (fair share {fair:.1%})")
        heatmap.set_grid([r[0] for r in view.rows], [r[1] for r in view.rows],
                         [r[2] for r in view.rows],
                         f"share of each class's assignments per expert (fair {fair:.1%})")

    def _head_text(self, view: LayerView) -> Text:
        spec = view.spec  # set whenever view.error is None
        text = Text()
        text.append("layer ", style="dim")
        for layer in sorted(self.routing):
            style = "bold reverse" if layer == self.shown_layer else "dim"
            text.append(f" L{layer} ", style=style)
            text.append(" ")
        text.append(f" step {view.step}", style="bold")
        text.append(f" · {view.tokens:,} validation tokens × top-{view.top_k}\n", style="dim")
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
