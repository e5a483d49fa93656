"""One external run's ingest: its events file in, rows, load metrics and health out.

An external run is a training process moedesk did not write: a script using
`moedesk.init` (moedesk/track/), a transformers Trainer with `MoedeskCallback`, or any
command under `moedesk watch`. It never touches SQLite: it appends protocol events to
`RUN_DIR/events.jsonl` and its supervisor (runner/external.py), the run's only writer,
feeds them here. `ExternalRun` stores them through the same `Ingestor` as moedesk's own
trainers, turns expert counts into the `moe/*` metrics (runner/loadmetrics.py; `moedesk.track`
sends them itself, marked `"stats": true`, as moedesk's trainers do) and runs
the health rules with the thresholds of the run's expert count and top-k, learned from
its `started` event or its first expert load (the engine is rebuilt then, replaying
what was stored). `settings` builds the run's `config_json` (docs/tracking.md).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from moedesk.health.engine import RULE_METRICS, HealthEngine, RunContext
from moedesk.health.thresholds import STOP_ON
from moedesk.paths import events_file
from moedesk.runner.commit import Committer
from moedesk.runner.control import write_stop_request
from moedesk.runner.ingest import Ingestor, event_alert
from moedesk.runner.loadmetrics import LoadMetrics
from moedesk.runner.protocol import decode
from moedesk.runner.tail import EventTail
from moedesk.store import external as store_external
from moedesk.store import runs as store_runs

USER_ALERT_RULE = "user"
STORE_STOP = "store"  # the rule of a stop for an unwritable store (runner/supervise.py's too)


def settings(*, name: str | None = None, config: dict | None = None, stop_on: str = "critical",
             health: dict | None = None, moe: dict | None = None, total_steps: int | None = None,
             program: str | None = None, command: list[str] | None = None,
             cwd: str | None = None, graceful_stop: bool = False) -> dict:
    """An external run's `config_json`: profile-shaped where readers look (kind, MoE shape,
    health, steps), the user's config under `config`, the rest under `external`."""
    moe = moe or {}
    config = config or {}
    seed = config.get("seed")
    return {
        "name": name, "kind": store_external.EXTERNAL_KIND,
        "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        "train": {"steps": total_steps, "warmup_steps": int(moe.get("warmup_steps") or 0)},
        "moe": {"num_experts": int(moe.get("num_experts") or 0),
                "top_k": int(moe.get("top_k") or 0)},
        "health": {"stop_on": stop_on, "rules": health or {}},
        "external": {"program": program, "command": command, "cwd": cwd,
                     "named": bool(name), "balanced": moe.get("balanced"),
                     "graceful_stop": bool(graceful_stop)},
        "config": config,
    }


def settings_problems(event: dict) -> list[str]:
    """What is wrong with a `started` event's stop_on and health overrides (empty: fine)."""
    from moedesk.profiles.rules import health_problems

    out = []
    stop_on = event.get("stop_on")
    if stop_on is not None and stop_on not in STOP_ON:
        out.append(f"stop_on: got {stop_on!r}; allowed values: {', '.join(STOP_ON)}")
    health = event.get("health") or {}
    if not isinstance(health, dict):
        return out + [f"health: got {health!r}; must be a dict of rule -> thresholds"]
    out += [f"health.{p.key.removeprefix('health.')}: {p.message}" for p in health_problems(health)]
    return out


def merge_started(current: dict, event: dict) -> dict:
    """The settings after a `started` event: what the process says, over what was known."""
    ext = current["external"]
    moe = {**{k: v for k, v in {"num_experts": current["moe"]["num_experts"],
                                "top_k": current["moe"]["top_k"],
                                "warmup_steps": current["train"]["warmup_steps"],
                                "balanced": ext.get("balanced")}.items() if v},
           **{k: v for k, v in (event.get("moe") or {}).items() if v is not None}}
    name = current["name"] if ext.get("named") or not event.get("name") else event["name"]
    new = settings(name=name, config=event.get("config") or current["config"],
                   stop_on=event.get("stop_on") or current["health"]["stop_on"],
                   health=event.get("health") or current["health"]["rules"], moe=moe,
                   total_steps=event.get("total_steps") or current["train"]["steps"],
                   program=ext.get("program") or event.get("program"),
                   command=ext.get("command"), cwd=ext.get("cwd"),
                   graceful_stop=bool(event.get("graceful_stop", ext.get("graceful_stop"))))
    new["external"]["named"] = bool(ext.get("named") or event.get("name"))
    return new


