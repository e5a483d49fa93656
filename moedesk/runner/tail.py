"""Following an append-only events file: complete lines only, from where the last read ended.

An external run's training process appends one protocol event per `os.write` to
`RUN_DIR/events.jsonl` (moedesk/track/); its supervisor reads the new bytes with
`EventTail.read_lines` on every poll. A line still being written (no newline yet) waits
for the next read, except in the final read after the writer is gone, where it comes
back as it is (and is kept as a log line when it is not a whole event).
"""

from __future__ import annotations

import os
from pathlib import Path

READ_CHUNK = 1 << 20
MAX_LINES_PER_READ = 50_000  # the caller flushes between reads of a long backlog


class EventTail:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None
        self.partial = b""
        self.bytes_read = 0

    def _open(self) -> bool:
        if self.fd is None:
            try:
                self.fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return False  # the writer has not created it yet
        return True

    def read_lines(self, final: bool = False) -> list[str]:
        """Complete lines appended since the last call (at most MAX_LINES_PER_READ)."""
        if not self._open():
            return []
        lines: list[bytes] = []
        while len(lines) < MAX_LINES_PER_READ:
            chunk = os.read(self.fd, READ_CHUNK)
            if not chunk:
                break
            self.bytes_read += len(chunk)
            parts = (self.partial + chunk).split(b"\n")
            self.partial = parts.pop()
            lines.extend(parts)
        if final and self.partial and len(lines) < MAX_LINES_PER_READ:
            lines.append(self.partial)
            self.partial = b""
        return [line.decode("utf-8", "replace") for line in lines]

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
