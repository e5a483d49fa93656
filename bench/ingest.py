"""Ingest benchmark: rows/s through the real supervisor, and trainer-to-reader freshness.

Runs the real supervisor (`python -m moedesk.runner.supervise`) on a fake trainer that
writes protocol events as fast as it can (throughput), then one that writes one step
every 20 ms while a read-only reader polls (freshness: time from the event being
written by the trainer to its row being visible to the reader). Targets: >= 100,000
rows/s sustained; p95 freshness <= 0.5 s.

    .venv/bin/python bench/ingest.py [--steps 20000] [--metrics 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moedesk.profiles import profile_to_dict, validate_data  # noqa: E402
from moedesk.store import connect_writer, open_reader  # noqa: E402
from moedesk.store import runs as store_runs  # noqa: E402

FAKE_TRAINER = r"""
import json, sys, time
steps, names, pause = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
out = sys.stdout
out.write(json.dumps({"type": "started", "step": 0, "total_steps": steps, "pid": 0,
                      "device": "cpu", "params": {"total": 1, "active": 1}}) + "\n")
for step in range(1, steps + 1):
    values = {f"bench/m{i}": step * 0.001 + i for i in range(names)}
    out.write(json.dumps({"type": "metrics", "step": step, "wall": time.time(),
                          "values": values}) + "\n")
    if pause:
        out.flush()
        time.sleep(pause)
out.write(json.dumps({"type": "finished", "step": steps, "status": "completed"}) + "\n")
out.flush()
"""


def new_run(home: Path, steps: int) -> int:
    db = connect_writer(home / "moedesk.db")
    config = profile_to_dict(validate_data({"name": "bench", "kind": "dense", "seed": 0,
                                            "train": {"steps": steps, "warmup_steps": 0}}))
    config["health"]["rules"] = {}
    run_id, _ = store_runs.create_run(db.conn, config=config, profile_path="", home=home,
                                   stop_on="never")
    db.close()
    return run_id


def supervise(home: Path, run_id: int, steps: int, names: int, pause: float):
    script = home / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    cmd = json.dumps([sys.executable, str(script), str(steps), str(names), str(pause)])
    return subprocess.Popen([sys.executable, "-m", "moedesk.runner.supervise", "--home",
                             str(home), "--run-id", str(run_id), "--trainer-cmd", cmd])


def throughput(steps: int, names: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        run_id = new_run(home, steps)
        supervise(home, run_id, steps, names, 0.0).wait()
        reader = open_reader(home)
        rows = reader.query("SELECT COUNT(*), MIN(wall) FROM metrics WHERE run_id = ?",
                            (run_id,))[1][0]
        ended = reader.run(run_id).ended_at
        assert rows[0] == steps * names, f"lost rows: {rows[0]} of {steps * names}"
        return rows[0] / (ended - rows[1])


def freshness(steps: int, names: int, pause: float) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        run_id = new_run(home, steps)
        proc = supervise(home, run_id, steps, names, pause)
        reader = open_reader(home)
        cursor, lags = 0, []
        while True:
            rows, cursor_new = reader.metrics_since(run_id, cursor, ["bench/m0"])
            now = time.time()
            if rows:
                walls = reader.query(f"SELECT wall FROM metrics WHERE rowid IN "
                                     f"({','.join(str(r[0]) for r in rows)})")[1]
                lags += [now - w for (w,) in walls]
            cursor = cursor_new
            if proc.poll() is not None and not rows:
                break
            time.sleep(0.01)
        return lags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--metrics", type=int, default=20, help="metric names per step")
    args = parser.parse_args()
    rates = [throughput(args.steps, args.metrics) for _ in range(3)]
    print(f"throughput: {statistics.median(rates):,.0f} rows/s median of 3 "
          f"({', '.join(f'{r:,.0f}' for r in rates)}); {args.steps} steps x {args.metrics} "
          f"metrics through the real supervisor; target >= 100,000")
    lags = sorted(freshness(300, 8, 0.02))
    p50, p95 = lags[len(lags) // 2], lags[int(len(lags) * 0.95)]
    print(f"freshness: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms over {len(lags)} steps "
          f"(event written -> row visible to a polling read-only reader); target p95 <= 500 ms")


if __name__ == "__main__":
    main()
