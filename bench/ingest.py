"""Ingest benchmark: rows/s through the real supervisor, and trainer-to-reader freshness.

Side by side in one run, interleaved over `--rounds` rounds, 20 metrics per step:
- flood: a fake trainer writes protocol events as fast as it can; rows/s through the real
  supervisor (`python -m moedesk.runner.supervise`), first event to the run's end;
- freshness: a fake trainer logs one step every 20 ms while a read-only reader in this
  process polls every 2 ms; lag = row visible to the reader - the trainer's wall time at
  the logging call;
- the same two with MLflow (`log_batch` to a SQLite tracking store, a reader polling
  that file), when mlflow is installed (`pip install 'torch==2.13.0' '.[bench]'`).
Targets (issue 18): flood >= 300,000 rows/s; p95 freshness <= 25 ms.

    .venv/bin/python bench/ingest.py [--steps 20000] [--metrics 20] [--rounds 3]
        [--baseline DIR]   # also an earlier checkout's supervisor (git archive REV | tar -x)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sqlite3
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

FRESH_STEPS, FRESH_PAUSE_S, POLL_S = 300, 0.02, 0.002

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

# an MLflow "trainer": log_batch per step to a SQLite tracking store; the first metric
# carries the wall time of the logging call, so a reader elsewhere can time freshness
MLFLOW_TRAINER = r"""
import sys, time, logging
logging.disable(logging.WARNING)
import mlflow
from mlflow.entities import Metric
uri, steps, names, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
client = mlflow.tracking.MlflowClient(tracking_uri=uri)
run = client.create_run(client.create_experiment("bench"))
print(run.info.run_id, flush=True)
sys.stdin.readline()  # the reader is ready
t0 = time.time()
for step in range(1, steps + 1):
    wall = time.time()
    ms = int(wall * 1000)
    metrics = [Metric("bench/wall", wall, ms, step)]
    metrics += [Metric(f"bench/m{i}", step * 0.001 + i, ms, step) for i in range(1, names)]
    client.log_batch(run.info.run_id, metrics=metrics)
    if pause:
        time.sleep(pause)
print(steps * names / (time.time() - t0), flush=True)
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


def supervise(home: Path, run_id: int, steps: int, names: int, pause: float,
              code: Path | None = None):
    """The real supervisor on the fake trainer; `code`: another checkout's supervisor."""
    script = home / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    cmd = json.dumps([sys.executable, str(script), str(steps), str(names), str(pause)])
    env = {**os.environ, **({"PYTHONPATH": str(code)} if code else {})}
    return subprocess.Popen([sys.executable, "-m", "moedesk.runner.supervise", "--home",
                             str(home), "--run-id", str(run_id), "--trainer-cmd", cmd],
                            cwd=code or Path.cwd(), env=env)


