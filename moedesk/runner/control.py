"""Stopping runs: the stop-request file and signals to the trainer's process group.

A stop is recorded in `RUN_DIR/stop_request.json` before any signal is sent, so the
supervisor can tell a requested stop (status stopped) from a crash (status crashed).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from moedesk.paths import stop_request_file


def write_stop_request(run_dir: Path, mode: str = "graceful") -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = stop_request_file(run_dir)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"mode": mode, "time": time.time()}))
    os.replace(tmp, path)


def read_stop_request(run_dir: Path) -> dict | None:
    try:
        return json.loads(stop_request_file(run_dir).read_text())
    except (OSError, ValueError):
        return None


def clear_stop_request(run_dir: Path) -> None:
    stop_request_file(run_dir).unlink(missing_ok=True)


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
