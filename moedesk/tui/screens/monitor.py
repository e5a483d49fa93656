"""MonitorScreen: one run, live: curves, expert load, gauges, alerts and the log tail.

Below the log tail, on its border, the newest sample the trainer wrote (`[train]
sample_every`; `w` opens the sample view with more of them).

The screen watches its run through the app's poller and redraws on `RunDataChanged`,
part by part: each part of `RunData` has a version, and only parts whose version moved
since the last apply are touched (a new log line does not rebuild the charts). Charts
get points downsampled to their width; the heatmap redraws only lines that changed.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Log

from moedesk.stats import names
from moedesk.tui import bands
from moedesk.tui.format import display_piece
from moedesk.tui.model import RunData, RunRow
from moedesk.tui.screens.base import DataScreen
from moedesk.tui.widgets.alert_list import AlertList
from moedesk.tui.widgets.band_gauge import BandGauge
from moedesk.tui.widgets.expert_heatmap import ExpertHeatmap
from moedesk.tui.widgets.expert_timeline import ExpertTimeline
from moedesk.tui.widgets.key_footer import KeyFooter
from moedesk.tui.widgets.line_chart import LineChart, series_source
from moedesk.tui.widgets.run_stats import RunStats
from moedesk.tui.widgets.title_header import TitleHeader

TRAIN, VAL, OTHER = "#5fafff", "#ffaf5f", "#af87ff"


class MonitorScreen(DataScreen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="back",
                tooltip="Back to the runs"),
        Binding("s", "stop", "Stop", id="monitor-stop",
                tooltip="Graceful stop (finish the step, checkpoint, exit) or kill"),
        Binding("r", "resume", "Resume", id="monitor-resume",
                tooltip="Continue this run from a checkpoint"),
        Binding("t", "toggle_timeline", "Timeline", id="toggle-timeline",
                tooltip="Show or hide the experts-over-time strip"),
        # routing analysis: shown for topk runs; other kinds get a notice on the same key
        Binding("g", "routing", "Routing", id="monitor-routing",
                tooltip="Routing analysis: expert histogram and expert-by-class heatmap"),
        Binding("g", "routing_unavailable", "Routing", show=False,
                id="monitor-routing-unavailable",
                tooltip="Routing analysis (recorded for topk runs only)"),
        Binding("w", "sample", "Sample", id="monitor-sample",  # dense and topk runs
                tooltip="Sample from the latest checkpoint, with per-token routing"),
        # in the palette (ctrl+p): the 80-column footer has no room left
        Binding("f", "config", "Config", show=False, id="monitor-config",
                tooltip="The run's resolved config, as TOML (moedesk profiles show)"),
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
        yield TitleHeader()
        with Horizontal(id="monitor-top"):
            with Vertical(id="monitor-charts"):
                yield LineChart("loss", id="loss-chart")
                yield LineChart("learning rate", id="lr-chart")
            with VerticalScroll(id="monitor-side"):
                yield RunStats(id="run-stats")
                yield ExpertHeatmap(id="heatmap")
                yield ExpertTimeline(id="timeline")
                yield BandGauge("imbalance", bands.TOPK_IMBALANCE, id="imbalance")
                yield BandGauge("routing latency", [], log_scale=True, unit=" us",
                                id="latency")
        with Horizontal(id="monitor-bottom"):
            with VerticalScroll(id="alerts-box"):
                yield AlertList(id="alerts")
            yield Log(id="log-tail", max_lines=400, auto_scroll=True)
        yield KeyFooter(compact=True)

    def on_mount(self) -> None:
        self.title = "moedesk"
        self.sub_title = f"run {self.run_id}"
        self.query_one("#alerts-box").border_title = "open alerts"
        self.query_one("#log-tail").border_title = "train.log"
        self.data = self.app.poller.watch(self.run_id)
        self.app.wake_poller()
        self.app.guard(f"drawing run {self.run_id}", self.apply)

    def on_unmount(self) -> None:
        self.app.poller.unwatch(self.run_id)

    def on_screen_resume(self) -> None:
        self.app.guard(f"drawing run {self.run_id}", self.apply)

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
            if versions["row"] != seen.get("row") or versions["curves"] != seen.get("curves"):
                # a status change (completed, stopped, failed) redraws it too, with its reason
                self.query_one(RunStats).show(data, row)
            if versions["load"] != seen.get("load") or versions["curves"] != seen.get("curves"):
                self._apply_load(data, row)
            if versions["alerts"] != seen.get("alerts"):
                self.query_one(AlertList).show_alerts(data.alerts)
            if versions["log"] != seen.get("log"):
                self._apply_log(data)
            if versions["sample"] != seen.get("sample"):
                self._apply_sample(data)
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
            self.refresh_bindings()  # `g` (routing) shows for topk runs, `t` not for dense

    def _series_lines(self, data: RunData, chart: LineChart,
                      wanted: list[tuple[str, str, str]]) -> None:
        entries = [(label, data.series[name], colour) for name, label, colour in wanted
                   if name in data.series]
        key = (data.generation, *((label, buf.count, buf.last) for label, buf, _ in entries))
        chart.set_source(series_source(entries, data.lock), key)

    def _apply_curves(self, data: RunData, row: RunRow) -> None:
        loss_chart = self.query_one("#loss-chart", LineChart)
        lr_chart = self.query_one("#lr-chart", LineChart)
        if row.kind == "ternary" and names.TRAIN_LOSS not in data.series:
            loss_chart.title = "goodness delta (positive - negative)"
            self._series_lines(data, loss_chart, [(names.FF_GOODNESS_DELTA, "Δg", TRAIN)])
        else:
            loss_chart.title = "loss"
            self._series_lines(data, loss_chart, [(names.TRAIN_LOSS, "train", TRAIN),
                                                  (names.VAL_LOSS, "val", VAL)])
        if row.kind == "ternary" and names.TRAIN_LR not in data.series:
            lr_chart.title = "held-out accuracy"
            self._series_lines(data, lr_chart, [(names.FF_ACCURACY, "acc", OTHER)])
        else:
            lr_chart.title = "learning rate"
            self._series_lines(data, lr_chart, [(names.TRAIN_LR, "lr", OTHER)])

    def _apply_load(self, data: RunData, row: RunRow) -> None:
        heatmap = self.query_one(ExpertHeatmap)
        timeline = self.query_one(ExpertTimeline)
        if row.kind == "dense":
            return
        if data.load_step is None:
            heatmap.clear_grid("expert load: waiting for the first logged step")
        else:
            labels, rows = [label for label, _ in data.load_rows], [r for _, r in data.load_rows]
            if row.cluster_size:
                caption = (f"{sum(map(len, rows))} experts, {row.cluster_size} per row · "
                           f"step {data.load_step}")
            else:
                caption = f"layers × {row.num_experts} experts · step {data.load_step}"
            heatmap.set_grid(labels, rows, caption)
        timeline.set_columns(list(data.timeline), "cluster" if row.cluster_size else "expert",
                             data.generation)
        # both trainers log the imbalance at every logged step (an empty window: NaN, stored
        # as NULL, shown as no value)
        self.query_one("#imbalance", BandGauge).set_value(data.value(names.MOE_IMBALANCE))
        self.query_one("#latency", BandGauge).set_value(data.value(names.ROUTE_LATENCY_US))

    def _apply_sample(self, data: RunData) -> None:
        # a rich Text: the model's words are never read as markup, and drawn on one line
        # with no raw control character
        sample = data.sample
        log = self.query_one("#log-tail", Log)
        if sample is None:
            log.border_subtitle = None
            return
        line = Text(f"sample @ step {sample['step']}: ", style="bold")
        line.append(display_piece(sample["prompt"]), style="dim")
        line.append(display_piece(sample["text"]))
        log.border_subtitle = line

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

    def action_config(self) -> None:
        from moedesk.tui.screens.run_config import RunConfig

        row = self._row()
        if row:
            self.app.push_screen(RunConfig(row))

    def action_toggle_timeline(self) -> None:
        self.toggle_class("-timeline-toggled")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "routing":
            return self._kind == "topk"
        if action == "routing_unavailable":
            return self._kind != "topk"
        if action == "sample":
            return self._kind in ("dense", "topk")
        if action == "toggle_timeline":
            return self._kind != "dense"  # a dense run has no experts to show over time
        return True

    def action_routing(self) -> None:
        from moedesk.tui.screens.routing import RoutingScreen

        self.app.push_screen(RoutingScreen(self.run_id))

    def action_sample(self) -> None:
        from moedesk.tui.screens.sample import SampleScreen

        row = self._row()
        if row:
            self.app.push_screen(SampleScreen(self.run_id, row.run_dir, row.name, row.kind))

    def action_routing_unavailable(self) -> None:
        row = self._row()
        what = f"run {self.run_id} is a {row.kind} run" if row else f"run {self.run_id} has no data yet"
        self.app.notify(f"{what}: the routing analysis (expert histogram, expert-by-class heatmap) "
                        "is recorded for topk runs only", title="routing", severity="warning")
