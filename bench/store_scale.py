"""Benchmark: `moedesk query` on a big store (issue 18 item 9), before and after, side by side.

Builds (or reuses) a home of RUNS runs x STEPS steps x METRICS metrics (default 200 x
2,000 x 20 = 8M metric rows) with the store's own run rows and bulk metric inserts, then
prints, interleaved over `--reps` repetitions (medians):

1. rendering one run's 40,000 rows as moedesk query prints them: the old Rich `Table`
   (what `moedesk query` used before), the plain table (`cli/grid.py`, now), and CSV;
   plus the real CLI end to end (`moedesk query --limit 40000`, table and `--csv`);
2. queries by metric name across runs, each with the index the planner had before
   (`metrics_run_name_step` only: a full scan) and with each candidate index, forced with
   `INDEXED BY` so that one database holds every variant: (name, run_id, step), the same
   covering `value`, and (name, step); with the size and build time of each index;
3. the cost of the chosen index on ingest: supervisor-style batches (20 metrics x 10
   steps) written alternately into two fresh stores, with and without it.

    .venv/bin/python bench/store_scale.py [--home DIR] [--runs 200] [--steps 2000]
        [--metrics 20] [--reps 5] [--keep]
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from moedesk.cli.grid import table_lines  # noqa: E402
from moedesk.paths import db_path  # noqa: E402
from moedesk.profiles import profile_to_dict, validate_data  # noqa: E402
from moedesk.store import connect_reader, connect_writer  # noqa: E402
from moedesk.store import runs as store_runs  # noqa: E402
from moedesk.store.ingest import Batch, write_batch  # noqa: E402
from moedesk.store.query import run_guarded  # noqa: E402

NEW_INDEX = "metrics_name_run_step"  # migration m004_metrics_by_name
CANDIDATES = {
    "(name, run_id, step)": "CREATE INDEX bench_nrs ON metrics(name, run_id, step)",
    "(name, run_id, step, value)": "CREATE INDEX bench_nrsv ON metrics(name, run_id, step, value)",
    "(name, step)": "CREATE INDEX bench_ns ON metrics(name, step)",
}
CANDIDATE_NAMES = dict(zip(CANDIDATES, ("bench_nrs", "bench_nrsv", "bench_ns"), strict=True))
METRIC_NAMES = ["train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "sys/step_s",
                "sys/rss_mb", "data/batch_hash", "moe/aux_loss", "moe/z_loss", "moe/imbalance",
                "moe/usage_std", "moe/entropy_norm", "moe/min_share", "moe/max_token_fraction",
                "moe/dead_experts", "moe/L0/imbalance", "moe/L1/imbalance", "route/latency_us",
                "val/loss", "val/ppl"]
QUERIES = {
    "last train/loss of every run": (
        "SELECT m.run_id, m.value FROM metrics m {hint} WHERE m.name = 'train/loss' AND m.step ="
        " (SELECT MAX(step) FROM metrics WHERE run_id = m.run_id AND name = 'train/loss')"),
    "best val/loss per run": (
        "SELECT run_id, MIN(value) FROM metrics {hint} WHERE name = 'val/loss' GROUP BY run_id"),
    "train/loss of every run at step 1000": (
        "SELECT run_id, value FROM metrics {hint} WHERE name = 'train/loss' AND step = 1000"),
    "one run's train/loss curve (per-run index)": (
        "SELECT step, value FROM metrics {hint} WHERE run_id = 7 AND name = 'train/loss'"),
}


def mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 1e6


def build(home: Path, runs: int, steps: int, metrics: int) -> None:
    names = (METRIC_NAMES * math.ceil(metrics / len(METRIC_NAMES)))[:metrics]
    names = [n if i < len(METRIC_NAMES) else f"{n}#{i}" for i, n in enumerate(names)]
    db = connect_writer(db_path(home))
    conn = db.conn
    conn.execute(f"DROP INDEX IF EXISTS {NEW_INDEX}")  # bulk load first, index after (below)
    conn.execute("PRAGMA synchronous = OFF")
    config = profile_to_dict(validate_data({"name": "scale", "kind": "topk", "seed": 0,
                                            "train": {"steps": steps}}))
    started = time.perf_counter()
    for r in range(runs):
        run_id = store_runs.create_run(conn, config=config, profile_path="bench", home=home).run_id
        rows = ((run_id, step, name, 3.0 / (1 + step / 200) + 0.001 * ((run_id * 7 + i) % 13),
                 1e9 + step) for step in range(1, steps + 1) for i, name in enumerate(names))
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO metrics (run_id, step, name, value, wall)"
                         " VALUES (?, ?, ?, ?, ?)", rows)
        conn.execute("UPDATE runs SET last_step = ?, status = 'completed' WHERE id = ?",
                     (steps, run_id))
        conn.execute("COMMIT")
        if (r + 1) % 20 == 0:
            print(f"  built {r + 1}/{runs} runs ({time.perf_counter() - started:.0f} s)",
                  flush=True)
    conn.execute("PRAGMA synchronous = NORMAL")
    db.close()
    print(f"built {runs * steps * len(names):,} metric rows in {time.perf_counter() - started:.1f}"
          f" s; {mb(db_path(home)):.0f} MB", flush=True)


def median_time(fn, reps: int) -> float:
    return statistics.median(_timed(fn) for _ in range(reps))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def rich_render(columns, rows) -> str:
    """What `moedesk query` printed before: a Rich Table of str cells."""
    out = io.StringIO()
    table = Table(*columns, box=None, header_style="bold")
    for row in rows:
        table.add_row(*["NULL" if v is None else str(v) for v in row])
    Console(file=out, width=120, markup=False).print(table)
    return out.getvalue()


def csv_render(columns, rows) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    writer.writerows(rows)
    return out.getvalue()


def render_bench(home: Path, reps: int) -> None:
    conn = connect_reader(db_path(home))
    sql = "SELECT * FROM metrics WHERE run_id = 1"
    fetch = median_time(lambda: run_guarded(conn, sql, limit=1_000_000), reps)
    result = run_guarded(conn, sql, limit=1_000_000)
    cols, rows = result.columns, result.rows
    ways = {"Rich Table (before)": lambda: rich_render(cols, rows),
            "plain table, piped (now)": lambda: "\n".join(table_lines(cols, rows, width=None)),
            "plain table, 80-col terminal (now)":
                lambda: "\n".join(table_lines(cols, rows, width=80)),
            "CSV": lambda: csv_render(cols, rows)}
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(reps):  # interleaved
        for name, fn in ways.items():
            times[name].append(_timed(fn))
    print(f"\n1. one run's {len(rows):,} rows x {len(cols)} columns (fetch {fetch:.3f} s), "
          f"render only, median of {reps}:")
    csv_t = statistics.median(times["CSV"])
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"   {name:36s} {t:7.3f} s  {t / len(rows) * 1e6:6.1f} us/row  {t / csv_t:5.1f}x CSV")
    cli = {"moedesk query (table, piped)": [], "moedesk query --csv": []}
    for _ in range(max(1, reps // 2)):
        for name, extra in (("moedesk query (table, piped)", []), ("moedesk query --csv", ["--csv"])):
            cmd = [sys.executable, "-m", "moedesk", "query", sql, "--limit", "40000", "--home",
                   str(home), *extra]
            cli[name].append(_timed(lambda cmd=cmd: subprocess.run(
                cmd, cwd=REPO, stdout=subprocess.DEVNULL, check=True)))
    for name, ts in cli.items():
        print(f"   {name:36s} {statistics.median(ts):7.3f} s end to end (process start included)")
    conn.close()


def plan(conn, sql: str) -> str:
    return " / ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql))


def index_bench(home: Path, reps: int) -> None:
    path = db_path(home)
    db = connect_writer(path)
    conn = db.conn
    conn.execute(f"DROP INDEX IF EXISTS {NEW_INDEX}")
    before_plans = {q: plan(conn, sql.format(hint="")) for q, sql in QUERIES.items()}
    print("\n2. queries by metric name; the planner's plan with the old index only:")
    for q, p in before_plans.items():
        print(f"   {q}: {p}")
    sizes, builds = {}, {}
    for label, ddl in CANDIDATES.items():
        size0 = mb(path)
        builds[label] = _timed(lambda ddl=ddl: conn.execute(ddl))
        sizes[label] = mb(path) - size0
        print(f"   index {label}: built in {builds[label]:.1f} s, {sizes[label]:.0f} MB", flush=True)
    # "before" = the plan the planner chose without a name-first index, forced by hint
    old = {q: ("NOT INDEXED" if "USING" not in before_plans[q] else
               "INDEXED BY metrics_run_name_step") for q in QUERIES}
    variants = {"before": old, **{label: CANDIDATE_NAMES[label] for label in CANDIDATES}}
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(reps):
        for q, sql in QUERIES.items():
            for v, hint in variants.items():
                h = hint[q] if isinstance(hint, dict) else f"INDEXED BY {hint}"
                try:
                    t = _timed(lambda s=sql.format(hint=h): conn.execute(s).fetchall())
                except sqlite3.OperationalError:  # the index cannot serve this query
                    t = math.nan
                times.setdefault((q, v), []).append(t)
    print(f"\n   median seconds of {reps}, interleaved (before = the old plan):")
    header = "   " + "query".ljust(44) + "".join(v.rjust(30) for v in variants)
    print(header)
    for q in QUERIES:
        cells = []
        for v in variants:
            t = statistics.median(times[(q, v)])
            base = statistics.median(times[(q, "before")])
            cells.append(("-" if math.isnan(t) else f"{t:.4f} s ({base / t:.0f}x)"
                          if v != "before" else f"{t:.4f} s").rjust(30))
        print("   " + q.ljust(44) + "".join(cells))
    for name in CANDIDATE_NAMES.values():
        conn.execute(f"DROP INDEX {name}")
    started = time.perf_counter()
    conn.execute(f"CREATE INDEX {NEW_INDEX} ON metrics(name, run_id, step)")
    print(f"\n   kept {NEW_INDEX} (name, run_id, step), as migration m004_metrics_by_name "
          f"builds it: {time.perf_counter() - started:.1f} s on this store")
    for q, sql in QUERIES.items():
        print(f"   planner now, {q}: {plan(conn, sql.format(hint=''))}")
    db.close()


def ingest_bench(reps: int) -> None:
    """Supervisor-style batches into two fresh stores, alternately: with / without."""
    with tempfile.TemporaryDirectory() as tmp:
        dbs = {}
        for label in ("with the index", "without"):
            home = Path(tmp) / label.replace(" ", "_")
            db = connect_writer(db_path(home))
            if label == "without":
                db.conn.execute(f"DROP INDEX IF EXISTS {NEW_INDEX}")
            config = profile_to_dict(validate_data({"name": "i", "kind": "topk", "seed": 0}))
            run_id = store_runs.create_run(db.conn, config=config, profile_path="b",
                                           home=home).run_id
            dbs[label] = (db, run_id)
        rates: dict[str, list[float]] = {k: [] for k in dbs}
        step = 0
        for _ in range(reps * 40):
            batch = Batch()
            for _ in range(10):
                step += 1
                batch.add_metrics(step, {n: 0.5 for n in METRIC_NAMES}, 1.0)
            for label, (db, run_id) in dbs.items():
                rates[label].append(len(batch.metrics) / _timed(
                    lambda db=db, run_id=run_id, batch=batch: write_batch(db.conn, run_id, batch)))
        print("\n3. ingest, 200-row batches written alternately (median rows/s):")
        for label, r in rates.items():
            print(f"   {label:16s} {statistics.median(r):12,.0f} rows/s")
        for db, _ in dbs.values():
            db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--metrics", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the built home")
    args = parser.parse_args()
    print(f"load {' '.join(f'{x:.1f}' for x in os.getloadavg())}, sqlite {sqlite3.sqlite_version}")
    tmp = None
    home = args.home
    if home is None:
        tmp = tempfile.mkdtemp(prefix="moedesk-scale-")
        home = Path(tmp)
    if not db_path(home).exists():
        build(home, args.runs, args.steps, args.metrics)
    render_bench(home, args.reps)
    index_bench(home, args.reps)
    ingest_bench(args.reps)
    print(f"load {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if tmp and not args.keep:
        shutil.rmtree(tmp)
    elif tmp:
        print(f"home kept at {home}")


if __name__ == "__main__":
    main()
