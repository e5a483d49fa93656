"""`moedesk logs RUN [-f]`: print (or follow, like `tail -f`) a run's train log.

The log is `RUN_DIR/train.log` (paths.py): the trainer's human lines and the
supervisor's notes. Text is written exactly as it is in the file; with `-f` it keeps
printing new lines until the run ends (or Ctrl-C), then exits with the run's exit code.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from pathlib import Path
from typing import Annotated

import typer

from moedesk.cli.app import EXIT_FOR_STATUS, EXIT_OK, HomeOpt, LatestRunArg, app, err_console, fail, home_of
from moedesk.paths import supervisor_log, train_log
from moedesk.store import StoreError, open_reader
from moedesk.store.runs import ACTIVE

POLL_S = 0.25
CHUNK = 1 << 16


def _tail(path: Path, lines: int) -> tuple[str, int]:
    """The last `lines` lines of a file and the offset after them."""
    with open(path, "rb") as f:
        if lines <= 0:
            f.seek(0, 2)
            return "", f.tell()
        kept: deque[bytes] = deque(maxlen=lines)
        for line in f:
            kept.append(line)
        return b"".join(kept).decode("utf-8", "replace"), f.tell()


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


@app.command()
def logs(
    ref: LatestRunArg = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines until "
                                                               "the run ends.")] = False,
    lines: Annotated[int | None, typer.Option("--lines", "-n", metavar="N", min=0,
                                              help="Only the last N lines (default: all).")
                     ] = None,
    supervisor: Annotated[bool, typer.Option("--supervisor", help="The supervisor's own log "
                                                                  "instead.")] = False,
    home: HomeOpt = None,
) -> None:
    """A run's train log: the trainer's step and evaluation lines and the supervisor's notes."""
    try:
        reader = open_reader(home_of(home))
        info = reader.run(ref) if ref is not None else reader.latest_run()
    except StoreError as exc:
        fail(str(exc))
    path = (supervisor_log if supervisor else train_log)(info.row["run_dir"])
    offset = 0
    if path.exists():
        text, offset = _tail(path, lines if lines is not None else 1 << 62)
        _write(text)
    elif not follow or info.status not in ACTIVE:
        reader.close()
        fail(f"run {info.id} ({info.name}) has no log yet ({path})")
    if not follow:
        reader.close()
        return
    try:
        code = _follow(reader, info.id, path, offset)
    except KeyboardInterrupt:
        code = EXIT_OK
    finally:
        reader.close()
    raise typer.Exit(code)


def _follow(reader, run_id: int, path: Path, offset: int) -> int:
    quiet_since = None
    pending = b""
    while True:
        if path.exists():
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(CHUNK)
                offset += len(data)
            if data:
                pending += data
                # print whole lines only, so a line being written is never split
                done, _, pending = pending.rpartition(b"\n")
                if done:
                    _write(done.decode("utf-8", "replace") + "\n")
                quiet_since = None
                continue
        info = reader.run(run_id)
        if info.status not in ACTIVE:
            # the supervisor writes its last note just before the final status
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 2 * POLL_S:
                if pending:
                    _write(pending.decode("utf-8", "replace") + "\n")
                err_console.print(f"run {info.id} ({info.name}) {info.status} at step "
                                  f"{info.last_step}/{info.total_steps}", style="dim")
                return EXIT_FOR_STATUS.get(info.status, EXIT_OK)
        time.sleep(POLL_S)
