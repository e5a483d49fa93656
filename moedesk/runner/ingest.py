"""Decoded trainer events -> batches, health evaluation, and when to commit.

`Ingestor` buffers events into a `Batch` and asks the health engine about each step's
metrics (the metrics events of one step merged), with the time the step *arrived* (a
supervisor that was frozen and replays a backlog sees it arrive now, so the stalled rule
does not fire once per backlogged step).
It commits adaptively (`commit`, called by the supervisor's loop once it has drained what
the trainer already wrote): at once when the trainer is quiet, one large batch when it
floods, never more often than every `MIN_COMMIT_GAP_S`, never more than `MAX_BATCH_ROWS`
at a time. The writes themselves, and surviving a store that refuses them, are the
`Committer`'s (commit.py). A gap in its own ticks (the supervisor was frozen) restarts
the stall clock, so a thaw fires no stall at all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from moedesk.health.thresholds import SEVERITIES
from moedesk.runner.protocol import TRAINER_ALERT_RULE, decode
from moedesk.store.ingest import Batch

MAX_BATCH_ROWS = 20_000
# at most ~200 commits a second per run: a quiet trainer's step is visible within a few
# ms, and eight runs logging every few ms do not queue for the write lock
MIN_COMMIT_GAP_S = 0.005
# after the queue runs dry, wait this long for the rest of a step's events (metrics,
# expert load, analysis arrive as separate lines) so they are committed together
COALESCE_S = 0.002
# the supervisor's loop turns at least every 0.25 s (a commit may wait out its 5 s busy
# timeout); a longer gap between two ticks means the supervisor itself was not running
# (SIGSTOP, a suspended machine), and the time it lost says nothing about the trainer
FROZEN_GAP_S = 10.0


def event_alert(event: dict, last_step: int, rule: str) -> dict:
    """The alert row of an `alert` event: a user's (moedesk.track) or the trainer's own
    (e.g. bf16 on a CPU that emulates it), with its suggested action when it has one."""
    level = event.get("level") if event.get("level") in SEVERITIES else "warning"
    title, text = str(event.get("title") or "alert"), str(event.get("text") or "")
    action = event.get("action")
    return {"step": int(event.get("step") or last_step), "rule": rule, "severity": level,
            "metric": None, "value": None, "threshold": None,
            "message": f"{title}: {text}" if text else title,
            "action": action if isinstance(action, str) and action else None,
            "wall": float(event.get("wall") or time.time())}


class Ingestor:
    def __init__(self, committer, engine=None,
                 on_alert: Callable[[dict], None] | None = None,
                 clock: Callable[[], float] = time.time):
        self.committer = committer
        self.engine = engine
        self.on_alert = on_alert
        self.clock = clock
        self.batch = Batch()
        self.last_commit = 0.0  # monotonic
        self.finished: dict | None = None
        self.started: dict | None = None
        self.last_step = 0
        self.last_tick: float | None = None
        self.log_lines: list[str] = []
        # the values of the newest step not yet shown to the health rules (see `_observe`)
        self.unobserved: tuple[int, dict, float] | None = None

    @property
    def full(self) -> bool:
        return len(self.batch) >= MAX_BATCH_ROWS

    def wait_s(self) -> float:
        """How long to wait for more lines before committing what is pending."""
        return max(COALESCE_S, self.last_commit + MIN_COMMIT_GAP_S - time.monotonic())

    def feed_line(self, line: str) -> None:
        decoded = decode(line)
        if decoded.event is None:
            if decoded.text.strip():
                self.log_lines.append(decoded.text)
            return
        self.feed(decoded.event)

    def feed(self, event: dict) -> None:
        kind = event["type"]
        step = int(event.get("step", self.last_step) or 0)
        arrived = self.clock()
        wall = float(event.get("wall") or arrived)
        self.last_step = max(self.last_step, step)
        if kind == "metrics":
            values = event["values"]
            self.batch.add_metrics(step, values, wall)
            if self.engine is not None:
                self._observe(step, values, arrived)
        elif kind == "expert_load":
            self.batch.add_expert_load(step, event.get("loads") or {}, wall)
        elif kind == "checkpoint":
            self.batch.checkpoints.append((step, event["path"], event.get("size"),
                                           event.get("sha256"), wall, event.get("metric"),
                                           event.get("score")))
            if event.get("best_step") is not None:
                self.batch.best_step = int(event["best_step"])
        elif kind == "analysis":
            self.batch.analysis.append((step, str(event.get("name") or "analysis"),
                                        json.dumps(event.get("payload")), wall))
        elif kind == "sample":
            self.batch.samples.append((step, str(event.get("prompt", "")),
                                       str(event.get("text", "")), event.get("temperature"),
                                       event.get("seed"), event.get("max_new_tokens"), wall))
        elif kind == "started":
            self.started = event
            self.batch.started = event
        elif kind == "finished":
            self.finished = event
        elif kind == "alert":
            # the trainer's own: an external run's alerts are a user's (external_run.py)
            rule = str(event.get("rule") or TRAINER_ALERT_RULE)
            self.batch.alerts.append(event_alert(event, self.last_step, rule))

    def _observe(self, step: int, values: dict, arrived: float) -> None:
        # the metrics events of one step reach the rules as one event: an external run logs
        # its curves and its expert load's moe/* statistics as two events, an own trainer
        # sends both in one, and the rules see (and cost) the same either way. A step is
        # shown to the rules when the next step arrives, at a tick and before a commit.
        pending = self.unobserved
        if pending is not None and pending[0] == step:
            self.unobserved = (step, {**pending[1], **values}, pending[2])
            return
        self.observe_pending()
        self.unobserved = (step, values, arrived)

    def observe_pending(self) -> None:
        """Show the health rules the step they have not seen yet."""
        if self.unobserved is not None:
            step, values, arrived = self.unobserved
            self.unobserved = None
            if self.engine is not None:
                self._apply_health(self.engine.observe(step, values, arrived))

    def tick(self, now: float | None = None) -> None:
        """Let time-based rules (stalled) look at the clock; after a gap in the ticks
        (the supervisor was frozen) the stall clock restarts instead of firing."""
        self.observe_pending()
        now = self.clock() if now is None else now
        frozen = self.last_tick is not None and now - self.last_tick > FROZEN_GAP_S
        self.last_tick = now
        if self.engine is None:
            return
        if frozen and self.engine.stalled is not None:
            self.engine.stalled.restart_clock(now)
        self._apply_health(self.engine.tick(now))

    def _apply_health(self, result) -> None:
        fired, cleared = result
        for alert in fired:
            self.batch.alerts.append(alert)
            if self.on_alert is not None:
                self.on_alert(alert)
        for rule, step in cleared:
            self.batch.cleared.append((rule, step))

    def commit(self) -> None:
        """Hand what is pending to the committer (a no-op when nothing is)."""
        self.observe_pending()
        if len(self.batch) or self.batch.last_step is not None:
            self.committer.write(self.batch)
            self.batch = Batch()
        self.last_commit = time.monotonic()

    @property
    def rows_written(self) -> int:
        return self.committer.rows_written


__all__ = ["Ingestor", "MAX_BATCH_ROWS", "MIN_COMMIT_GAP_S", "COALESCE_S"]
