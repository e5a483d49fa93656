"""Tracking benchmark: what `run.log` costs the training loop, and the supervisor's ingest rate.

1. Caller cost. A real external run (`moedesk.init`, its supervisor ingesting alongside)
   takes 10,000 `run.log` calls of 20 metrics and 2,000 `run.log_expert_load` calls of
   8 layers x 64 experts; the same loops calling a no-op take the place of each, in
   interleaved rounds. Per call: (loop - no-op loop) / calls, as wall time and as this
   thread's CPU time (the latter is what a busy machine inflates least). Target: <= 20 us
   per `log` call.
2. Ingest rate. The same training history as an events file (external run: written by
   the real `Run.log`/`log_expert_load`, which send the counts with their moe/* statistics)
   and as a trainer's stdout stream (own trainers: the statistics arrive as metrics),
   each ingested into a fresh store through the real code paths (runner/external_run.py
   `ExternalRun`; runner/supervise.py's pipe reader thread, queue and `Ingestor`), in
   interleaved rounds. Target: the external path
   at least as fast as the own-trainer path.

    .venv/bin/python bench/track.py [--rounds 5] [--ingest-rounds 3]
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import moedesk  # noqa: E402
from moedesk.paths import events_file  # noqa: E402
from moedesk.profiles import profile_to_dict, validate_data  # noqa: E402
from moedesk.runner.commit import Committer  # noqa: E402
from moedesk.runner.external_run import ExternalRun, settings  # noqa: E402
from moedesk.runner.ingest import Ingestor  # noqa: E402
from moedesk.runner.loadmetrics import LoadMetrics  # noqa: E402
from moedesk.runner.protocol import encode  # noqa: E402
from moedesk.runner.supervise import TICK_S, _drain, _reader, make_engine  # noqa: E402
from moedesk.store import connect_writer  # noqa: E402
from moedesk.store import external as store_external  # noqa: E402
from moedesk.store import runs as store_runs  # noqa: E402
from moedesk.track.channel import EventWriter  # noqa: E402
from moedesk.track.run import Run  # noqa: E402

LOG_CALLS, LOAD_CALLS, METRICS, LAYERS, EXPERTS, TOP_K = 10_000, 2_000, 20, 8, 64, 2
TOKENS = 4096  # per logged step: each layer's counts sum to TOKENS * TOP_K


def metric_values(step: int, rng: random.Random) -> dict[str, float]:
    return {f"train/m{i}": rng.random() * 3 + step * 1e-4 for i in range(METRICS)}


def expert_counts(rng: random.Random) -> dict[int, list[int]]:
    out = {}
    for layer in range(LAYERS):
        cuts = sorted(rng.randrange(TOKENS * TOP_K + 1) for _ in range(EXPERTS - 1))
        out[layer] = [b - a for a, b in zip([0, *cuts], [*cuts, TOKENS * TOP_K], strict=True)]
    return out


def noop(*args, **kwargs) -> None:
    pass


def timed(fn, calls) -> tuple[float, float]:
    """(wall s, thread CPU s) of fn(*args, **kwargs) over the prepared calls."""
    wall, cpu = time.perf_counter(), time.thread_time()
    for args, kwargs in calls:
        fn(*args, **kwargs)
    return time.perf_counter() - wall, time.thread_time() - cpu


def caller_cost(home: Path, rounds: int) -> dict[str, tuple[float, float]]:
    rng = random.Random(0)
    run = moedesk.init(name="bench-track", home=home, stop_on="never", total_steps=LOG_CALLS)
    log_calls = [((metric_values(s, rng),), {"step": s}) for s in range(1, LOG_CALLS + 1)]
    load_calls = [((expert_counts(rng),), {"step": s * 5, "top_k": TOP_K})
                  for s in range(1, LOAD_CALLS + 1)]
    per_round = {"log": len(log_calls) // rounds, "load": len(load_calls) // rounds}
    spent = {k: [0.0, 0.0, 0.0, 0.0] for k in per_round}  # wall, cpu, noop wall, noop cpu
    for r in range(rounds):
        for key, calls, fn in (("log", log_calls, run.log), ("load", load_calls,
                                                               run.log_expert_load)):
            chunk = calls[r * per_round[key]:(r + 1) * per_round[key]]
            order = [(fn, 0), (noop, 2)] if r % 2 == 0 else [(noop, 2), (fn, 0)]
            for f, at in order:
                wall, cpu = timed(f, chunk)
                spent[key][at] += wall
                spent[key][at + 1] += cpu
    run.finish()
    out = {}
    for key, (wall, cpu, nwall, ncpu) in spent.items():
        calls = per_round[key] * rounds
        out[key] = ((wall - nwall) / calls * 1e6, (cpu - ncpu) / calls * 1e6)
    return out


def write_streams(folder: Path) -> tuple[Path, Path, int]:
    """The same history twice: what an external run's `Run` appends to its events file
    (the real `log` and `log_expert_load`), and what an own trainer writes to stdout."""
    rng = random.Random(1)
    ext_path, own_path = folder / "external.jsonl", folder / "own.jsonl"
    EventWriter(ext_path).write({"type": "started", "step": 0, "wall": time.time(),
                                 "pid": os.getpid(), "total_steps": LOG_CALLS,
                                 "moe": {"balanced": False}})
    ext = Run(run_id=0, name="bench", run_dir=folder, events=ext_path, top_k=TOP_K)
    stats = LoadMetrics()
    events = 0
    with open(own_path, "w") as own:
        own.write(encode({"type": "started", "step": 0, "total_steps": LOG_CALLS, "pid": 0,
                          "device": "cpu", "params": {"total": 1, "active": 1}}) + "\n")
        for step in range(1, LOG_CALLS + 1):
            values, wall = metric_values(step, rng), time.time()
            ext.log(values, step=step)
            events += 1
            if step % (LOG_CALLS // LOAD_CALLS) == 0:
                loads = expert_counts(rng)
                ext.log_expert_load(loads, step=step)
                values = {**values, **stats.values(loads, TOP_K)}
                own.write(encode({"type": "expert_load", "step": step, "wall": wall,
                                  "loads": {str(k): v for k, v in loads.items()}}) + "\n")
                events += 1
            own.write(encode({"type": "metrics", "step": step, "wall": wall,
                              "values": values}) + "\n")
    ext.finish(wait=0)
    return ext_path, own_path, events


def rows_of(conn, run_id: int) -> int:
    return sum(conn.execute(f"SELECT COUNT(*) FROM {t} WHERE run_id = ?", (run_id,)).fetchone()[0]
               for t in ("metrics", "expert_load"))


def ingest_own(home: Path, stream: Path) -> tuple[float, float, int]:
    db = connect_writer(home / "moedesk.db")
    config = profile_to_dict(validate_data({
        "name": "bench", "kind": "topk", "seed": 0, "model": {"n_layers": LAYERS},
        "moe": {"num_experts": EXPERTS, "top_k": TOP_K, "bias_balancing": False,
                "aux_loss_weight": 0.0},
        "train": {"steps": LOG_CALLS, "warmup_steps": 0}}))
    run_id, _ = store_runs.create_run(db.conn, config=config, profile_path="", home=home,
                                      stop_on="never")
    folder = home / str(run_id)
    folder.mkdir()
    start, cpu = time.perf_counter(), time.process_time()
    # supervise.py's path: the trainer's stdout pipe, a reader thread, a queue, the Ingestor
    trainer = subprocess.Popen(["cat", str(stream)], stdout=subprocess.PIPE, text=True, bufsize=1)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(trainer.stdout, lines), daemon=True).start()
    ingestor = Ingestor(Committer(db.conn, run_id, folder, keep=0), make_engine(config, "never"))
    eof = False
    while not eof:  # supervise.py's `_follow` loop, less the watch and the outage
        try:
            line = lines.get(timeout=TICK_S)
        except queue.Empty:
            line = ""  # a quiet moment: tick and commit
        eof = line is None
        if line:
            ingestor.feed_line(line)
            eof = _drain(lines, ingestor)
        ingestor.tick()
        ingestor.commit()
    trainer.wait()
    ingestor.commit()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    rows = rows_of(db.conn, run_id)
    db.close()
    return elapsed, cpu, rows


def ingest_external(home: Path, stream: Path) -> tuple[float, float, int]:
    db = connect_writer(home / "moedesk.db")
    config = settings(stop_on="never")
    run_id, name = store_external.create_external_run(db.conn, home=home, config=config,
                                                      default_stem="bench", stop_on="never")
    config["name"] = name
    folder = home / str(run_id)
    folder.mkdir()
    os.link(stream, events_file(folder))
    start, cpu = time.perf_counter(), time.process_time()
    run = ExternalRun(db.conn, run_id, config, folder)
    while run.pump():
        pass
    run.drain()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    rows = rows_of(db.conn, run_id)
    db.close()
    return elapsed, cpu, rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ingest-rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cost = caller_cost(tmp / "caller", args.rounds)
        ext_stream, own_stream, events = write_streams(tmp)
        results: dict[str, list[tuple[float, float, int]]] = {"own": [], "external": []}
        for r in range(args.ingest_rounds):
            order = ["own", "external"] if r % 2 == 0 else ["external", "own"]
            for kind in order:
                home = tmp / f"{kind}-{r}"
                home.mkdir()
                fn = ingest_own if kind == "own" else ingest_external
                results[kind].append(fn(home, own_stream if kind == "own" else ext_stream))
    print(f"caller cost per call ({args.rounds} interleaved rounds against a no-op loop; "
          "wall / thread CPU)")
    print(f"  log, {METRICS} metrics              {cost['log'][0]:7.1f} us / {cost['log'][1]:6.1f} us"
          "   target <= 20 us")
    print(f"  log_expert_load, {LAYERS} x {EXPERTS}       {cost['load'][0]:7.1f} us / "
          f"{cost['load'][1]:6.1f} us")
    rates: dict[str, tuple[float, float]] = {}
    print(f"supervisor ingest of {events:,} events ({args.ingest_rounds} interleaved rounds, "
          "fresh store each; median; per wall second / per CPU second of the process)")
    for kind, label in (("own", "own trainer (stdout pipe)"), ("external", "external (events file)")):
        wall = statistics.median(w for w, _, _ in results[kind])
        cpu = statistics.median(c for _, c, _ in results[kind])
        rows = results[kind][0][2]
        rates[kind] = (rows / wall, rows / cpu)
        print(f"  {label:<28} {rows / wall:>9,.0f} / {rows / cpu:>9,.0f} rows/s  "
              f"{events / wall:>6,.0f} / {events / cpu:>6,.0f} events/s  ({rows:,} rows)")
    if results["own"][0][2] != results["external"][0][2]:
        print("  note: the two paths stored different row counts")
    print(f"  ratio external / own        {rates['external'][0] / rates['own'][0]:9.2f} / "
          f"{rates['external'][1] / rates['own'][1]:9.2f}   target >= 1")
    print(f"load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
