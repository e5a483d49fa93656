"""CompareScreen: two or more runs side by side, with their loss curves overlaid.

Rows (`QUANTITIES`, one table): kind, status, steps, final train loss, final validation
perplexity, total and active parameters, wall time, load-balance std (moe/usage_std),
dead experts, imbalance. The best value of each row where lower is better is
highlighted. Under the table, the verdict line of `moedesk.compare` when the runs are a
finished protocol comparison. Data is read with `reading.read_in_worker`; while a
compared run is active it is re-read at most every `RELOAD_S` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable, Static

from moedesk.stats import names
from moedesk.store import Reader
from moedesk.tui import format as fmt
from moedesk.tui.model import RunRow
from moedesk.tui.reading import read_in_worker
from moedesk.tui.screens.base import DataScreen
from moedesk.tui.series import SeriesBuffer
from moedesk.tui.widgets.key_footer import KeyFooter
from moedesk.tui.widgets.line_chart import LineChart, series_source
from moedesk.tui.widgets.title_header import TitleHeader

RELOAD_S = 2.0
RUN_COLOURS = ("#5fafff", "#ffaf5f", "#87d787", "#ff87af", "#d7d75f", "#af87ff")


@dataclass
class RunSummary:
    row: RunRow
    values: dict[str, float | None]  # each metric's latest value
    loss: SeriesBuffer


@dataclass(frozen=True)
class Quantity:
    """One row of the table: how to get it from a run, and how to write it."""

    label: str
    value: Callable[[RunSummary, float], float | str | None]  # (run, now) -> value
    lower_is_better: bool = False
    cell: Callable[[float], str] = fmt.number


def _metric(name: str) -> Callable[[RunSummary, float], float | None]:
    return lambda s, now: s.values.get(name)


def _wall_time(s: RunSummary, now: float) -> float | None:
    row = s.row
    return None if row.started_at is None else (row.ended_at or now) - row.started_at


QUANTITIES = (
    Quantity("kind", lambda s, now: s.row.kind),
    Quantity("status", lambda s, now: s.row.status),
    Quantity("steps", lambda s, now: fmt.step_text(s.row.step, s.row.total_steps)),
    Quantity("final train loss", _metric(names.TRAIN_LOSS), lower_is_better=True),
    Quantity("final val ppl", _metric(names.VAL_PPL), lower_is_better=True),
    Quantity("params total", lambda s, now: s.row.params_total, cell=fmt.count),
    Quantity("params active", lambda s, now: s.row.params_active, cell=fmt.count),
    Quantity("wall time", _wall_time, lower_is_better=True, cell=fmt.duration),
    Quantity("usage std", _metric(names.MOE_USAGE_STD), lower_is_better=True),
    Quantity("dead experts", _metric(names.MOE_DEAD_EXPERTS), lower_is_better=True,
             cell=lambda x: f"{x:.0f}"),
    Quantity("imbalance", _metric(names.MOE_IMBALANCE), lower_is_better=True),
)


@dataclass
class Comparison:
    """What one read gives the screen: a summary per run and the verdict line ("" if none)."""

    summaries: list[RunSummary]
    verdict: str


def read_comparison(reader: Reader, run_ids: list[int], rows: dict[int, RunRow]) -> Comparison:
    summaries = []
    for run_id in run_ids:
        row = rows.get(run_id)
        if row is None:
            continue
        latest = reader.latest_metrics(run_id)
        loss = SeriesBuffer()
        for step, value in reader.series(run_id, names.TRAIN_LOSS):
            loss.append(step, value)
        summaries.append(RunSummary(row, {name: latest[name][1] for name in latest}, loss))
    return Comparison(summaries, verdict_text(reader, run_ids))


def verdict_text(reader: Reader, run_ids: list[int]) -> str:
    """"verdict: adopt | defer | never: why" when the runs are a finished protocol comparison
    (two profiles, the same seeds, the same data and schedule; `moedesk.compare`, see
    docs/compare.md); "" otherwise."""
    from moedesk.compare import verdict_for_runs, verdict_line

    try:
        manifest = verdict_for_runs(reader, run_ids)
    except Exception:  # noqa: BLE001 - a verdict must never break the compare view
        return ""
    return f"verdict: {verdict_line(manifest)}" if manifest else ""


class CompareScreen(DataScreen):
    BINDINGS = [Binding("escape", "app.pop_screen", "Back", id="compare-back",
                        tooltip="Back to the runs")]

    @dataclass
    class Loaded(Message):
        comparison: Comparison | None
        error: str | None

    def __init__(self, run_ids: list[int]):
        super().__init__()
        self.run_ids = run_ids
        self.summaries: list[RunSummary] = []
        self.loads = 0
        self.verdict = ""
        self._last_load = 0.0

    def compose(self) -> ComposeResult:
        yield TitleHeader()
        yield DataTable(id="compare-table", cursor_type="none", zebra_stripes=True)
        yield Static("", id="compare-verdict")
        yield LineChart("train loss", id="compare-chart")
        yield KeyFooter(compact=True)

    def on_mount(self) -> None:
        self.title = "moedesk"
        self.sub_title = "compare " + ", ".join(str(i) for i in self.run_ids)
        self._load(self.app.runs)

    def runs_refreshed(self, runs: tuple[RunRow, ...]) -> None:
        ours = [r for r in runs if r.id in self.run_ids]
        if any(r.active for r in ours) and time.monotonic() - self._last_load >= RELOAD_S:
            self._load(runs)

    def _load(self, runs: tuple[RunRow, ...]) -> None:
        self._last_load = time.monotonic()
        rows, run_ids = {r.id: r for r in runs}, list(self.run_ids)
        read_in_worker(self, lambda reader: read_comparison(reader, run_ids, rows), self.Loaded,
                       name="compare", description="reading the compared runs")

    def on_compare_screen_loaded(self, message: Loaded) -> None:
        self.loads += 1
        verdict = self.query_one("#compare-verdict", Static)
        if message.comparison is None:
            verdict.update(Text(message.error or "", style="#ff5f5f"))
            return
        self.summaries = message.comparison.summaries
        self.verdict = message.comparison.verdict
        self._fill_table()
        verdict.update(Text(self.verdict))
        self._fill_chart()

    def _fill_table(self) -> None:
        table = self.query_one("#compare-table", DataTable)
        table.clear(columns=True)
        table.add_column("", key="quantity")
        for i, s in enumerate(self.summaries):
            table.add_column(Text(f"{s.row.id} {s.row.name}",
                                  style=f"bold {RUN_COLOURS[i % len(RUN_COLOURS)]}"),
                             key=str(s.row.id))
        now = self.app.clock()
        for quantity in QUANTITIES:
            raw = [quantity.value(s, now) for s in self.summaries]
            numbers = [x for x in raw if isinstance(x, (int, float))]
            best = min(numbers) if quantity.lower_is_better and len(numbers) > 1 else None
            cells: list[Text | str] = [quantity.label]
            for x in raw:
                text = "-" if x is None else x if isinstance(x, str) else quantity.cell(x)
                style = "bold #87d787" if best is not None and x == best else ""
                cells.append(Text(text, style=style))
            table.add_row(*cells, key=quantity.label)

    def _fill_chart(self) -> None:
        # a ternary run has no LM loss and a failed one no steps: they draw no line
        entries = [(s.row.name, s.loss, RUN_COLOURS[i % len(RUN_COLOURS)])
                   for i, s in enumerate(self.summaries)]
        key = tuple((s.row.id, s.loss.count, s.loss.last) for s in self.summaries)
        self.query_one("#compare-chart", LineChart).set_source(series_source(entries), key)

