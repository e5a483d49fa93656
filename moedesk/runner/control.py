"""Stopping runs: the stop-request file, its acknowledgement, signals to the trainer.

A stop is recorded in `RUN_DIR/stop_request.json` before any signal is sent, so the
supervisor can tell a requested stop (status stopped) from a crash (status crashed).
The supervisor watches that file too: it passes the stop on to the trainer itself and
answers in `RUN_DIR/stop_ack.json` (the request's time, the step it saw), which is how
`moedesk stop` tells a live supervisor from a frozen one.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from moedesk.paths import stop_ack_file, stop_request_file


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def write_stop_request(run_dir: Path, mode: str = "graceful") -> dict:
    """Record a stop request; returns it (its `time` identifies it in the ack)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    request = {"mode": mode, "time": time.time()}
    _write_json(stop_request_file(run_dir), request)
    return request


def acknowledge_stop(run_dir: Path, request: dict, step: int) -> None:
    """The supervisor's answer: it saw `request` at `step` and passed it on."""
    _write_json(stop_ack_file(run_dir), {"request_time": request.get("time"),
                                         "mode": request.get("mode"), "step": step,
                                         "time": time.time(), "pid": os.getpid()})


def read_stop_ack(run_dir: Path) -> dict | None:
    try:
        return json.loads(stop_ack_file(run_dir).read_text())
    except (OSError, ValueError):
        return None


def wait_for_ack(run_dir: Path, request: dict, timeout: float, poll: float = 0.05
                 ) -> dict | None:
    """The supervisor's acknowledgement of `request`, or None after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        ack = read_stop_ack(run_dir)
        if ack is not None and ack.get("request_time") == request["time"]:
            return ack
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll)


def read_stop_request(run_dir: Path) -> dict | None:
    try:
        return json.loads(stop_request_file(run_dir).read_text())
    except (OSError, ValueError):
        return None


def clear_stop_request(run_dir: Path) -> None:
    stop_request_file(run_dir).unlink(missing_ok=True)
    stop_ack_file(run_dir).unlink(missing_ok=True)


def signal_trainer(trainer_pid: int | None, sig: int) -> bool:
    """Signal the trainer's process group (it leads its own session); False if gone."""
    if not trainer_pid:
        return False
    try:
        os.killpg(trainer_pid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def stop_signal(kill: bool) -> int:
    return signal.SIGKILL if kill else signal.SIGTERM
