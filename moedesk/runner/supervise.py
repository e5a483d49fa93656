"""The per-run supervisor: `python -m moedesk.runner.supervise --home H --run-id N`.

Detached from the terminal that launched it, it claims its run (one writer per run:
`store.runs.claim_supervisor`), starts the trainer in its own process group, reads its
JSON-lines events, writes them to SQLite (commit.py, adaptively: ingest.py), evaluates
health rules as metrics arrive, and records how the run ended: completed, failed,
stopped or crashed, with the exit code and the tail of the log. While it runs it touches
`RUN_DIR/heartbeat` every few seconds and answers stop requests (watch.py), so readers
can tell a frozen supervisor (`unresponsive`) from a live one.
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
from moedesk.profiles import Profile, flat_settings, profile_from_dict
from moedesk.runner import torchrun
from moedesk.runner.checkpoints import remove_partial_files
from moedesk.runner.commit import Committer
from moedesk.runner.control import read_stop_request, signal_trainer
from moedesk.runner.ingest import Ingestor
from moedesk.runner.outcome import outcome
from moedesk.runner.threads import trainer_env
from moedesk.runner.watch import Watch
from moedesk.store import connect_writer, spool
from moedesk.store import runs as store_runs
from moedesk.store.db import StoreError

# the supervisor's own busy timeout: short, so a lock held elsewhere turns into spooling
# (commit.py) within seconds instead of a frozen read loop
SUPERVISOR_BUSY_MS = 5_000
TICK_S = 0.25  # the loop wakes at least this often (heartbeat, stop requests, stalls)
_IDLE = object()


def _reader(stream, out: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        out.put(line)
    out.put(None)


def run_context(profile: Profile) -> RunContext:
    """What the health rules need to know of a run besides its metrics."""
    if profile.kind == "ternary":
        # no learning-rate schedule: the balance rules keep their own after_step
        return RunContext(profile.kind, profile.ternary.num_experts,
                          profile.ternary.active_experts, settings=flat_settings(profile))
    moe = profile.moe
    return RunContext(profile.kind, moe.num_experts, moe.top_k, profile.train.warmup_steps,
                      balanced=moe.bias_balancing or moe.aux_loss_weight > 0,
                      settings=flat_settings(profile))


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


def _note(log_path: Path):
    def note(message: str) -> None:
        try:
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(f"{time.strftime('%H:%M:%S')} moedesk supervisor: {message}\n")
        except OSError:
            print(message, flush=True)  # to supervisor.log, if even that can be written
    return note


def supervise(home: Path, run_id: int, resume: str | None, stop_at: int | None,
              trainer_cmd: list[str] | None = None) -> int:
    try:
        db = connect_writer(db_path(home), busy_timeout_ms=SUPERVISOR_BUSY_MS)
    except StoreError as exc:
        print(f"moedesk supervisor: cannot open the store: {exc}", flush=True)
        return 1
    conn = db.conn
    me = psutil.Process()
    refused = store_runs.claim_supervisor(conn, run_id, me.pid, me.create_time())
    if refused:
        print(f"moedesk supervisor {me.pid}: not starting: {refused}", flush=True)
        return 2
    try:
        started = _start(conn, run_id, resume, stop_at, trainer_cmd, me.pid)
    except Exception as exc:  # noqa: BLE001 - a startup failure must still be recorded
        reason = f"the supervisor could not start the trainer: {exc}"
        print(f"moedesk supervisor {me.pid}: {reason}", flush=True)
        try:
            store_runs.finish_run(conn, run_id, "failed", None, reason, owner=me.pid)
        except Exception:  # noqa: BLE001 - the store may be why; readers then see failed
            pass
        return 1
    if started is None:
        return 0
    return _follow(conn, run_id, *started, resume=resume, owner=me.pid)


def _start(conn, run_id: int, resume: str | None, stop_at: int | None,
           trainer_cmd: list[str] | None, owner: int):
    """Housekeeping, config.json, then the trainer. None when a stop came first."""
    config, run_dir, stop_on = store_runs.launch_row(conn, run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    watch = Watch(run_dir)
    watch.beat(force=True)
    log_path = train_log(run_dir)
    note = _note(log_path)
    keep = int(config.get("checkpoint", {}).get("keep", 0) or 0)
    committer = Committer(conn, run_id, run_dir, keep, note, owner)
    # what a previous supervisor left: its spool, half-written checkpoints, rows of
    # checkpoints that are gone (pruned by an older moedesk, or deleted by hand)
    spool.replay(conn, run_id, committer.spool_path)
    for path in remove_partial_files(run_dir):
        note(f"removed {path.name}, left by a trainer killed while writing it")
    gone = [s for s, p in store_runs.checkpoint_rows(conn, run_id) if not Path(p).exists()]
    store_runs.drop_checkpoint_rows(conn, run_id, gone)
    committer.prune()
    config_file(run_dir).write_text(json.dumps(config, indent=2))

    if read_stop_request(run_dir) is not None:
        store_runs.finish_run(conn, run_id, "stopped", None, "stopped before the trainer started",
                              owner=owner)
        return None
    profile = profile_from_dict(config)
    # one process, or torchrun's agent over nproc_per_node x nnodes ranks (runner/torchrun.py)
    cmd = trainer_cmd or torchrun.trainer_command(profile, run_dir)
    if resume:
        cmd += ["--resume", resume]
    if stop_at is not None:
        cmd += ["--stop-at", str(stop_at)]
    threads_env = trainer_env(conn, config)  # train.threads = 0: this run's share of the cores
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"--- moedesk supervisor {owner}: {' '.join(cmd)}"
                  f"{''.join(f' ({k}={v})' for k, v in threads_env.items())}\n")
        log.flush()
        trainer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log,
                                   stdin=subprocess.DEVNULL, text=True, bufsize=1,
                                   start_new_session=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **threads_env,
                                        **torchrun.launch_env(profile)})
    if not store_runs.mark_running(conn, run_id, trainer.pid, owner=owner):
        signal_trainer(trainer.pid, signal.SIGKILL)  # the run was taken from us meanwhile
        trainer.wait()
        return None
    engine = make_engine(config, stop_on, *((conn, run_id) if resume else ()))
    return trainer, committer, engine, watch, log_path, profile


def _follow(conn, run_id: int, trainer: subprocess.Popen, committer: Committer, engine,
            watch: Watch, log_path: Path, profile: Profile, resume: str | None,
            owner: int) -> int:
    """Read the trainer until it exits; commit, watch, and record the outcome."""
    stops: list[dict] = []  # why moedesk itself stopped the trainer (health, the store)

    def on_alert(alert: dict) -> None:
        if alert.get("stops") and not stops:
            stops.append({"rule": alert["rule"], "message": alert["message"]})
            signal_trainer(trainer.pid, signal.SIGTERM)

    ingestor = Ingestor(committer, engine, on_alert)
    watch.trainer_pid = trainer.pid
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(trainer.stdout, lines), daemon=True).start()

    # a SIGTERM to the supervisor itself is passed on as a graceful stop
    signal.signal(signal.SIGTERM, lambda *_: signal_trainer(trainer.pid, signal.SIGTERM))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    eof = False
    while not eof:
        try:
            line = lines.get(timeout=TICK_S)
        except queue.Empty:
            line = _IDLE
        eof = line is None
        if line is not None and line is not _IDLE:
            ingestor.feed_line(line)
            eof = _drain(lines, ingestor)
        if not watch.stopping:
            ingestor.tick()  # time-based rules (stalled)
        ingestor.commit()  # adaptive: at once when quiet, the whole backlog when flooding
        watch.tick(ingestor.last_step)
        committer.retry_if_due()
        if committer.outage_exceeded() and not stops:
            reason = (f"the store was unwritable for more than {committer.limit_s:.0f} s"
                      f" ({committer.error})")
            stops.append({"rule": "store", "message": reason})
            committer.note(f"{reason}: stopping the trainer with a checkpoint")
            signal_trainer(trainer.pid, signal.SIGTERM)
    exit_code = trainer.wait()
    ingestor.commit()
    if ingestor.log_lines:
        with open(log_path, "a", encoding="utf-8") as log:
            log.write("\n".join(ingestor.log_lines) + "\n")
    # several ranks: torchrun's exit after a forwarded stop is clean, a lost rank is named
    exit_code, failure = torchrun.launch_outcome(profile, ingestor.finished, exit_code, log_path)
    status, error = failure or outcome(ingestor.finished, exit_code,
                                       read_stop_request(watch.run_dir), stops, log_path)
    committer.finish(status, exit_code, error)
    watch.close()
    return 0


def _drain(lines: queue.Queue, ingestor: Ingestor) -> bool:
    """Feed what the trainer has already written (waiting a moment for the rest of a
    step); True at the end of its output."""
    while not ingestor.full:
        try:
            line = lines.get(timeout=ingestor.wait_s())
        except queue.Empty:
            return False
        if line is None:
            return True
        ingestor.feed_line(line)
    return False


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
