"""Load: eight tiny runs at once and a reader polling every 0.2 s.

No connection may ever see "database is locked", no row may be lost (rows counted against
steps), and the ingest rate (rows/s over the whole load) is printed for docs/benchmarks.md:
`.venv/bin/python -m pytest tests/integration/test_load.py -q -s`.
"""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from moedesk.store import Reader
from tests.conftest import moedesk, wait_for

RUNS = 8
STEPS = 40
EVAL_EVERY = 20


@pytest.mark.slow
def test_eight_runs_and_a_polling_reader_lose_nothing_and_never_lock(home):
    errors: list[str] = []
    seen: dict[int, int] = {}
    polls = {"count": 0}
    done = threading.Event()

    def poll() -> None:
        reader = Reader(home / "moedesk.db")
        cursors: dict[int, int] = {}
        while not done.is_set():
            try:
                for info in reader.runs():
                    rows, cursors[info.id] = reader.metrics_since(info.id, cursors.get(info.id, 0))
                    seen[info.id] = seen.get(info.id, 0) + len(rows)
                    reader.alerts(info.id)
                    reader.latest_expert_load(info.id)
                polls["count"] += 1
            except sqlite3.OperationalError as exc:
                errors.append(str(exc))
            time.sleep(0.2)
        reader.close()

    thread = threading.Thread(target=poll)
    try:
        for i in range(RUNS):
            profile = "profiles/tiny_topk.toml" if i % 2 else "profiles/tiny_dense.toml"
            moedesk("run", profile, "--set", f"train.steps={STEPS}", "--set",
                    f"train.eval_every={EVAL_EVERY}", "--set", "train.threads=1", "--detach",
                    home=home, check=True)
            if i == 0:
                thread.start()  # the database and its schema exist from the first run on
        wait_for(lambda: len(r := Reader(home / "moedesk.db").runs()) == RUNS
                 and all(i.status not in ("queued", "running") for i in r),
                 timeout=500, interval=0.5, what="eight runs")
    finally:
        done.set()
        if thread.is_alive():
            thread.join()
    assert errors == []
    assert polls["count"] > 10

    reader = Reader(home / "moedesk.db")
    total_rows, first, last = 0, float("inf"), 0.0
    for info in reader.runs():
        assert info.status == "completed", info.row["error"]
        # every step's train metrics, and val at each evaluation, exactly once
        per_step = reader.query("SELECT step, COUNT(*) FROM metrics WHERE run_id = ?"
                                " AND name LIKE 'train/%' GROUP BY step", (info.id,))[1]
        assert [s for s, _ in per_step] == list(range(1, STEPS + 1))
        assert len({n for _, n in per_step}) == 1  # the same train/* metrics at every step
        vals = [s for s, _ in reader.series(info.id, "val/loss")]
        assert vals == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
        rows = reader.query("SELECT COUNT(*), MIN(wall), MAX(wall) FROM metrics"
                            " WHERE run_id = ?", (info.id,))[1][0]
        assert seen[info.id] == rows[0]  # the polling reader saw every row exactly once
        loads = reader.query("SELECT COUNT(DISTINCT step) FROM expert_load WHERE run_id = ?",
                             (info.id,))[1][0][0]
        assert loads == (STEPS if info.kind == "topk" else 0)
        total_rows += rows[0]
        first, last = min(first, info.started_at), max(last, info.ended_at)
    rate = total_rows / (last - first)
    print(f"\nload: {RUNS} runs x {STEPS} steps, {total_rows} metric rows in "
          f"{last - first:.1f} s = {rate:,.0f} rows/s ingested, {polls['count']} reader polls, "
          "0 'database is locked'")
    assert rate > 0
