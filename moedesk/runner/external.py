"""The supervisor of external runs: `python -m moedesk.runner.external {attach,watch}`.

  attach   started by `moedesk.init` in a training process (the attach handshake of
           runner/attach.py): creates the run, claims it, answers, then follows the
           process by pid (it is not our child) until it sends `finished` or ends.
           Ending without `finished` (killed, os._exit) is `crashed`.
  watch    started by `launch.start_watch` (`moedesk watch -- CMD`) for the run it
           created: claims it, starts the command in its own process group, detached
           from the terminal, stdout and stderr appended to train.log, the MOEDESK_*
           variables in its environment; follows it until it exits. The exit code
           decides the status: 0 completed, > 0 failed, killed by a signal crashed; a
           stop request stopped.

Both are a supervisor like moedesk's own (runner/supervise.py), on the same reliability
layer: one writer per run (`store.runs.claim_supervisor`, and every later write names
its owner), the heartbeat and the stop acknowledgement (`Watch`), commits through the
`Committer` (a store that refuses writes is spooled to and retried; unwritable past its
limit, the process is stopped), so `moedesk stop`, `show`, the TUI and the crash
recording of the next command (store/liveness.py) treat external runs like the others.
Both tail `RUN_DIR/events.jsonl` through `ExternalRun` (runner/external_run.py).

Stops: `moedesk stop`, the TUI or a health rule reaching `stop_on` write the stop-request
file; this supervisor acknowledges it and sends SIGTERM (SIGKILL for --kill) to the
process (its group under watch), unless the process declared `graceful_stop` (it reads
the file itself, e.g. the Trainer callback, which then checkpoints and stops at the end
of the step; --kill still kills it).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from moedesk.paths import config_file, db_path, events_file, run_dir, supervisor_log, train_log
from moedesk.runner import attach as contract
from moedesk.runner.commit import Committer
from moedesk.runner.control import read_stop_request, signal_trainer, write_stop_request
from moedesk.runner.external_run import (
    STORE_STOP,
    ExternalRun,
    merge_started,
    settings,
    settings_problems,
)
from moedesk.runner.outcome import log_tail
from moedesk.runner.protocol import encode
from moedesk.runner.supervise import SUPERVISOR_BUSY_MS
from moedesk.runner.supervise import _note as log_note
from moedesk.runner.watch import Watch
from moedesk.store import StoreError, connect_writer, process_alive
from moedesk.store import external as store_external
from moedesk.store import runs as store_runs

POLL_S = 0.05  # how often an idle supervisor looks for events, stop requests and the process


def follow(run: ExternalRun, watch: Watch, alive: Callable[[], bool],
           until_finished: bool = False) -> None:
    """Ingest until the process is gone (or, with `until_finished`, said `finished`),
    touching the heartbeat, answering stop requests and riding out store outages."""
    committer = run.committer
    while True:
        moved = run.pump(tick=not watch.stopping)
        watch.tick(run.ingestor.last_step)
        committer.retry_if_due()
        if committer.outage_exceeded() and not run.stops:
            reason = (f"the store was unwritable for more than {committer.limit_s:.0f} s"
                      f" ({committer.error})")
            committer.note(f"{reason}: stopping the process")
            run.request_stop(STORE_STOP, reason)
        if until_finished and run.finished is not None:
            return
        if not alive():
            return
        if not moved:
            time.sleep(POLL_S)


def _signal_name(code: int) -> str:
    return signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)


def _stop_on_sigterm(folder: Path) -> None:
    """A SIGTERM to the supervisor is a stop of the run; closing the terminal is nothing."""
    def on_term(*_):
        try:
            write_stop_request(folder, "graceful")
        except OSError:
            pass

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _connect(home: Path, busy_ms: int = SUPERVISOR_BUSY_MS):
    try:
        return connect_writer(db_path(home), busy_timeout_ms=busy_ms).conn
    except StoreError as exc:
        print(f"moedesk supervisor {os.getpid()}: cannot open the store: {exc}", flush=True)
        return None


def _end(run: ExternalRun, watch: Watch, log_path: Path, status: str, error: str | None,
         exit_code: int | None) -> None:
    # a stop the process answered itself (graceful_stop) before our last look is still
    # acknowledged before the end is recorded; the process is gone, nothing to pass on
    watch.deliver = lambda request: None
    watch.last_check = 0.0
    watch.tick(run.ingestor.last_step)
    run.write_notes(log_path)
    run.committer.finish(status, exit_code, error)
    watch.close()


# ---- watch ---------------------------------------------------------------------------------

def watch(home: Path, run_id: int) -> int:
    conn = _connect(home)
    if conn is None:
        return 1
    me = psutil.Process()
    refused = store_runs.claim_supervisor(conn, run_id, me.pid, me.create_time())
    if refused:
        print(f"moedesk supervisor {me.pid}: not starting: {refused}", flush=True)
        return 2
    try:
        started = _start_command(conn, home, run_id, me.pid)
    except Exception as exc:  # noqa: BLE001 - a startup failure must still be recorded
        reason = f"the supervisor could not start the command: {exc}"
        print(f"moedesk supervisor {me.pid}: {reason}", flush=True)
        try:
            store_runs.finish_run(conn, run_id, "failed", None, reason, owner=me.pid)
        except Exception:  # noqa: BLE001 - the store may be why; readers then see failed
            pass
        return 1
    if started is None:
        return 0
    run, watch_, proc, log_path = started
    follow(run, watch_, lambda: proc.poll() is None)
    exit_code = proc.wait()
    run.drain()
    status, error = watch_outcome(run, exit_code, read_stop_request(run.run_dir), log_path)
    _end(run, watch_, log_path, status, error, exit_code)
    return 0


def _start_command(conn, home: Path, run_id: int, owner: int):
    """config.json, then the command; None when a stop came first or it cannot start."""
    config, folder, _ = store_runs.launch_row(conn, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    log_path = train_log(folder)
    committer = Committer(conn, run_id, folder, keep=0, note=log_note(log_path), owner=owner)
    watch_ = Watch(folder)
    watch_.beat(force=True)
    _stop_on_sigterm(folder)
    config_file(folder).write_text(json.dumps(config, indent=2))
    if read_stop_request(folder) is not None:
        store_runs.finish_run(conn, run_id, "stopped", None, "stopped before the command started",
                              owner=owner)
        watch_.close()
        return None
    argv, cwd = config["external"]["command"], config["external"]["cwd"]
    events = events_file(folder)
    events.touch()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", contract.ENV_HOME: str(home),
           contract.ENV_RUN_ID: str(run_id), contract.ENV_RUN_NAME: config["name"],
           contract.ENV_RUN_DIR: str(folder), contract.ENV_EVENTS: str(events)}
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"--- moedesk supervisor {owner}: {shlex.join(argv)} (in {cwd})\n")
        log.flush()
        try:
            proc = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        except OSError as exc:
            store_runs.finish_run(conn, run_id, "failed", None, f"cannot start {argv[0]!r}: {exc}",
                                  owner=owner)
            watch_.close()
            return None
    if not store_runs.mark_running(conn, run_id, proc.pid, owner=owner):
        signal_trainer(proc.pid, signal.SIGKILL)  # the run was taken from us meanwhile
        proc.wait()
        return None
    run = ExternalRun(conn, run_id, config, folder, committer)

    def deliver(request: dict) -> None:
        if request.get("mode") == "kill":
            signal_trainer(proc.pid, signal.SIGKILL)
        elif not run.config["external"]["graceful_stop"]:
            signal_trainer(proc.pid, signal.SIGTERM)

    watch_.deliver = run.deliver_now = deliver
    watch_.trainer_pid = proc.pid
    return run, watch_, proc, log_path


def watch_outcome(run: ExternalRun, exit_code: int, request: dict | None,
                  log_path: Path) -> tuple[str, str | None]:
    stopped = run.stopped_text(request)
    if stopped:
        return "stopped", f"{stopped} (exit code {exit_code})"
    finished = run.finished or {}
    if finished.get("status") == "failed":
        reason = finished.get("reason") or "the training process reported a failure"
        return "failed", f"{reason}\n{log_tail(log_path)}".strip()
    if finished.get("status") == "stopped":
        return "stopped", finished.get("reason") or "the training process stopped itself"
    if exit_code == 0:
        return "completed", None
    if exit_code > 0:
        return "failed", f"command exited with code {exit_code}\n{log_tail(log_path)}".strip()
    return "crashed", (f"command killed by signal {_signal_name(exit_code)}\n"
                       f"{log_tail(log_path)}").strip()


# ---- attach --------------------------------------------------------------------------------

def _answer(data: dict) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def attach(home: Path, pid: int) -> int:
    try:
        request = json.loads(sys.stdin.readline())
        if not isinstance(request, dict) or request.get("type") != "started":
            raise ValueError("the first line must be a started event")
    except ValueError as exc:
        _answer({"error": f"bad attach request: {exc}"})
        return 2
    problems = settings_problems(request)
    if problems:
        _answer({"error": "; ".join(problems)})
        return 2
    me = psutil.Process()
    conn, run_id = None, None
    try:
        proc_started = psutil.Process(pid).create_time()
        # creating the run waits out another writer like any command; the ingest after
        # it has the supervisor's short busy timeout, so a held lock turns into spooling
        conn = connect_writer(db_path(home)).conn
        config = merge_started(settings(), request)
        run_id, name = store_external.create_external_run(
            conn, home=home, config=config, default_stem=request.get("program") or "run",
            stop_on=config["health"]["stop_on"], tags=[str(t) for t in request.get("tags") or []])
        config["name"] = name
        folder = run_dir(home, run_id)
        folder.mkdir(parents=True, exist_ok=True)
        watch_ = Watch(folder)
        watch_.beat(force=True)
        refused = store_runs.claim_supervisor(conn, run_id, me.pid, me.create_time())
        if refused or not store_runs.mark_running(conn, run_id, pid, owner=me.pid):
            raise RuntimeError(refused or f"run {run_id} was taken by another supervisor")
        conn.execute(f"PRAGMA busy_timeout = {SUPERVISOR_BUSY_MS}")
        config_file(folder).write_text(json.dumps(config, indent=2))
        events = events_file(folder)
        fd = os.open(events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, (encode(request) + "\n").encode())
        os.close(fd)
    except Exception as exc:  # noqa: BLE001 - the training process shows it, we exit
        _answer({"error": f"cannot create the run in {home}: {exc}"})
        if run_id is not None:
            try:  # a run that was made but cannot be followed: said so, not left queued
                store_runs.finish_run(conn, run_id, "failed", None,
                                      f"its supervisor could not start: {exc}", owner=me.pid)
            except Exception:  # noqa: BLE001 - readers call it failed after the grace period
                pass
        return 2
    _answer({"run_id": run_id, "name": name, "run_dir": str(folder), "events": str(events)})
    # from here on our output goes to the run folder: the training process's pipe is closed
    log_fd = os.open(supervisor_log(folder), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    log_path = train_log(folder)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"--- moedesk supervisor {me.pid}: attached to process {pid} "
                  f"({request.get('program') or '?'})\n")
    committer = Committer(conn, run_id, folder, keep=0, note=log_note(log_path), owner=me.pid)
    run = ExternalRun(conn, run_id, config, folder, committer)

    def deliver(request: dict) -> None:
        # the process is not our child and need not lead a process group: signal it alone
        if not process_alive(pid, proc_started):
            return
        try:
            if request.get("mode") == "kill":
                os.kill(pid, signal.SIGKILL)
            elif not run.config["external"]["graceful_stop"]:
                os.kill(pid, signal.SIGTERM)
        except OSError:
            pass

    watch_.deliver = run.deliver_now = deliver
    watch_.trainer_pid = pid
    _stop_on_sigterm(folder)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    follow(run, watch_, lambda: process_alive(pid, proc_started), until_finished=True)
    run.drain()
    status, error, exit_code = attach_outcome(run, read_stop_request(folder), pid)
    _end(run, watch_, log_path, status, error, exit_code)
    return 0


def attach_outcome(run: ExternalRun, request: dict | None, pid: int
                   ) -> tuple[str, str | None, int | None]:
    stopped = run.stopped_text(request)
    finished = run.finished
    if finished is None:
        if stopped:
            return "stopped", f"{stopped}; the process ended without finish()", None
        return "crashed", (f"the training process {pid} ended without finish() (killed, or "
                           "exited through os._exit)"), None
    status, exit_code = finished.get("status"), finished.get("exit_code")
    if status == "failed":
        return "failed", finished.get("reason") or "the training process reported a failure", \
            exit_code
    if stopped:
        return "stopped", stopped, exit_code
    if status == "stopped":
        return "stopped", finished.get("reason") or "the training process stopped itself", \
            exit_code
    return "completed", None, exit_code


def command_stem(argv: list[str]) -> str:
    """A short name for a command: the script of `python x.py`, the module of `-m`."""
    first = Path(argv[0]).name
    if first.startswith("python"):
        for i, arg in enumerate(argv[1:], 1):
            if arg == "-m" and i + 1 < len(argv):
                return argv[i + 1].rsplit(".", 1)[-1]
            if arg.endswith(".py"):
                return Path(arg).stem
    return first or "command"


def spawn(home: Path, run_id: int) -> int:
    """Start the detached watch supervisor of a run `launch.start_watch` created, and
    record its pid, so one that dies before claiming the run reads as failed at once."""
    folder = run_dir(home, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "moedesk.runner.external", "watch", "--home", str(home),
           "--run-id", str(run_id)]
    from moedesk.runner.launch import spawn_detached  # launch imports this module lazily

    return spawn_detached(home, run_id, cmd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moedesk-external")
    sub = parser.add_subparsers(dest="mode", required=True)
    p_attach = sub.add_parser("attach")
    p_attach.add_argument("--home", required=True)
    p_attach.add_argument("--pid", type=int, required=True)
    p_watch = sub.add_parser("watch")
    p_watch.add_argument("--home", required=True)
    p_watch.add_argument("--run-id", type=int, required=True)
    args = parser.parse_args(argv)
    if args.mode == "attach":
        return attach(Path(args.home), args.pid)
    return watch(Path(args.home), args.run_id)


if __name__ == "__main__":
    sys.exit(main())
