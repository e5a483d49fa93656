"""The per-run supervisor: `python -m moedesk.runner.supervise --home H --run-id N`.

Detached from the terminal that launched it, it starts the trainer in its own process
group, reads its JSON-lines events, writes them to SQLite in batches (it is the run's
only writer), evaluates health rules as metrics arrive, and records how the run ended:
completed, failed, stopped or crashed, with the exit code and the tail of the log.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from moedesk.health.engine import RULE_METRICS, HealthEngine, RunContext
from moedesk.paths import config_file, db_path, train_log
from moedesk.profiles import Profile, profile_from_dict
from moedesk.runner.control import read_stop_request, signal_trainer
from moedesk.runner.ingest import Ingestor
from moedesk.runner.threads import trainer_env
from moedesk.store import connect_writer
from moedesk.store import runs as store_runs

LOG_TAIL_LINES = 20


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _reader(stream, out: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        out.put(line)
    out.put(None)


def run_context(profile: Profile) -> RunContext:
    """What the health rules need to know of a run besides its metrics."""
    if profile.kind == "ternary":
        # no learning-rate schedule: the balance rules keep their own after_step
        return RunContext(profile.kind, profile.ternary.num_experts,
                          profile.ternary.active_experts)
    moe = profile.moe
    return RunContext(profile.kind, moe.num_experts, moe.top_k, profile.train.warmup_steps,
                      balanced=moe.bias_balancing or moe.aux_loss_weight > 0)


def make_engine(config: dict, stop_on: str | None = None, conn=None,
                run_id: int | None = None) -> HealthEngine:
    """The health engine of a run's stored config (`profile_to_dict` output); `stop_on`
    defaults to the profile's. With `conn`, a resumed run's stored history is replayed so
    alerts still open are neither fired twice nor left open forever."""
    profile = profile_from_dict(config)
    engine = HealthEngine.for_run(run_context(profile), profile.health.rules,
                                  stop_on or profile.health.stop_on)
    if conn is not None and run_id is not None:
        history, open_rules = store_runs.health_history(conn, run_id, RULE_METRICS)
        engine.replay(history, time.time(), open_rules)
    return engine


def supervise(home: Path, run_id: int, resume: str | None, stop_at: int | None,
              trainer_cmd: list[str] | None = None) -> int:
    db = connect_writer(db_path(home))
    conn = db.conn
    me = psutil.Process()
    store_runs.set_supervisor(conn, run_id, me.pid, me.create_time())
    config, run_dir, stop_on = store_runs.launch_row(conn, run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file(run_dir).write_text(json.dumps(config, indent=2))
    log_path = train_log(run_dir)

    request = read_stop_request(run_dir)
    if request is not None:
        store_runs.finish_run(conn, run_id, "stopped", None, "stopped before the trainer started")
        return 0

    cmd = trainer_cmd or [sys.executable, "-m", "moedesk.train", str(run_dir)]
    if resume:
        cmd += ["--resume", resume]
    if stop_at is not None:
        cmd += ["--stop-at", str(stop_at)]
    threads_env = trainer_env(conn, config)  # train.threads = 0: this run's share of the cores
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"--- moedesk supervisor {me.pid}: {' '.join(cmd)}"
                  f"{''.join(f' ({k}={v})' for k, v in threads_env.items())}\n")
        log.flush()
        trainer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                                   text=True, bufsize=1, start_new_session=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **threads_env})
    store_runs.mark_running(conn, run_id, trainer.pid)

    health_stop: list[dict] = []

    def on_alert(alert: dict) -> None:
        if alert.get("stops") and not health_stop:
            health_stop.append(alert)
            signal_trainer(trainer.pid, signal.SIGTERM)

    engine = make_engine(config, stop_on, *((conn, run_id) if resume else ()))
    ingestor = Ingestor(conn, run_id, engine, on_alert)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(trainer.stdout, lines), daemon=True).start()

    # a SIGTERM to the supervisor itself is passed on as a graceful stop
    signal.signal(signal.SIGTERM, lambda *_: signal_trainer(trainer.pid, signal.SIGTERM))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    while True:
        try:
            line = lines.get(timeout=ingestor.flush_interval)
        except queue.Empty:
            ingestor.tick()
            continue
        if line is None:
            break
        ingestor.feed_line(line)
        ingestor.tick()
    exit_code = trainer.wait()
    ingestor.flush()
    if ingestor.log_lines:
        with open(log_path, "a", encoding="utf-8") as log:
            log.write("\n".join(ingestor.log_lines) + "\n")

    status, error = _outcome(ingestor.finished, exit_code, read_stop_request(run_dir), health_stop,
                             log_path)
    store_runs.finish_run(conn, run_id, status, exit_code, error)
    return 0


def _outcome(finished: dict | None, exit_code: int, request: dict | None,
             health_stop: list[dict], log_path: Path) -> tuple[str, str | None]:
    """The run's final status and error text from what the trainer said and how it exited."""
    if finished is not None:
        status = finished.get("status", "completed")
        if status == "failed":
            reason = finished.get("reason") or "the trainer reported a failure"
            return "failed", f"{reason}\n{log_tail(log_path)}".strip()
        if status == "stopped" and health_stop:
            alert = health_stop[0]
            return "stopped", f"stopped by health rule {alert['rule']}: {alert['message']}"
        if exit_code != 0:
            return status, f"trainer exited with code {exit_code} after finishing"
        return status, None
    if request is not None:
        how = "killed" if request.get("mode") == "kill" else "stopped"
        return "stopped", f"{how} by request (exit code {exit_code})"
    tail = log_tail(log_path)
    if exit_code < 0:
        name = signal.Signals(-exit_code).name if -exit_code in signal.valid_signals() else exit_code
        return "crashed", f"trainer killed by signal {name} without finishing\n{tail}".strip()
    if exit_code != 0:
        return "failed", f"trainer exited with code {exit_code}\n{tail}".strip()
    return "crashed", f"trainer exited without a finished event\n{tail}".strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moedesk-supervise")
    parser.add_argument("--home", required=True)
    parser.add_argument("--run-id", type=int, required=True)
    parser.add_argument("--resume")
    parser.add_argument("--stop-at", type=int)
    parser.add_argument("--trainer-cmd", help="JSON list replacing the trainer command (tests)")
    args = parser.parse_args(argv)
    cmd = json.loads(args.trainer_cmd) if args.trainer_cmd else None
    return supervise(Path(args.home), args.run_id, args.resume, args.stop_at, cmd)


if __name__ == "__main__":
    sys.exit(main())
