"""Graceful stop: SIGTERM/SIGINT set a flag that the training loop checks between steps.

The loop then finishes its step, writes a checkpoint and reports `stopped`. A second
SIGINT (Ctrl-C twice) raises KeyboardInterrupt at once for a user who will not wait.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class StopFlag:
    def __init__(self) -> None:
        self.requested = False
        self.reason = ""
        self._previous: dict[int, object] = {}

    def request(self, reason: str) -> None:
        if not self.requested:
            self.requested, self.reason = True, reason

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.request(f"received {name}")

    def install(self) -> StopFlag:
        """Take over SIGTERM and SIGINT (main thread only; elsewhere the flag is manual)."""
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def __enter__(self) -> StopFlag:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()
