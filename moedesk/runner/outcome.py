"""How a run ended, from what the trainer said, how it exited and who asked it to stop."""

from __future__ import annotations

import os
import signal
from pathlib import Path

LOG_TAIL_LINES = 20


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def outcome(finished: dict | None, exit_code: int, request: dict | None,
            stops: list[dict], log_path: Path) -> tuple[str, str | None]:
    """The run's final status and error text. `stops`: why moedesk itself stopped the
    trainer (a health rule's alert, an unwritable store), first one first."""
    stop_signals = (-signal.SIGTERM, -signal.SIGINT)
    if finished is not None:
        status = finished.get("status", "completed")
        if status == "failed":
            reason = finished.get("reason") or "the trainer reported a failure"
            return "failed", f"{reason}\n{log_tail(log_path)}".strip()
        if status == "stopped" and stops:
            stop = stops[0]
            if stop["rule"] == "store":
                return "stopped", f"stopped by moedesk: {stop['message']}"
            return "stopped", f"stopped by health rule {stop['rule']}: {stop['message']}"
        if exit_code != 0 and not (exit_code in stop_signals and (request or stops)):
            return status, f"trainer exited with code {exit_code} after finishing"
        # a stop that arrived as the trainer finished only cut its exit short
        return status, None
    if request is not None:
        how = "killed" if request.get("mode") == "kill" else "stopped"
        return "stopped", f"{how} by request (exit code {exit_code})"
    tail = log_tail(log_path)
    if exit_code < 0:
        name = signal.Signals(-exit_code).name if -exit_code in signal.valid_signals() else exit_code
        return "crashed", f"trainer killed by signal {name} without finishing\n{tail}".strip()
    if exit_code != 0:
        return "failed", f"trainer exited with code {exit_code}\n{tail}".strip()
    return "crashed", f"trainer exited without a finished event\n{tail}".strip()
