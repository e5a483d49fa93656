"""What the TUI knows about runs: `RunRow` for lists, `RunData` for one watched run.

`RunData` is filled by the poller thread and read by the UI thread, always under its
`lock`. Each part the monitor draws (curves, expert load, alerts, log, row) has a
version counter that moves when that part changes, so a screen redraws only what moved
and a coalesced update message loses nothing (see messages.RunDataChanged).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass

from moedesk.profiles import Profile
from moedesk.stats import names
from moedesk.stats.load import group_loads, groups, load_stats
from moedesk.store.runs import ACTIVE
from moedesk.tui.series import SeriesBuffer

# every metric the monitor and runs list show; other names (per-layer moe/L*/...) stay in SQL
MONITOR_METRICS = (
    names.TRAIN_LOSS, names.VAL_LOSS, names.VAL_PPL, names.TRAIN_LR, names.TRAIN_TOKENS_PER_S,
    names.TRAIN_SAMPLES_PER_S, names.MOE_IMBALANCE, names.ROUTE_LATENCY_US,
    names.FF_GOODNESS_DELTA, names.FF_ACCURACY, names.MOE_DEAD_EXPERTS, names.MOE_USAGE_STD,
    names.MOE_AUX_LOSS, names.MOE_Z_LOSS, names.SYS_STEP_S,
)
PARTS = ("row", "curves", "load", "alerts", "log", "sample")
# a flat ternary router has no clusters: the monitor groups its experts in rows of 3^3,
# which draws 243 experts as a 9 x 27 grid
FLAT_ROW = 27
TIMELINE_LEN = 600  # logged steps kept for the experts-over-time strip
LOG_LINES = 400


@dataclass(frozen=True)
class RunRow:
    """One run as the runs list shows it (effective status: a dead supervisor = crashed)."""

    id: int
    name: str
    kind: str
    status: str
    step: int
    total_steps: int | None
    loss: float | None
    health: str | None  # worst open alert severity, None when there is none
    created_at: float
    started_at: float | None
    ended_at: float | None
    profile_path: str
    run_dir: str
    params_total: int | None
    params_active: int | None
    error: str | None
    top_k: int
    num_experts: int
    cluster_size: int
    health_rules: str = "{}"  # the profile's [health.RULE] overrides, as JSON
    tags: tuple[str, ...] = ()  # `moedesk tag` (run_tags), sorted

    def rule_params(self, rule: str) -> dict:
        """A health rule's thresholds for this run: the defaults with its overrides."""
        from moedesk.health.thresholds import rule_params

        return rule_params(rule, json.loads(self.health_rules))

    @property
    def active(self) -> bool:
        """Queued, running or unresponsive: a supervisor has it (stop, never resume or rm)."""
        return self.status in ACTIVE


def routing_shape(profile: Profile) -> tuple[int, int, int]:
    """(experts chosen per token or sample, experts, experts per heatmap row group) of a
    run: a hierarchical ternary router's clusters, a flat one's rows of FLAT_ROW."""
    if profile.kind in ("topk", "external"):  # external: the shape its supervisor learned
        return profile.moe.top_k, profile.moe.num_experts, 0
    if profile.kind == "ternary":
        t = profile.ternary
        cluster = t.cluster_size if t.topology == "hierarchical" else FLAT_ROW
        return t.active_experts, t.num_experts, cluster
    return 1, 0, 0


def row_from_info(info, loss: float | None, health: str | None, profile: Profile,
                  tags: tuple[str, ...] = ()) -> RunRow:
    """A run's list row; `profile` is its stored config rebuilt (`profile_from_dict`)."""
    row = info.row
    top_k, num_experts, cluster = routing_shape(profile)
    rules = profile.health.rules
    return RunRow(info.id, info.name, info.kind, info.status, info.last_step, info.total_steps,
                  loss, health, info.created_at, info.started_at, info.ended_at,
                  row.get("profile_path") or "", row.get("run_dir") or "",
                  row.get("params_total"), row.get("params_active"), row.get("error"),
                  top_k, num_experts, cluster, json.dumps(rules, sort_keys=True), tuple(tags))


