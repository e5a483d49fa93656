"""The default CPU thread count of a run (`train.threads = 0`), decided by its supervisor.

torch's default is every core, and OpenMP threads spin while they wait: two runs with two
threads each on a 2-core machine take about 7x as long as one after the other (issue 18:
36 s vs 4.8 s). So the supervisor, which can read the store, counts the moedesk runs
alive at the trainer's start (this one included) and gives each its share of the cores:
`max(1, cores // live_runs)`. The trainer gets it in the `THREADS_ENV` environment
variable and keeps it for the whole run (a thread count changed mid-run would change
the top-k model's floating-point sums, and a run must be reproducible); an explicit
`train.threads` always wins.

A run counts as alive when it is running with a live supervisor, or queued for less
than `QUEUED_FRESH_S` (a launch that is starting now; an older queued row is a launch
that never started).
"""

from __future__ import annotations

import os
import sqlite3
import time

from moedesk.runner.protocol import THREADS_ENV
from moedesk.store.reads import effective_status

QUEUED_FRESH_S = 60.0


def live_runs(conn: sqlite3.Connection, now: float | None = None) -> int:
    """moedesk runs of this home now starting or training."""
    now = time.time() if now is None else now
    rows = conn.execute("SELECT status, supervisor_pid, supervisor_started, created_at FROM runs "
                        "WHERE status IN ('queued', 'running')").fetchall()
    count = 0
    for status, pid, started, created in rows:
        row = {"status": status, "supervisor_pid": pid, "supervisor_started": started}
        if status == "running" and effective_status(row) == "running":
            count += 1
        elif status == "queued" and created is not None and now - created < QUEUED_FRESH_S:
            count += 1
    return count


def cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(n_live: int, n_cores: int) -> int:
    """Each live run's share of the cores, at least one thread."""
    return max(1, n_cores // max(1, n_live))


def trainer_env(conn: sqlite3.Connection, config: dict) -> dict[str, str]:
    """Environment additions for a trainer: the thread count when its profile says 0."""
    if int(config.get("train", {}).get("threads", 0)) > 0:
        return {}
    return {THREADS_ENV: str(default_threads(live_runs(conn), cores()))}
