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
from moedesk.store.liveness import liveness

QUEUED_FRESH_S = 60.0


def live_runs(conn: sqlite3.Connection, now: float | None = None) -> int:
    """moedesk runs of this home now starting or training (store/liveness.py decides:
    a running row whose supervisor is gone, or a queued one no supervisor took, is not)."""
    now = time.time() if now is None else now
    cur = conn.execute("SELECT status, supervisor_pid, supervisor_started, run_dir, created_at,"
                       " queued_at FROM runs WHERE status IN ('queued', 'running')")
    keys = [d[0] for d in cur.description]
    rows = [dict(zip(keys, r, strict=True)) for r in cur.fetchall()]
    fresh = [r for r in rows if r["status"] != "queued"
             or (r["created_at"] is not None and now - r["created_at"] < QUEUED_FRESH_S)]
    return sum(1 for r in fresh if liveness(r, now).status in ("queued", "running"))


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