class RunData:
    """The monitor's model of one run, updated incrementally by the poller."""

    def __init__(self, run_id: int):
        self.run_id = run_id
        self.lock = threading.RLock()  # the UI re-enters it while drawing charts
        self.versions = dict.fromkeys(PARTS, 0)
        self.generation = 0  # moves when a resume truncated the run and caches were reset
        self.row: RunRow | None = None
        self.reset()

    def reset(self) -> None:
        """Forget everything fetched (after a resume deleted rows past the checkpoint)."""
        self.metric_cursor = 0
        self.load_cursor = 0
        self.alert_cursor = 0
        self.log_offset = 0
        self.num_resumes: int | None = None
        self.series: dict[str, SeriesBuffer] = {}
        self.latest: dict[str, tuple[int, float | None]] = {}
        self.load_step: int | None = None
        self.load_layers: dict[int, list[float]] = {}  # layer -> load ratio per expert
        # the heatmap's rows: (label, load ratios): one per layer, or one per cluster (or
        # row of 27) of a ternary run's single layer
        self.load_rows: list[tuple[str, list[float]]] = []
        self.timeline: deque[tuple[int, tuple[float, ...]]] = deque(maxlen=TIMELINE_LEN)
        self.alerts: list[dict] = []
        self.log_lines: deque[str] = deque(maxlen=LOG_LINES)
        self.log_total = 0  # lines ever added, so a screen can tell which are new
        self.sample_cursor = 0  # rowid of the newest stored sample read
        self.sample: dict | None = None  # the newest sample the trainer wrote
        self.generation += 1
        for part in PARTS:
            self.versions[part] += 1

    def bump(self, part: str) -> None:
        self.versions[part] += 1

    # called by the poller thread, under self.lock

    def add_metrics(self, rows: list[tuple]) -> None:
        for _rowid, step, name, value in rows:
            buf = self.series.get(name)
            if buf is None:
                buf = self.series[name] = SeriesBuffer()
            buf.append(step, value)
            self.latest[name] = (step, value)
        if rows:
            self.bump("curves")

    def add_expert_load(self, rows: list[tuple[int, int, list[float]]]) -> None:
        """Group (step, layer, counts) rows by step; keep the newest grid and the timeline."""
        if not rows or self.row is None:
            return
        by_step: dict[int, dict[int, list[float]]] = {}
        for step, layer, counts in rows:
            by_step.setdefault(step, {})[layer] = counts
        top_k = self.row.top_k
        for step in sorted(by_step):
            layers = by_step[step]
            grid = {}
            for layer, counts in layers.items():
                # one definition of load: stats.load (c_i / mean); an empty step is all zeros
                k = min(max(1, top_k), max(1, len(counts)))
                grid[layer] = load_stats(counts, k)["loads"]
            self.timeline.append((step, self._timeline_column(layers, grid)))
            self.load_step, self.load_layers = step, grid
        self.load_rows = self._heat_rows()
        self.bump("load")

    def _timeline_column(self, layers: dict[int, list[float]],
                         grid: dict[int, list[float]]) -> tuple[float, ...]:
        """One column of the experts-over-time strip: per expert (or per cluster) load."""
        cluster = self.row.cluster_size if self.row else 0
        if cluster:
            return tuple(group_loads(next(iter(layers.values())), cluster))
        rows = list(grid.values())
        return tuple(sum(col) / len(rows) for col in zip(*rows, strict=True))

    def _heat_rows(self) -> list[tuple[str, list[float]]]:
        cluster = self.row.cluster_size if self.row else 0
        if cluster:
            ratios = next(iter(self.load_layers.values()))
            return [(f"c{i}", row) for i, row in enumerate(groups(ratios, cluster))]
        return [(f"L{i}", self.load_layers[i]) for i in sorted(self.load_layers)]

    def alerts_since(self) -> int:
        """The alert id to read after. Alerts up to the oldest one still open are final
        (a cleared alert stays cleared; only a resume reopens, and it resets this model),
        so a tick reads the new alerts and those that may have cleared, never the rest."""
        open_ids = [a["id"] for a in self.alerts if a.get("cleared_step") is None]
        return min(open_ids) - 1 if open_ids else self.alert_cursor

    def merge_alerts(self, rows: list[dict]) -> None:
        """Alerts read after `alerts_since()`: new ones are added, re-read ones replaced."""
        if not rows:
            return
        by_id = {a["id"]: a for a in self.alerts}
        changed = [a for a in rows if by_id.get(a["id"]) != a]
        self.alert_cursor = max(self.alert_cursor, rows[-1]["id"])
        if changed:
            by_id.update((a["id"], a) for a in changed)
            self.alerts = [by_id[i] for i in sorted(by_id)]
            self.bump("alerts")

    def add_log(self, lines: list[str]) -> None:
        if lines:
            self.log_lines.extend(lines)
            self.log_total += len(lines)
            self.bump("log")

    def set_sample(self, rows: list[dict]) -> None:
        """The newest of the samples read after the cursor (`Reader.samples`, newest first)."""
        if rows:
            self.sample, self.sample_cursor = rows[0], rows[0]["rowid"]
            self.bump("sample")

    def set_row(self, row: RunRow) -> None:
        if row != self.row:
            self.row = row
            self.bump("row")

    # called by the UI thread, under self.lock

    def open_alerts(self) -> list[dict]:
        return [a for a in self.alerts if a.get("cleared_step") is None]

    def value(self, name: str) -> float | None:
        got = self.latest.get(name)
        return None if got is None else got[1]
