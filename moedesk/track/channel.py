"""The training process's side of an external run: protocol events appended to a file.

Each event is one JSON line (runner/protocol.py) written with a single `os.write` on a
descriptor opened with O_APPEND. When `write` returns, the line is in the kernel's page
cache: a SIGKILL, a segfault or `os._exit` of the training process a microsecond later
loses nothing, and the supervisor tailing the file (runner/tail.py) stores it. Nothing
here waits for the database: a slow or locked store delays the supervisor, never the
caller. A disk that refuses the write (full, gone) warns once and drops the event, so
logging never takes a training run down.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from moedesk.runner.protocol import MetricsPacker, encode

# the wire format of runner/protocol.py `encode`, through one reused C encoder
# (json.dumps builds a new encoder when given options)
fast_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


class EventWriter:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.dropped = 0

    def write(self, event: dict) -> None:
        try:
            line = fast_encode(event)
        except ValueError:  # NaN or inf among metric values: protocol strings them
            line = encode(event)
        self.write_line(line)

    def write_metrics(self, step: int, wall: float, packer: MetricsPacker,
                      values: list[float]) -> None:
        """A metrics event in the protocol's packed form (raw float64 values): formatting
        floats as text was three quarters of a `log` call."""
        self.write_line(packer.line(step, wall, values))

    def write_line(self, line: str) -> None:
        if self.fd is None:
            raise ValueError(f"the events file {self.path} is closed")
        data = (line + "\n").encode()
        try:
            written = os.write(self.fd, data)
            if written < len(data):  # only on a full disk; the tail of a line is garbage
                raise OSError(f"short write ({written} of {len(data)} bytes)")
        except OSError as exc:
            self.dropped += 1
            if self.dropped == 1:
                print(f"moedesk: cannot append to {self.path} ({exc}); events are dropped "
                      "until it works again", file=sys.stderr)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
