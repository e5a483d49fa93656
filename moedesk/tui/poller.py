"""The TUI's live reader of the store: one read-only connection, polled from a thread.

`Poller.poll()` does one tick: the runs list (with each run's latest loss and worst open
alert) and, for every watched run, only the rows newer than that run's cursors:
metrics, expert load, alerts (from the oldest one still open, `RunData.alerts_since`),
the newest stored sample of an LM run (`[train] sample_every`) and new bytes of
`RUN_DIR/train.log`. It never re-reads a whole history on a tick. A
damaged row of one watched run is reported in `PollResult.error` without stopping the
others. A resume deletes the rows after its checkpoint and logs them again, so when a
run's resume count moves its cached series are reset and refetched. Screens' one-off
reads go through `reading.py`. No Textual here: the app's thread worker calls `poll()` and posts messages.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from moedesk.paths import db_path, train_log
from moedesk.profiles import Profile, profile_from_dict
from moedesk.profiles.schema import LM_KINDS
from moedesk.stats import names
from moedesk.store import Reader, StoreError, StoreMissing
from moedesk.tui.model import MONITOR_METRICS, RunData, RunRow, row_from_info

LOG_CHUNK = 256 * 1024  # the first read of a long log starts this far from its end
FULL_TICK_EVERY = 5  # ticks without a commit between full reads (process checks, logs)


@dataclass
class PollResult:
    runs: tuple[RunRow, ...] | None = None  # None: the list did not change
    alerts_key: tuple = ()
    changed: list[int] = field(default_factory=list)  # watched runs with new data
    error: str | None = None


class Poller:
    def __init__(self, home: Path):
        self.home = Path(home)
        self.db_file = db_path(self.home)
        self.reader: Reader | None = None
        self.runs: tuple[RunRow, ...] = ()
        self.alerts_key: tuple = ()
        self._watched: dict[int, RunData] = {}
        self._watch_counts: dict[int, int] = {}
        self._watch_lock = threading.Lock()
        self._loss_cache: dict[int, tuple[tuple, float | None]] = {}
        self._shape_cache: dict[int, tuple[str, Profile]] = {}
        self._last_error: str | None = None
        self._data_version: int | None = None
        self._quiet_ticks = 0
        self.problem: str | None = None  # why the store cannot be read (shown, not "no runs")

    # watching: called from the UI thread

    def watch(self, run_id: int) -> RunData:
        with self._watch_lock:
            self._watch_counts[run_id] = self._watch_counts.get(run_id, 0) + 1
            data = self._watched.get(run_id)
            if data is None:
                data = self._watched[run_id] = RunData(run_id)
            return data

    def unwatch(self, run_id: int) -> None:
        with self._watch_lock:
            left = self._watch_counts.get(run_id, 0) - 1
            if left > 0:
                self._watch_counts[run_id] = left
                return
            self._watch_counts.pop(run_id, None)
            self._watched.pop(run_id, None)

    def data(self, run_id: int) -> RunData | None:
        with self._watch_lock:
            return self._watched.get(run_id)

    @property
    def active(self) -> bool:
        return any(r.active for r in self.runs)

    # polling: called from the worker thread

    def _open(self) -> Reader | None:
        if self.reader is None:
            try:
                self.reader = Reader(self.db_file)
            except StoreMissing:
                self.problem = None
                return None  # no database yet: the first launch creates it
            except StoreError as exc:  # damaged, unreadable: say so, retry next tick
                self.problem = str(exc)
                return None
            self.problem = None
        return self.reader

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    def poll(self) -> PollResult:
        result = PollResult()
        reader = self._open()
        if reader is None:
            if self.problem and self.problem != self._last_error:
                self._last_error = result.error = self.problem
            return result
        try:
            # write down dead supervisors first (a short write, only when there is one), so
            # the data_version below already includes it
            reader.record_gone()
            if self._unchanged(reader):
                return result
            runs = self._poll_runs(reader)
            with self._watch_lock:
                watched = list(self._watched.values())
            by_id = {r.id: r for r in runs}
            problems = []
            for data in watched:
                try:
                    if self._poll_run(reader, data, by_id.get(data.run_id)):
                        result.changed.append(data.run_id)
                except (ValueError, TypeError, KeyError, IndexError) as exc:
                    # a damaged row of this run: the others and the runs list go on
                    problems.append(f"run {data.run_id}: cannot read its new rows "
                                    f"({type(exc).__name__}: {exc})")
        except Exception as exc:  # a locked or replaced file: report, reopen next tick
            message = f"cannot read {self.db_file}: {exc}"
            if isinstance(exc, StoreError):
                self.problem = message = str(exc)
            self.close()
            if message != self._last_error:
                self._last_error = result.error = message
            return result
        message = "; ".join(problems) or None
        if message != self._last_error:
            result.error = message
        self._last_error = message
        if runs != self.runs:
            self.runs = runs
            result.runs = runs
        result.alerts_key = self.alerts_key
        return result

    def _unchanged(self, reader: Reader) -> bool:
        """True when no writer committed since the last tick (SQLite's data_version).

        The full tick still runs every `FULL_TICK_EVERY` ticks: a supervisor that died
        writes nothing, and only the process check turns its run into "crashed"; a new
        watcher also needs its first fetch.
        """
        version = reader.query("PRAGMA data_version")[1][0][0]
        with self._watch_lock:
            fresh = any(d.num_resumes is None for d in self._watched.values())
        self._quiet_ticks += 1
        if version == self._data_version and not fresh and self._quiet_ticks < FULL_TICK_EVERY:
            return True
        self._data_version = version
        self._quiet_ticks = 0
        return False

    def _poll_runs(self, reader: Reader) -> tuple[RunRow, ...]:
        worst = reader.worst_open_alert()
        new_alerts = reader.alerts(after_id=self.alerts_key[0] if self.alerts_key else 0)
        last_id = new_alerts[-1]["id"] if new_alerts else (self.alerts_key[0]
                                                           if self.alerts_key else 0)
        self.alerts_key = (last_id, tuple(sorted(worst.items())))
        rows = []
        tags = reader.tags()
        for info in reader.runs():
            rows.append(row_from_info(info, self._loss(reader, info), worst.get(info.id),
                                      self._profile(info), tuple(tags.get(info.id, ()))))
        return tuple(rows)

    def _profile(self, info) -> Profile:
        """A run's stored config rebuilt as a `Profile`, once: it never changes after the
        run is created. A config that cannot be read (a damaged row) gives the schema's
        defaults for the run's kind, so the list still shows the run."""
        raw = info.row.get("config_json") or "{}"
        cached = self._shape_cache.get(info.id)
        if cached is None or cached[0] != raw:
            try:
                profile = profile_from_dict(json.loads(raw))
            except (ValueError, KeyError, TypeError, AttributeError):
                profile = profile_from_dict({"name": info.name, "kind": info.kind, "seed": 0})
            cached = self._shape_cache[info.id] = (raw, profile)
        return cached[1]

    def _loss(self, reader: Reader, info) -> float | None:
        """The latest train loss; only runs that changed since the last tick are asked."""
        key = (info.status, info.last_step, info.row.get("resumed_from_step"))
        cached = self._loss_cache.get(info.id)
        if cached is not None and cached[0] == key:
            return cached[1]
        name = names.FF_GOODNESS_DELTA if info.kind == "ternary" else names.TRAIN_LOSS
        value = reader.last_value(info.id, name)
        self._loss_cache[info.id] = (key, value)
        return value

    def _poll_run(self, reader: Reader, data: RunData, row: RunRow | None) -> bool:
        if row is None:
            return False
        before = dict(data.versions)
        num_resumes = len(reader.resumes(data.run_id))
        with data.lock:
            if data.num_resumes is not None and num_resumes != data.num_resumes:
                data.reset()  # rows after the checkpoint were deleted: refetch from scratch
            data.num_resumes = num_resumes
            data.set_row(row)
            cursor, alerts_since = data.metric_cursor, data.alerts_since()
        metrics, metric_cursor = reader.metrics_since(data.run_id, cursor, list(MONITOR_METRICS))
        loads, load_cursor = reader.expert_load_since(data.run_id, data.load_cursor)
        alerts = reader.alerts(data.run_id, after_id=alerts_since)
        samples = reader.samples(data.run_id, data.sample_cursor, limit=1) \
            if row.kind in LM_KINDS else []
        if len(reader.resumes(data.run_id)) != num_resumes:
            return False  # a resume landed mid-tick: drop this tick, the next one resets
        lines = self._read_log(data, row)
        with data.lock:
            data.add_metrics(metrics)
            data.metric_cursor = metric_cursor
            data.add_expert_load(loads)
            data.load_cursor = load_cursor
            data.merge_alerts(alerts)
            data.add_log(lines)
            data.set_sample(samples)
        return data.versions != before

    def _read_log(self, data: RunData, row: RunRow) -> list[str]:
        if not row.run_dir:
            return []
        path = train_log(row.run_dir)
        try:
            size = path.stat().st_size
        except OSError:
            return []
        if size < data.log_offset:
            data.log_offset = 0  # the log was replaced
        if size == data.log_offset:
            return []
        first = data.log_offset == 0
        start = max(0, size - LOG_CHUNK) if first else data.log_offset
        try:
            with open(path, "rb") as f:
                f.seek(start)
                chunk = f.read(size - start)
        except OSError:
            return []  # removed or unreadable since the stat: try again next tick
        cut = chunk.rfind(b"\n")
        if cut < 0:
            return []  # no complete line yet: keep the partial one for the next tick
        data.log_offset = start + cut + 1
        lines = chunk[:cut].decode("utf-8", "replace").split("\n")
        if first and start > 0:
            lines = lines[1:]  # a read that starts mid-file starts mid-line
        return [line.rstrip("\r") for line in lines]


def reap_child(pid: int) -> bool:
    """Reap `pid` if it is our finished child (a supervisor we spawned); True while it runs."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == 0