def moedesk_flood(steps: int, names: int, code: Path | None = None) -> tuple[float, float]:
    """(rows/s of wall time, rows per CPU second of the supervisor and its fake trainer:
    the figure a loaded machine does not move)."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        run_id = new_run(home, steps)
        proc = supervise(home, run_id, steps, names, 0.0, code)
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = 0
        cpu = usage.ru_utime + usage.ru_stime
        with open_reader(home) as reader:
            rows = reader.query("SELECT COUNT(*), MIN(wall) FROM metrics WHERE run_id = ?",
                                (run_id,))[1][0]
            ended = reader.run(run_id).ended_at
        assert rows[0] == steps * names, f"lost rows: {rows[0]} of {steps * names}"
        return rows[0] / (ended - rows[1]), rows[0] / cpu


def moedesk_freshness(names: int, code: Path | None = None) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        run_id = new_run(home, FRESH_STEPS)
        proc = supervise(home, run_id, FRESH_STEPS, names, FRESH_PAUSE_S, code)
        lags: list[float] = []
        seen = 0
        with open_reader(home) as reader:
            conn = reader.conn
            while True:
                rows = conn.execute("SELECT step, wall FROM metrics WHERE run_id = ? AND"
                                    " name = 'bench/m0' AND step > ? ORDER BY step",
                                    (run_id, seen)).fetchall()
                now = time.time()
                lags += [now - wall for _, wall in rows]
                seen = rows[-1][0] if rows else seen
                if proc.poll() is not None and seen >= FRESH_STEPS:
                    break
                time.sleep(POLL_S)
        return lags


def mlflow_run(steps: int, names: int, pause: float, fresh: bool) -> tuple[float, list[float]]:
    """(the logger's rows/s, freshness lags) for MLflow log_batch on a SQLite store."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mlflow.db"
        script = Path(tmp) / "mlflow_trainer.py"
        script.write_text(MLFLOW_TRAINER)
        proc = subprocess.Popen([sys.executable, str(script), f"sqlite:///{path}", str(steps),
                                 str(names), str(pause)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, cwd=tmp,
                                env={**os.environ, "MLFLOW_TRACKING_DIR": tmp})
        mlflow_id = proc.stdout.readline().strip()
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        lags: list[float] = []
        seen = 0
        while fresh:
            rows = conn.execute("SELECT step, value FROM metrics WHERE run_uuid = ? AND key ="
                                " 'bench/wall' AND step > ? ORDER BY step",
                                (mlflow_id, seen)).fetchall()
            now = time.time()
            lags += [now - wall for _, wall in rows]
            seen = rows[-1][0] if rows else seen
            if seen >= steps:
                break
            time.sleep(POLL_S)
        rate = float(proc.stdout.readline())
        proc.wait()
        conn.close()
        return rate, lags


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--metrics", type=int, default=20, help="metric names per step")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mlflow-steps", type=int, default=500)
    parser.add_argument("--baseline", type=Path, help="an earlier checkout to compare with")
    args = parser.parse_args()
    with_mlflow = importlib.util.find_spec("mlflow") is not None
    floods, lags, ml_floods, ml_lags, base_floods, base_lags = [], [], [], [], [], []
    cpus, base_cpus = [], []
    for _ in range(args.rounds):  # interleaved: every system sees the same machine load
        rate, per_cpu = moedesk_flood(args.steps, args.metrics)
        floods.append(rate)
        cpus.append(per_cpu)
        lags += moedesk_freshness(args.metrics)
        if args.baseline:
            rate, per_cpu = moedesk_flood(args.steps, args.metrics, args.baseline)
            base_floods.append(rate)
            base_cpus.append(per_cpu)
            base_lags += moedesk_freshness(args.metrics, args.baseline)
        if with_mlflow:
            ml_floods.append(mlflow_run(args.mlflow_steps, args.metrics, 0.0, False)[0])
            ml_lags += mlflow_run(FRESH_STEPS, args.metrics, FRESH_PAUSE_S, True)[1]
    ms = 1000.0
    print(f"moedesk flood: {statistics.median(floods):,.0f} rows/s median of {args.rounds} "
          f"({', '.join(f'{r:,.0f}' for r in floods)}); {args.steps} steps x {args.metrics} "
          f"metrics through the real supervisor; target >= 300,000; "
          f"{statistics.median(cpus):,.0f} rows per CPU second (supervisor + fake trainer)")
    print(f"moedesk freshness: p50 {pct(lags, 0.5) * ms:.1f} ms, p95 {pct(lags, 0.95) * ms:.1f}"
          f" ms over {len(lags)} steps (one step every {FRESH_PAUSE_S * ms:.0f} ms, reader "
          f"polling every {POLL_S * ms:.0f} ms); target p95 <= 25 ms")
    if args.baseline:
        print(f"baseline {args.baseline}: flood {statistics.median(base_floods):,.0f} rows/s"
              f" ({', '.join(f'{r:,.0f}' for r in base_floods)}), freshness p50"
              f" {pct(base_lags, 0.5) * ms:.1f} ms, p95 {pct(base_lags, 0.95) * ms:.1f} ms; ratios"
              f" this/baseline: flood {statistics.median(floods) / statistics.median(base_floods):.2f},"
              f" p95 freshness {pct(lags, 0.95) / pct(base_lags, 0.95):.2f}, rows per CPU second"
              f" {statistics.median(cpus) / statistics.median(base_cpus):.2f}"
              f" ({statistics.median(base_cpus):,.0f} per CPU second)")
    if not with_mlflow:
        print("mlflow not installed: reference figures from issue 18, measured on this machine"
              " earlier: log_batch 3,140 rows/s, freshness p50 12 / p95 16 ms")
        return
    print(f"mlflow log_batch (SQLite store): {statistics.median(ml_floods):,.0f} rows/s "
          f"median of {args.rounds}; freshness p50 {pct(ml_lags, 0.5) * ms:.1f} ms, p95 "
          f"{pct(ml_lags, 0.95) * ms:.1f} ms over {len(ml_lags)} steps")
    print(f"ratios: moedesk/mlflow ingest {statistics.median(floods) / statistics.median(ml_floods):,.0f}x;"
          f" p95 freshness moedesk/mlflow {pct(lags, 0.95) / pct(ml_lags, 0.95):.2f}")


if __name__ == "__main__":
    main()
