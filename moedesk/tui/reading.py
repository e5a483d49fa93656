"""The one way a screen reads the store, or does other slow work, off the UI thread.

The poller owns the long-lived connection for live data. A screen that needs a one-off
read (the alerts list, a comparison, a routing analysis, a run's checkpoints) calls
`read_in_worker(self, read, self.Loaded)`: a thread worker opens a read-only `Reader`,
runs `read(reader)`, closes it and posts `Loaded(value, error)` to the screen. An
expected failure (no database yet, a locked, replaced or damaged file) arrives as
`error`, a sentence the screen shows in place. Anything else fails the worker; the
workers belong to the app, whose one `Worker.StateChanged` handler turns the failure
into a notification (app.py), so no error is silent and none takes the app down.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from textual.dom import DOMNode
from textual.message import Message
from textual.worker import Worker, get_current_worker

from moedesk.paths import db_path
from moedesk.store import Reader, StoreError

T = TypeVar("T")


def read_store(home: Path, read: Callable[[Reader], T]) -> tuple[T | None, str | None]:
    """(what `read` returned, None), or (None, why the store could not be read)."""
    db_file = db_path(Path(home))
    try:
        reader = Reader(db_file)
    except StoreError as exc:
        return None, str(exc)
    try:
        return read(reader), None
    except (StoreError, sqlite3.Error) as exc:
        return None, f"cannot read {db_file}: {exc}"
    finally:
        reader.close()


def run_in_worker(node: DOMNode, job: Callable[[], Message | None], *, name: str,
                  description: str) -> Worker:
    """Run `job()` in a thread worker owned by the app; post the Message it returns to `node`.

    One worker per (node, name) at a time: a newer one supersedes the older, whose
    result is then dropped. `description` names the work in an error notification.
    """
    def work() -> None:
        message = job()
        if message is not None and not get_current_worker().is_cancelled:
            node.post_message(message)

    return node.app.run_worker(work, name=name, group=f"{name}-{id(node)}",
                               description=description, thread=True, exclusive=True,
                               exit_on_error=False)


def read_in_worker(node: DOMNode, read: Callable[[Reader], T],
                   loaded: Callable[[T | None, str | None], Message | None], *, name: str,
                   description: str) -> Worker:
    """`read_store` in a worker; `loaded(value, error)` is posted to `node` (None: nothing)."""
    home: Any = node.app.home

    def job() -> Message | None:
        return loaded(*read_store(home, read))

    return run_in_worker(node, job, name=name, description=description)
