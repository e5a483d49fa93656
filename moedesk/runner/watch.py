"""What the supervisor does besides ingesting: its heartbeat and answering stop requests.

`Watch.tick(step)` runs on every turn of the supervisor's loop (at least every 0.25 s):
it touches `RUN_DIR/heartbeat` every `HEARTBEAT_S` (readers call a live supervisor with
an old heartbeat `unresponsive`), and when `RUN_DIR/stop_request.json` changes it passes
the stop on to the trainer's process group itself and acknowledges it in
`RUN_DIR/stop_ack.json` with the step it saw, which `moedesk stop` waits for. An external
run's supervisor passes `deliver` instead (runner/external.py): it knows whether the process
stops itself (`graceful_stop`) and whether it leads a process group.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from moedesk.paths import heartbeat_file, stop_request_file
from moedesk.runner.control import acknowledge_stop, read_stop_request, signal_trainer
from moedesk.store.liveness import HEARTBEAT_S, touch_heartbeat

REQUEST_CHECK_S = 0.2


class Watch:
    def __init__(self, run_dir: Path, deliver: Callable[[dict], None] | None = None):
        self.run_dir = Path(run_dir)
        self.deliver = deliver  # passes a stop request on; default: signal the trainer's group
        self.trainer_pid: int | None = None
        self.last_beat = 0.0
        self.last_check = 0.0
        self.request_mtime: float | None = None
        self.acked: set[float] = set()

    def beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_beat >= HEARTBEAT_S:
            try:
                touch_heartbeat(self.run_dir)
            except OSError:
                pass  # a full disk: readers will call the run unresponsive, then we recover
            self.last_beat = now

    def tick(self, step: int) -> None:
        self.beat()
        now = time.monotonic()
        if now - self.last_check < REQUEST_CHECK_S:
            return
        self.last_check = now
        try:
            mtime = os.stat(stop_request_file(self.run_dir)).st_mtime
        except OSError:
            return
        if mtime == self.request_mtime:
            return
        self.request_mtime = mtime
        request = read_stop_request(self.run_dir)
        if request is None or request.get("time") in self.acked:
            return
        self.acked.add(request.get("time"))
        kill = request.get("mode") == "kill"
        if self.deliver is not None:
            self.deliver(request)
        else:
            signal_trainer(self.trainer_pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            acknowledge_stop(self.run_dir, request, step)
        except OSError:
            pass

    @property
    def stopping(self) -> bool:
        """A stop was requested and passed on: the trainer's pause to checkpoint and exit
        is not a stall."""
        return bool(self.acked)

    def close(self) -> None:
        heartbeat_file(self.run_dir).unlink(missing_ok=True)
