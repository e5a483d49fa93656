"""Benchmark: `moedesk query` on a big store (issue 18 item 9), before and after, side by side.

Builds (or reuses) a home of RUNS runs x STEPS steps x METRICS metrics (default 200 x
2,000 x 20 = 8M metric rows) with the store's own run rows and bulk metric inserts, then
prints, interleaved over `--reps` repetitions (medians):

1. rendering one run's 40,000 rows as moedesk query prints them: the old Rich `Table`
   (what `moedesk query` used before), the plain table (`cli/grid.py`, now), and CSV;
   plus the real CLI end to end (`moedesk query --limit 40000`, table and `--csv`);
2. queries by metric name across runs: the plan before (no planner statistics: a full
   scan), with migration m008's statistics (a skip-scan of the existing (run_id, name,
   step) index), and with each candidate name-first index forced with `INDEXED BY`:
   (name, run_id, step), the same covering `value`, (name, step); statistics are toggled
   by rewriting `sqlite_stat1`, so one database holds every variant; with the size and
   build time of each index;
3. what a name-first index costs ingest: supervisor-style batches (20 metrics x 10 steps)
   written alternately into two fresh stores, with and without it (wall and CPU).

    .venv/bin/python bench/store_scale.py [--home DIR] [--runs 200] [--steps 2000]
        [--metrics 20] [--reps 3] [--keep]
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
from moedesk.store.migrations import METRICS_SHAPE  # noqa: E402
from moedesk.store.query import run_guarded  # noqa: E402

STAT_INDEX = "metrics_run_name_step"
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


def set_stats(conn, stat: str | None) -> None:
    """Planner statistics for the (run_id, name, step) index: m008's row, or none."""
    conn.execute("DELETE FROM sqlite_stat1 WHERE tbl = 'metrics'")
    if stat is not None:
        conn.execute("INSERT INTO sqlite_stat1 VALUES ('metrics', ?, ?)", (STAT_INDEX, stat))
    conn.execute("ANALYZE sqlite_schema")


def index_bench(home: Path, reps: int) -> None:
    path = db_path(home)
    db = connect_writer(path)
    conn = db.conn
    for name in CANDIDATE_NAMES.values():
        conn.execute(f"DROP INDEX IF EXISTS {name}")
    set_stats(conn, None)
    before = {q: plan(conn, sql.format(hint="")) for q, sql in QUERIES.items()}
    set_stats(conn, METRICS_SHAPE)
    after = {q: plan(conn, sql.format(hint="")) for q, sql in QUERIES.items()}
    print("\n2. queries by metric name; the planner's plans without / with m008's statistics:")
    for q in QUERIES:
        print(f"   {q}:\n     before: {before[q]}\n     m008:   {after[q]}")
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    for label, ddl in CANDIDATES.items():
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        built = _timed(lambda ddl=ddl: conn.execute(ddl))
        size = (conn.execute("PRAGMA page_count").fetchone()[0] - pages) * page / 1e6
        print(f"   index {label}: built in {built:.1f} s, {size:.0f} MB", flush=True)
    variants = ["before", "m008 statistics", *CANDIDATES]
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(reps):  # interleaved: every variant of every query in each round
        for q, sql in QUERIES.items():
            for v in variants:
                set_stats(conn, None if v == "before" else METRICS_SHAPE)
                hint = "NOT INDEXED" if v == "before" and "USING" not in before[q] else \
                    f"INDEXED BY {STAT_INDEX}" if v in ("before", "m008 statistics") else \
                    f"INDEXED BY {CANDIDATE_NAMES[v]}"
                t = _timed(lambda s=sql.format(hint=hint): conn.execute(s).fetchall())
                times.setdefault((q, v), []).append(t)
    print(f"\n   median seconds of {reps}, interleaved (x = speed-up over before):")
    print("   " + "query".ljust(44) + "".join(v.rjust(29) for v in variants))
    for q in QUERIES:
        base = statistics.median(times[(q, "before")])
        cells = [f"{base:.4f} s".rjust(29)]
        for v in variants[1:]:
            t = statistics.median(times[(q, v)])
            cells.append(f"{t:.4f} s ({base / t:.0f}x)".rjust(29))
        print("   " + q.ljust(44) + "".join(cells))
    for name in CANDIDATE_NAMES.values():
        conn.execute(f"DROP INDEX {name}")
    set_stats(conn, METRICS_SHAPE)  # the store as migrated
    db.close()


def ingest_bench(reps: int) -> None:
    """Supervisor-style batches into two fresh stores, alternately: with / without a
    (name, run_id, step) index (what m008 would have cost had it been an index)."""
    with tempfile.TemporaryDirectory() as tmp:
        dbs = {}
        for label in ("(name, run_id, step)", "without (now)"):
            home = Path(tmp) / str(len(dbs))
            db = connect_writer(db_path(home))
            if label != "without (now)":
                db.conn.execute(CANDIDATES[label])
            config = profile_to_dict(validate_data({"name": "i", "kind": "topk", "seed": 0}))
            run_id = store_runs.create_run(db.conn, config=config, profile_path="b",
                                           home=home).run_id
            dbs[label] = (db, run_id)
        wall: dict[str, list[float]] = {k: [] for k in dbs}
        cpu: dict[str, list[float]] = {k: [] for k in dbs}
        step = 0
        for i in range(reps * 100):
            batch = Batch()
            for _ in range(10):
                step += 1
                batch.add_metrics(step, {n: 0.5 for n in METRIC_NAMES}, 1.0)
            for label, (db, run_id) in (list(dbs.items())[::1 if i % 2 else -1]):
                c0, t0 = time.process_time(), time.perf_counter()
                write_batch(db.conn, run_id, batch)
                wall[label].append(len(batch.metrics) / (time.perf_counter() - t0))
                cpu[label].append(len(batch.metrics) / max(1e-9, time.process_time() - c0))
        print("\n3. ingest, 200-row batches written alternately, median rows/s (wall, CPU):")
        for label in dbs:
            print(f"   {label:22s} {statistics.median(wall[label]):10,.0f} rows/s wall  "
                  f"{statistics.median(cpu[label]):10,.0f} rows per CPU-second")
        for db, _ in dbs.values():
            db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--metrics", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
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