def run_context(config: dict) -> RunContext:
    """The health rules' view of an external run: topk rules once its MoE shape is known
    (an unknown balancing counts as balanced, so the balance rules wait to settle)."""
    moe, ext = config["moe"], config["external"]
    if moe["num_experts"] and moe["top_k"]:
        balanced = ext.get("balanced")
        return RunContext("topk", moe["num_experts"], moe["top_k"],
                          int(config["train"]["warmup_steps"] or 0),
                          balanced=True if balanced is None else bool(balanced))
    return RunContext("dense", 0, 1)


class ExternalRun:
    """Events file in, rows out: one external run's ingest, load metrics and health.

    Every write goes through the `Committer` (runner/commit.py): the run's settings too
    (`Batch.settings`), so an unwritable store spools them with the rows and never takes
    the supervisor down. `stops` says why moedesk itself asked the process to stop (a
    health rule at `stop_on`, the store unwritable for too long), first one first."""

    def __init__(self, conn, run_id: int, config: dict, folder: Path,
                 committer: Committer | None = None):
        self.conn, self.run_id, self.config, self.run_dir = conn, run_id, config, folder
        self.committer = committer or Committer(conn, run_id, folder, keep=0)
        self.ingestor = Ingestor(self.committer, None, self._on_alert)
        self.loads = LoadMetrics()
        self.tail = EventTail(events_file(folder))
        self.stops: list[dict] = []  # {"rule", "message", "step"}
        self.notes: list[str] = []
        # set by the supervisor: passes a stop on when not even the request file is written
        self.deliver_now: Callable[[dict], None] | None = None
        self._build_engine(replay=False)

    @property
    def finished(self) -> dict | None:
        return self.ingestor.finished

    @property
    def health_stop(self) -> list[dict]:
        return [s for s in self.stops if s["rule"] != STORE_STOP]

    def _build_engine(self, replay: bool = True) -> None:
        health = self.config["health"]
        engine = HealthEngine.for_run(run_context(self.config), health["rules"],
                                      health["stop_on"])
        if replay:  # the rows stored so far, so windows and open alerts carry over
            self.ingestor.commit()
            try:
                history, open_rules = store_runs.health_history(self.conn, self.run_id,
                                                                RULE_METRICS)
                engine.replay(history, time.time(), open_rules)
            except sqlite3.Error as exc:  # the store is down: the rules start afresh
                self.notes.append(f"health rules restarted without their history ({exc})")
        self.ingestor.engine = engine

    def _update(self, config: dict, tags=()) -> None:
        shape_changed = (run_context(config) != run_context(self.config)
                         or config["health"] != self.config["health"])
        self.config = config
        self.ingestor.batch.settings = {"config": config, "tags": list(tags)}
        self.ingestor.commit()
        if shape_changed:
            self._build_engine()

    def _on_alert(self, alert: dict) -> None:
        if alert.get("stops") and not self.stops:
            self.request_stop(alert["rule"], alert["message"], alert.get("step"))

    def request_stop(self, rule: str, message: str, step: int | None = None) -> None:
        """moedesk stops the run itself: the stop request the supervisor's `Watch` passes
        on (a full disk that refuses even that file: `deliver_now` is called with it)."""
        self.stops.append({"rule": rule, "message": message,
                           "step": self.ingestor.last_step if step is None else step})
        try:
            write_stop_request(self.run_dir, "graceful")
        except OSError:
            if self.deliver_now is not None:
                self.deliver_now({"mode": "graceful", "time": time.time()})

    def pump(self, final: bool = False, tick: bool = True) -> int:
        """Ingest what was appended since the last call; returns the number of lines.
        `tick=False` while a stop is under way (a process checkpointing is no stall)."""
        lines = self.tail.read_lines(final)
        for line in lines:
            self.feed_line(line)
            if self.ingestor.full:
                self.ingestor.commit()
        if tick:
            self.ingestor.tick()
        # what one read found is one commit: a quiet writer's line is readable at once, a
        # flood goes in one transaction per read (MAX_BATCH_ROWS at most)
        self.ingestor.commit()
        return len(lines)

    def feed_line(self, line: str) -> None:
        """One line of the events file; a malformed event (anyone may append to the file)
        is kept as a log line with a note, never an error."""
        decoded = decode(line)
        event = decoded.event
        if event is None:
            self.ingestor.feed_line(line)  # kept as a log line
            return
        try:
            self._feed(event)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            self.ingestor.log_lines.append(decoded.text)
            self._note_once(f"a {event['type']} event was not stored ({type(exc).__name__}:"
                            f" {exc}); it is kept in train.log")

    def _note_once(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)

    def _feed(self, event: dict) -> None:
        kind = event["type"]
        if kind == "started":
            self._started(event)
        elif kind == "expert_load":
            self._expert_load(event)
            return
        elif kind == "alert":
            self._user_alert(event)
            return
        self.ingestor.feed(event)

    def _started(self, event: dict) -> None:
        problems = settings_problems(event)
        if problems:
            self.notes.append("started event: ignored bad settings: " + "; ".join(problems))
            event = {k: v for k, v in event.items() if k not in ("stop_on", "health")}
        tags = [str(t) for t in event.get("tags") or []]
        self._update(merge_started(self.config, event), tags)

    def _expert_load(self, event: dict) -> None:
        loads = event.get("loads") or {}
        if not isinstance(loads, dict) or not loads:
            return
        if not all(isinstance(c, list) and c and set(map(type, c)) == {int} and min(c) >= 0
                   for c in loads.values()):  # C-level passes: this runs for every layer
            raise ValueError("loads must map each layer to a list of whole counts >= 0")
        loads = {str(int(k)): v for k, v in loads.items()}
        event = {**event, "loads": loads}
        moe = self.config["moe"]
        top_k = int(event.get("top_k") or moe["top_k"] or 0)
        self.ingestor.feed(event)
        experts = max(len(c) for c in loads.values())
        if (experts, top_k) != (moe["num_experts"], moe["top_k"]) and top_k:
            new = json.loads(json.dumps(self.config))
            new["moe"].update(num_experts=experts, top_k=top_k)
            self._update(new)
        if not top_k:
            if not self.notes or "top_k" not in self.notes[-1]:
                self.notes.append("expert_load without top_k: counts stored, no moe/* metrics")
            return
        if event.get("stats") is True:
            return  # moedesk.track sent the moe/* statistics in the next line (track/run.py)
        try:
            values = self.loads.values({int(k): v for k, v in loads.items()}, top_k)
        except (ValueError, TypeError) as exc:
            self.notes.append(f"expert_load at step {event.get('step')}: {exc}")
            return
        self.ingestor.feed({"type": "metrics", "step": event.get("step"),
                            "wall": event.get("wall"), "values": values})

    def _user_alert(self, event: dict) -> None:
        self.ingestor.batch.alerts.append(
            event_alert(event, self.ingestor.last_step, USER_ALERT_RULE))

    def drain(self) -> None:
        """After the writer is gone: everything left, a last unterminated line included."""
        while self.pump():
            pass
        self.pump(final=True)
        self.ingestor.commit()
        self.tail.close()

    def write_notes(self, log_path: Path) -> None:
        lines = self.ingestor.log_lines + [f"moedesk: {n}" for n in self.notes]
        if lines:
            with open(log_path, "a", encoding="utf-8") as log:
                log.write("\n".join(lines) + "\n")

    def stopped_text(self, request: dict | None) -> str | None:
        if self.stops:
            stop = self.stops[0]
            if stop["rule"] == STORE_STOP:
                return f"stopped by moedesk: {stop['message']}"
            return f"stopped by health rule {stop['rule']}: {stop['message']}"
        if request is not None:
            return ("killed" if request.get("mode") == "kill" else "stopped") + " by request"
        return None
