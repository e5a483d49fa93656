"""The trainer's only output channel: protocol events on stdout, human logs on stderr.

`Emitter` writes one JSON line per event and flushes, so the supervisor sees each
step as soon as it happens. `NullEmitter` discards events (tests, benchmarks).
"""

from __future__ import annotations

import io
import os
import sys
import time
from typing import IO, Any

from moedesk.runner.protocol import encode


class Emitter:
    def __init__(self, stream: IO[str] | None = None, log_stream: IO[str] | None = None):
        self.stream = stream if stream is not None else sys.stdout
        self.log_stream = log_stream if log_stream is not None else sys.stderr
        self.lost_lines = 0  # log lines a failing stderr refused since the last one written

    def emit(self, type: str, **fields: Any) -> None:
        fields.setdefault("wall", time.time())
        try:
            self.stream.write(encode({"type": type, **fields}) + "\n")
            self.stream.flush()
        except BrokenPipeError:
            # the supervisor is gone: nobody records this run any more, so stop quietly
            # (the run reads as crashed; resume continues from the last checkpoint)
            self.log("supervisor is gone (stdout closed); stopping the trainer")
            os._exit(3)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.emit("metrics", step=step, values=values)

    def expert_load(self, step: int, loads: dict[int, list[int]]) -> None:
        self.emit("expert_load", step=step, loads={str(k): v for k, v in loads.items()})

    def log(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        note = (f"{stamp} ({self.lost_lines} log lines lost: the log could not be written)\n"
                if self.lost_lines else "")
        try:
            self._write_log(f"{note}{stamp} {message}\n")
        except OSError:
            # stderr is the run's train.log: a full disk must not end the run (its events
            # travel on stdout and are kept); the line is lost and the next one says so
            self.lost_lines += 1
            return
        self.lost_lines = 0

    def _write_log(self, text: str) -> None:
        try:
            fd = self.log_stream.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):  # StringIO and the like
            self.log_stream.write(text)
            self.log_stream.flush()
            return
        # one unbuffered write per line: a refused line is gone, not left in a buffer to
        # fail every later flush (and the interpreter's exit)
        self.log_stream.flush()
        os.write(fd, text.encode(getattr(self.log_stream, "encoding", None) or "utf-8",
                                 errors="backslashreplace"))


class NullEmitter(Emitter):
    """Drops every event; logs still go to stderr unless `quiet`."""

    def __init__(self, quiet: bool = True):
        super().__init__()
        self.quiet = quiet

    def emit(self, type: str, **fields: Any) -> None:
        pass

    def log(self, message: str) -> None:
        if not self.quiet:
            super().log(message)


class ListEmitter(Emitter):
    """Keeps events in memory (tests)."""

    def __init__(self):
        super().__init__()
        self.events: list[dict[str, Any]] = []

    def emit(self, type: str, **fields: Any) -> None:
        self.events.append({"type": type, **fields})

    def log(self, message: str) -> None:
        pass
