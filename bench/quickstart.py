"""Benchmark: how long the README's first command (or any profile) takes, honestly.

For each repetition it runs the real CLI, `moedesk run PROFILE` (supervisor, trainer,
store, progress), and prints its wall time, then runs the trainer alone
(`python -m moedesk.train`) as a child and prints its CPU time: with `train.threads = 1`
the trainer's CPU time is what its wall time is on an idle core, so the two figures
together give the time on a busy machine (now) and on an idle one. The load average is
printed before and after each repetition, since these machines are shared. It also
prints the final losses and the routing specialization of the last evaluation.

    .venv/bin/python bench/quickstart.py [PROFILE] [--reps 3] [--set KEY=VALUE ...]
        [--stop-at STEP]  (train only the first STEP steps: per-step figures of long runs)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from moedesk.compare.finals import run_finals  # noqa: E402
from moedesk.paths import config_file  # noqa: E402
from moedesk.profiles import load_profile, parse_overrides, profile_to_dict  # noqa: E402
from moedesk.stats.routing import specialization  # noqa: E402
from moedesk.store import open_reader  # noqa: E402


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def cli_run(profile: str, sets: list[str], home: Path, stop_at: int | None) -> tuple[float, int]:
    cmd = [sys.executable, "-m", "moedesk", "run", profile, "--home", str(home)]
    cmd += [a for s in sets for a in ("--set", s)]
    if stop_at:
        cmd += ["--stop-at", str(stop_at)]
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if result.returncode not in (0, 4):
        sys.exit(f"moedesk run failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    with open_reader(home) as reader:
        run_id = reader.latest_run().id
    return time.perf_counter() - start, run_id


def trainer_cpu(profile: str, sets: list[str], folder: Path, stop_at: int | None) -> float:
    """CPU seconds (user + system) of the trainer alone, start-up included."""
    folder.mkdir(parents=True)
    config = profile_to_dict(load_profile(REPO / profile, parse_overrides(sets)))
    config_file(folder).write_text(json.dumps(config))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = [sys.executable, "-m", "moedesk.train", str(folder)]
    if stop_at:
        cmd += ["--stop-at", str(stop_at)]
    subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def describe(home: Path, run_id: int) -> str:
    with open_reader(home) as reader:
        info = reader.run(run_id)
        finals = run_finals(reader, run_id)
        step_s = [v for _, v in reader.series(run_id, "sys/step_s") if v]
        routing = reader.latest_routing(run_id)
    parts = [f"{info.status} at step {info.last_step}/{info.total_steps}"]
    parts += [f"{k} {v:.4f}" for k, v in finals.items() if k in ("final train loss",
                                                                  "final val loss") and v]
    if step_s:
        parts.append(f"median sys/step_s {sorted(step_s)[len(step_s) // 2] * 1000:.0f} ms")
    for layer, (_, payload) in sorted(routing.items()):
        spec = specialization(payload)
        parts.append(f"L{layer} class U {spec['class']['u']:.2f} ({spec['pattern']})")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", nargs="?", default="profiles/quickstart.toml")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--stop-at", type=int, default=None)
    parser.add_argument("--no-cli", action="store_true", help="only the trainer's CPU time")
    args = parser.parse_args()
    print(f"{args.profile} {' '.join(args.sets)}  ({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            start_load = load()
            line = f"rep {rep + 1}: load {start_load}"
            if not args.no_cli:
                home = Path(tmp) / f"home{rep}"
                wall, run_id = cli_run(args.profile, args.sets, home, args.stop_at)
                line += f" | moedesk run wall {wall:.1f} s: {describe(home, run_id)}"
            cpu = trainer_cpu(args.profile, args.sets, Path(tmp) / f"trainer{rep}", args.stop_at)
            print(f"{line} | trainer CPU {cpu:.1f} s | load after {load()}", flush=True)


if __name__ == "__main__":
    main()
