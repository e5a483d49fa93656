"""Benchmark: two default-thread runs started together against the same two one after another.

Real runs through the runner (`start_run`: supervisor, trainer subprocess, store) in a
temporary home, with the profile's `train.threads = 0`: each supervisor counts the live
moedesk runs and gives its trainer `cores // runs` threads (runner/threads.py). The
figure is together / sequential wall time, from the first launch to the last finish
(target: <= 1.1x; torch's all-cores default was ~7x on 2 cores). `--threads N` forces an
explicit count instead, to show what the default avoids.

    .venv/bin/python bench/concurrent_runs.py [--profile profiles/dense.toml] [--steps 40]
        [--threads 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from moedesk.profiles import load_profile
from moedesk.runner.launch import get_run, start_run
from moedesk.store import runs as store_runs

REPO = Path(__file__).resolve().parent.parent


def wait(home: Path, run_ids: list[int]) -> None:
    while True:
        infos = [get_run(home, run_id) for run_id in run_ids]
        if all(info.status not in store_runs.ACTIVE for info in infos):
            bad = [i for i in infos if i.status != "completed"]
            assert not bad, [(i.id, i.status, i.row.get("error")) for i in bad]
            return
        time.sleep(0.1)


def session(profile, n_runs: int, together: bool) -> tuple[float, list[str]]:
    """Wall seconds for `n_runs` runs, and the thread counts their supervisors chose."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        start, ids = time.perf_counter(), []
        for i in range(n_runs):
            ids.append(start_run(profile, home, name=f"r{i}").run_id)
            if not together:
                wait(home, ids[-1:])
        wait(home, ids)
        elapsed = time.perf_counter() - start
        chosen = []
        for run_id in ids:
            log = Path(get_run(home, run_id).row["run_dir"]) / "train.log"
            text = log.read_text() if log.exists() else ""
            chosen.append(text.split("MOEDESK_THREADS=")[1].split(")")[0]
                          if "MOEDESK_THREADS=" in text else "profile")
        return elapsed, chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, default=REPO / "profiles" / "dense.toml")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    profile = load_profile(args.profile, {
        "train.steps": args.steps, "train.warmup_steps": 1, "train.eval_every": 0,
        "train.eval_batches": 1, "train.sample_every": 0, "train.threads": args.threads,
        "train.log_every": 10, "checkpoint.every": 0, "data.grammar_sentences": 3000})
    print(f"{profile.name}: 2 runs x {args.steps} steps, train.threads = {args.threads}")
    for _ in range(args.rounds):
        seq, seq_threads = session(profile, 2, together=False)
        tog, tog_threads = session(profile, 2, together=True)
        print(f"  one after another {seq:.1f} s (threads {seq_threads}), together {tog:.1f} s "
              f"(threads {tog_threads}): together/sequential {tog / seq:.2f}x", flush=True)


if __name__ == "__main__":
    main()
