"""CompareScreen: two or more runs side by side, with their loss curves overlaid.

Rows: final train loss, final validation perplexity, total and active parameters, wall
time, load-balance std (moe/usage_std), dead experts, imbalance. The best value of each
row is highlighted. Data is read in a thread worker; while a compared run is active it
is re-read at most every `RELOAD_S` seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from moedesk.paths import db_path
from moedesk.store import Reader, StoreError
from moedesk.tui import format as fmt
from moedesk.tui.model import RunRow
from moedesk.tui.series import SeriesBuffer
from moedesk.tui.widgets.line_chart import LineChart, series_source

RELOAD_S = 2.0
RUN_COLOURS = ("#5fafff", "#ffaf5f", "#87d787", "#ff87af", "#d7d75f", "#af87ff")
# (label, how to get it, lower is better?)
QUANTITIES = (
    ("kind", None),
    ("status", None),
    ("steps", None),
    ("final train loss", True),
    ("final val ppl", True),
    ("params total", None),
    ("params active", None),
    ("wall time", True),
    ("usage std", True),
    ("dead experts", True),
    ("imbalance", True),
)


@dataclass
class RunSummary:
    row: RunRow
    values: dict[str, float | None]
    loss: SeriesBuffer


class CompareScreen(Screen):
    BINDINGS = [Binding("escape", "app.pop_screen", "Back", id="compare-back")]

    @dataclass
    class Loaded(Message):
        summaries: list[RunSummary]
        error: str | None

    def __init__(self, run_ids: list[int]):
        super().__init__()
        self.run_ids = run_ids
        self.summaries: list[RunSummary] = []
        self.loads = 0
        self._last_load = 0.0
        self.verdict = ""  # set by the verdict hook below

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="compare-table", cursor_type="none", zebra_stripes=True)
        yield Static("", id="compare-verdict")
        yield LineChart("train loss", id="compare-chart")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.title = "moedesk"
        self.sub_title = "compare " + ", ".join(str(i) for i in self.run_ids)
        self._load(self.app.runs)

    def runs_refreshed(self, runs: tuple[RunRow, ...]) -> None:
        ours = [r for r in runs if r.id in self.run_ids]
        if any(r.active for r in ours) and time.monotonic() - self._last_load >= RELOAD_S:
            self._load(runs)

    @work(thread=True, exclusive=True, group="compare-load", exit_on_error=False)
    def _load(self, runs: tuple[RunRow, ...]) -> None:
        self._last_load = time.monotonic()
        rows = {r.id: r for r in runs}
        try:
            reader = Reader(db_path(Path(self.app.home)))
        except StoreError as exc:
            self.post_message(self.Loaded([], str(exc)))
            return
        try:
            summaries = []
            for run_id in self.run_ids:
                row = rows.get(run_id)
                if row is None:
                    continue
                latest = reader.latest_metrics(run_id)
                values = {name: latest[name][1] for name in latest}
                loss = SeriesBuffer()
                for step, value in reader.series(run_id, "train/loss"):
                    loss.append(step, value)
                summaries.append(RunSummary(row, values, loss))
            self.verdict = verdict_text(reader, self.run_ids)
        finally:
            reader.close()
        self.post_message(self.Loaded(summaries, None))

    def on_compare_screen_loaded(self, message: Loaded) -> None:
        if message.error:
            self.app.notify(message.error, title="compare", severity="error")
            return
        self.summaries = message.summaries
        self._fill_table()
        self.query_one("#compare-verdict", Static).update(self.verdict)
        self._fill_chart()
        self.loads += 1

    def _quantity(self, s: RunSummary, label: str, now: float) -> float | str | None:
        row, v = s.row, s.values
        if label == "kind":
            return row.kind
        if label == "status":
            return row.status
        if label == "steps":
            return fmt.step_text(row.step, row.total_steps)
        if label == "final train loss":
            return v.get("train/loss")
        if label == "final val ppl":
            return v.get("val/ppl")
        if label == "params total":
            return row.params_total
        if label == "params active":
            return row.params_active
        if label == "wall time":
            if row.started_at is None:
                return None
            return (row.ended_at or now) - row.started_at
        if label == "usage std":
            return v.get("moe/usage_std")
        if label == "dead experts":
            return v.get("moe/dead_experts")
        if label == "imbalance":
            return v.get("moe/imbalance")
        return None

    def _fill_table(self) -> None:
        table = self.query_one("#compare-table", DataTable)
        table.clear(columns=True)
        table.add_column("", key="quantity")
        for i, s in enumerate(self.summaries):
            table.add_column(Text(f"{s.row.id} {s.row.name}",
                                  style=f"bold {RUN_COLOURS[i % len(RUN_COLOURS)]}"),
                             key=str(s.row.id))
        now = self.app.clock()
        for label, lower_better in QUANTITIES:
            raw = [self._quantity(s, label, now) for s in self.summaries]
            numbers = [x for x in raw if isinstance(x, (int, float))]
            best = min(numbers) if lower_better and len(numbers) > 1 else None
            cells: list[Text | str] = [label]
            for x in raw:
                text = self._cell(label, x)
                style = "bold #87d787" if best is not None and x == best else ""
                cells.append(Text(text, style=style))
            table.add_row(*cells, key=label)

    @staticmethod
    def _cell(label: str, x: float | str | None) -> str:
        if x is None:
            return "-"
        if isinstance(x, str):
            return x
        if label.startswith("params"):
            return fmt.count(x)
        if label == "wall time":
            return fmt.duration(x)
        if label == "dead experts":
            return f"{x:.0f}"
        return fmt.number(x)

    def _fill_chart(self) -> None:
        # a ternary run has no LM loss and a failed one no steps: they draw no line
        entries = [(s.row.name, s.loss, RUN_COLOURS[i % len(RUN_COLOURS)])
                   for i, s in enumerate(self.summaries)]
        key = tuple((s.row.id, s.loss.count, s.loss.last) for s in self.summaries)
        self.query_one("#compare-chart", LineChart).set_source(series_source(entries), key)



# ---- verdict hook (owned by moedesk.compare, see docs/compare.md) ---------------------------
def verdict_text(reader: Reader, run_ids: list[int]) -> str:
    """"verdict: adopt | defer | never: why" when the runs are a finished protocol comparison
    (two profiles, the same seeds, the same data and schedule); "" otherwise."""
    from moedesk.compare import verdict_for_runs, verdict_line

    try:
        manifest = verdict_for_runs(reader, run_ids)
    except Exception:  # noqa: BLE001 - a verdict must never break the compare view
        return ""
    return f"verdict: {verdict_line(manifest)}" if manifest else ""
