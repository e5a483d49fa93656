"""MonitorScreen: one run, live: curves, expert load, gauges, alerts and the log tail.

The screen watches its run through the app's poller and redraws on `RunDataChanged`,
part by part: each part of `RunData` has a version, and only parts whose version moved
since the last apply are touched (a new log line does not rebuild the charts). Charts
get points downsampled to their width; the heatmap redraws only lines that changed.
"""

from __future__ import annotations

import math

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Log, Static

from moedesk.loadstats import aggregate, load_stats
from moedesk.tui import bands
from moedesk.tui import format as fmt
from moedesk.tui.model import RunData, RunRow
from moedesk.tui.widgets.alert_list import AlertList
from moedesk.tui.widgets.band_gauge import BandGauge
from moedesk.tui.widgets.expert_heatmap import ExpertHeatmap
from moedesk.tui.widgets.expert_timeline import ExpertTimeline
from moedesk.tui.widgets.line_chart import LineChart, series_source

TRAIN, VAL, OTHER = "#5fafff", "#ffaf5f", "#af87ff"


class MonitorScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="back"),
        Binding("s", "stop", "Stop", id="monitor-stop"),
        Binding("r", "resume", "Resume", id="monitor-resume"),
        Binding("t", "toggle_timeline", "Timeline", id="toggle-timeline"),
        # routing analysis: shown for topk runs; other kinds get a notice on the same key
        Binding("g", "routing", "Routing", id="monitor-routing"),
        Binding("g", "routing_unavailable", "Routing", show=False,
                id="monitor-routing-unavailable"),
    ]

    def __init__(self, run_id: int):
        super().__init__()
        self.run_id = run_id
        self.data: RunData | None = None
        self.applied: dict[str, int] = {}
        self.applies = 0  # completed applies (tests wait on it)
        self._generation = -1
        self._log_seen = 0
        self._kind = ""

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="monitor-top"):
            with Vertical(id="monitor-charts"):
                yield LineChart("loss", id="loss-chart")
                yield LineChart("learning rate", id="lr-chart")
            with VerticalScroll(id="monitor-side"):
                yield Static(id="run-stats")
                yield ExpertHeatmap(id="heatmap")
                yield ExpertTimeline(id="timeline")
                yield BandGauge("imbalance", bands.TOPK_IMBALANCE, id="imbalance")
                yield BandGauge("routing latency", [], log_scale=True, unit=" us",
                                id="latency")
        with Horizontal(id="monitor-bottom"):
            with VerticalScroll(id="alerts-box"):
                yield AlertList(id="alerts")
            yield Log(id="log-tail", max_lines=400, auto_scroll=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.title = "moedesk"
        self.sub_title = f"run {self.run_id}"
        self.query_one("#alerts-box").border_title = "open alerts"
        self.query_one("#log-tail").border_title = "train.log"
        self.data = self.app.poller.watch(self.run_id)
        self.app.wake_poller()
        self.apply()

    def on_unmount(self) -> None:
        self.app.poller.unwatch(self.run_id)

    def on_screen_resume(self) -> None:
        self.apply()

    @property
    def caught_up(self) -> bool:
        """True once everything fetched so far is on screen (tests and benchmarks wait on it)."""
        data = self.data
        if data is None or data.row is None:
            return False
        with data.lock:
            return self.applied == data.versions and self._generation == data.generation

    # applying new data

    def apply(self, force: bool = False) -> None:
        data = self.data
        if data is None:
            return
        with data.lock:
            row = data.row
            if row is None:
                return
            versions = dict(data.versions)
            seen = {} if force or data.generation != self._generation else self.applied
            if data.generation != self._generation:
                self._generation = data.generation
                self._log_seen = 0
                self.query_one("#log-tail", Log).clear()
            if versions["row"] != seen.get("row"):
                self._apply_row(row)
            if versions["curves"] != seen.get("curves"):
                self._apply_curves(data, row)
            if versions["load"] != seen.get("load") or versions["curves"] != seen.get("curves"):
                self._apply_load(data, row)
            if versions["alerts"] != seen.get("alerts"):
                self.query_one(AlertList).show_alerts(data.alerts)
            if versions["log"] != seen.get("log"):
                self._apply_log(data)
            self.applied = versions
        self.applies += 1

    def _apply_row(self, row: RunRow) -> None:
        # the step lives in the stats lines: a header change costs a whole-screen layout
        self.sub_title = f"{row.name} · {row.kind} · {row.status}"
        if row.kind != self._kind:
            self.remove_class(f"-{self._kind}")
            self._kind = row.kind
            self.add_class(f"-{row.kind}")
            self.query_one("#imbalance", BandGauge).set_bands(bands.imbalance_bands(row))
            self.query_one("#latency", BandGauge).set_bands(bands.latency_bands(row))
            if row.kind == "ternary":
                self.query_one("#timeline", ExpertTimeline).row_name = "cluster"
            self.refresh_bindings()  # `g` (routing) shows for topk runs only

    def _series_lines(self, data: RunData, chart: LineChart,
                      wanted: list[tuple[str, str, str]]) -> None:
        entries = [(label, data.series[name], colour) for name, label, colour in wanted
                   if name in data.series]
        key = (data.generation, *((label, buf.count, buf.last) for label, buf, _ in entries))
        chart.set_source(series_source(entries, data.lock), key)

    def _apply_curves(self, data: RunData, row: RunRow) -> None:
        loss_chart = self.query_one("#loss-chart", LineChart)
        lr_chart = self.query_one("#lr-chart", LineChart)
        if row.kind == "ternary" and "train/loss" not in data.series:
            loss_chart.title = "goodness delta (positive - negative)"
            self._series_lines(data, loss_chart, [("ff/goodness_delta", "Δg", TRAIN)])
        else:
            loss_chart.title = "loss"
            self._series_lines(data, loss_chart, [("train/loss", "train", TRAIN),
                                                  ("val/loss", "val", VAL)])
        if row.kind == "ternary" and "train/lr" not in data.series:
            lr_chart.title = "held-out accuracy"
            self._series_lines(data, lr_chart, [("ff/accuracy", "acc", OTHER)])
        else:
            lr_chart.title = "learning rate"
            self._series_lines(data, lr_chart, [("train/lr", "lr", OTHER)])
        self.query_one("#run-stats", Static).update(self._stats_text(data, row), layout=False)

    def _stats_text(self, data: RunData, row: RunRow) -> Text:
        """Three lines, always: progress; throughput and goodness; experts or the error.

        A fixed height lets the stats change every tick without a screen layout.
        """
        progress = Text(no_wrap=True, overflow="ellipsis")
        progress.append(fmt.status_text(row.status))
        progress.append(f"  step {fmt.step_text(row.step, row.total_steps)}")
        step_s = data.value("sys/step_s")
        if step_s:
            progress.append(f"  {step_s * 1000:.0f} ms/step", style="dim")
            if row.total_steps and row.active:
                progress.append(f"  ETA {fmt.duration((row.total_steps - row.step) * step_s)}",
                                style="dim")
        speed = Text(no_wrap=True, overflow="ellipsis")
        rate = data.value("train/samples_per_s") if row.kind == "ternary" else None
        if rate is not None:
            speed.append(f"{fmt.count(rate)} samples/s")
        elif data.value("train/tokens_per_s") is not None:
            speed.append(f"{fmt.count(data.value('train/tokens_per_s'))} tokens/s")
        if row.kind == "ternary":
            delta = data.value("ff/goodness_delta")
            label, colour = bands.goodness_verdict(row, delta)
            speed.append(f"  goodness Δ {fmt.number(delta, 3)} ")
            speed.append(label, style=colour)
        experts = Text(no_wrap=True, overflow="ellipsis")
        if row.error and row.status in ("failed", "crashed"):
            experts.append(row.error.splitlines()[0], style="#ff5f5f")
        elif row.kind in ("topk", "ternary", "external"):
            dead = data.value("moe/dead_experts")
            if dead is not None:
                experts.append(f"dead experts {dead:.0f}", style="bold #ff5f5f" if dead else "")
            usage = data.value("moe/usage_std")
            if usage is not None:
                experts.append(f"  usage std {usage:.3f}", style="dim")
        return Text("\n").join([progress, speed, experts])

    def _apply_load(self, data: RunData, row: RunRow) -> None:
        heatmap = self.query_one(ExpertHeatmap)
        timeline = self.query_one(ExpertTimeline)
        if row.kind == "dense":
            return
        if data.load_step is None:
            heatmap.clear_grid("expert load: waiting for the first logged step")
        elif row.cluster_size:
            ratios = next(iter(data.load_layers.values()))
            size = row.cluster_size
            rows = [ratios[i:i + size] for i in range(0, len(ratios), size)]
            heatmap.set_grid([f"c{i}" for i in range(len(rows))], rows,
                             f"{len(ratios)} experts, {size} per row · step {data.load_step}")
        else:
            layers = sorted(data.load_layers)
            heatmap.set_grid([f"L{i}" for i in layers], [data.load_layers[i] for i in layers],
                             f"layers × {row.num_experts} experts · step {data.load_step}")
        timeline.set_columns(list(data.timeline), "cluster" if row.cluster_size else "expert",
                             data.generation)
        self.query_one("#imbalance", BandGauge).set_value(self._imbalance(data, row))
        latency = data.value("route/latency_us")
        self.query_one("#latency", BandGauge).set_value(latency)

    @staticmethod
    def _imbalance(data: RunData, row: RunRow) -> float | None:
        logged = data.value("moe/imbalance")
        if logged is not None:
            return logged
        if not data.load_counts:
            return None
        # the trainer did not log it: the same statistic from the newest counts
        per_layer = {layer: {"imbalance": load_stats(c, min(row.top_k, len(c)))["imbalance"]}
                     for layer, c in data.load_counts.items() if c}
        value = aggregate(per_layer).get("imbalance")
        return None if value is None or math.isnan(value) else value

    def _apply_log(self, data: RunData) -> None:
        new = data.log_total - self._log_seen
        if new <= 0:
            return
        lines = list(data.log_lines)[-min(new, len(data.log_lines)):]
        self._log_seen = data.log_total
        self.query_one("#log-tail", Log).write_lines(lines)

    # actions

    def _row(self) -> RunRow | None:
        return self.data.row if self.data else None

    def action_stop(self) -> None:
        row = self._row()
        if row:
            self.app.request_stop(row)

    def action_resume(self) -> None:
        row = self._row()
        if row:
            self.app.request_resume(row)

    def action_toggle_timeline(self) -> None:
        self.toggle_class("-timeline-toggled")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "routing":
            return self._kind == "topk"
        if action == "routing_unavailable":
            return self._kind != "topk"
        return True

    def action_routing(self) -> None:
        from moedesk.tui.screens.routing import RoutingScreen

        self.app.push_screen(RoutingScreen(self.run_id))

    def action_routing_unavailable(self) -> None:
        row = self._row()
        what = f"run {self.run_id} is a {row.kind} run" if row else f"run {self.run_id} has no data yet"
        self.notify(f"{what}: the routing analysis (expert histogram, expert-by-class heatmap) "
                    "is recorded for topk runs only", title="routing", severity="warning")
