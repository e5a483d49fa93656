"""The supervisor of external runs: `python -m moedesk.runner.external {attach,watch}`.

  attach   started by `moedesk.init` in a training process (the attach handshake of
           runner/attach.py): creates the run, answers, then follows the process by pid
           (it is not our child) until it sends `finished` or ends. Ending without
           `finished` (killed, os._exit) is `crashed`.
  watch    started by `launch.start_watch` (`moedesk watch -- CMD`) for the run it
           created: starts the command in its own process group, detached from the
           terminal, stdout and stderr appended to train.log, the MOEDESK_* variables in
           its environment; follows it until it exits. The exit code decides the status:
           0 completed, > 0 failed, killed by a signal crashed; a stop request stopped.

Both tail `RUN_DIR/events.jsonl` through `ExternalRun` (runner/external_run.py). Stops:
`moedesk stop` or a health rule reaching `stop_on` writes the stop-request file; this
supervisor then sends SIGTERM (SIGKILL for --kill) to the process, or its group under
watch, unless the process declared `graceful_stop` (it reads the file itself, e.g. the
Trainer callback, which then checkpoints and stops at the end of the step).
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
from moedesk.runner.control import read_stop_request, signal_trainer, write_stop_request
from moedesk.runner.external_run import ExternalRun, merge_started, settings, settings_problems
from moedesk.runner.outcome import log_tail
from moedesk.runner.protocol import encode
from moedesk.store import connect_writer, process_alive
from moedesk.store import external as store_external
from moedesk.store import runs as store_runs

POLL_S = 0.05  # how often an idle supervisor looks for events, stop requests and the process


def follow(run: ExternalRun, alive: Callable[[], bool], on_request: Callable[[dict], None],
           until_finished: bool = False) -> None:
    """Ingest until the process is gone (or, with `until_finished`, said `finished`)."""
    handled = None
    while True:
        moved = run.pump()
        request = read_stop_request(run.run_dir)
        if request is not None and request != handled:
            handled = request
            on_request(request)
        if until_finished and run.finished is not None:
            return
        if not alive():
            return
        if not moved:
            time.sleep(POLL_S)


def _signal_name(code: int) -> str:
    return signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)


# ---- watch ---------------------------------------------------------------------------------

def watch(home: Path, run_id: int) -> int:
    db = connect_writer(db_path(home))
    conn = db.conn
    me = psutil.Process()
    store_runs.set_supervisor(conn, run_id, me.pid, me.create_time())
    config, folder, _ = store_runs.launch_row(conn, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    config_file(folder).write_text(json.dumps(config, indent=2))
    log_path = train_log(folder)
    if read_stop_request(folder) is not None:
        store_runs.finish_run(conn, run_id, "stopped", None, "stopped before the command started")
        return 0
    argv, cwd = config["external"]["command"], config["external"]["cwd"]
    events = events_file(folder)
    events.touch()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", contract.ENV_HOME: str(home),
           contract.ENV_RUN_ID: str(run_id), contract.ENV_RUN_NAME: config["name"],
           contract.ENV_RUN_DIR: str(folder),
           contract.ENV_EVENTS: str(events)}
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"--- moedesk supervisor {me.pid}: {shlex.join(argv)} (in {cwd})\n")
        log.flush()
        try:
            proc = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        except OSError as exc:
            store_runs.finish_run(conn, run_id, "failed", None, f"cannot start {argv[0]!r}: {exc}")
            return 0
    store_runs.mark_running(conn, run_id, proc.pid)
    run = ExternalRun(conn, run_id, config, folder)

    def on_request(request: dict) -> None:
        if request.get("mode") == "kill":
            signal_trainer(proc.pid, signal.SIGKILL)
        elif not run.config["external"]["graceful_stop"]:
            signal_trainer(proc.pid, signal.SIGTERM)

    # a SIGTERM to the supervisor is a stop of the run; closing the terminal is nothing
    signal.signal(signal.SIGTERM, lambda *_: write_stop_request(folder, "graceful"))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    follow(run, lambda: proc.poll() is None, on_request)
    exit_code = proc.wait()
    run.drain()
    run.write_notes(log_path)
    status, error = watch_outcome(run, exit_code, read_stop_request(folder), log_path)
    store_runs.finish_run(conn, run_id, status, exit_code, error)
    return 0


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
    try:
        proc_started = psutil.Process(pid).create_time()
        db = connect_writer(db_path(home))
        conn = db.conn
        config = merge_started(settings(), request)
        run_id, name = store_external.create_external_run(
            conn, home=home, config=config, default_stem=request.get("program") or "run",
            stop_on=config["health"]["stop_on"], tags=[str(t) for t in request.get("tags") or []])
        config["name"] = name
        me = psutil.Process()
        store_runs.set_supervisor(conn, run_id, me.pid, me.create_time())
        store_runs.mark_running(conn, run_id, pid)
        folder = run_dir(home, run_id)
        folder.mkdir(parents=True, exist_ok=True)
        config_file(folder).write_text(json.dumps(config, indent=2))
        events = events_file(folder)
        fd = os.open(events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, (encode(request) + "\n").encode())
        os.close(fd)
    except Exception as exc:  # noqa: BLE001 - the training process shows it, we exit
        _answer({"error": f"cannot create the run in {home}: {exc}"})
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
    run = ExternalRun(conn, run_id, config, folder)

    def on_request(request: dict) -> None:
        if not process_alive(pid, proc_started):
            return
        if request.get("mode") == "kill":
            os.kill(pid, signal.SIGKILL)
        elif not run.config["external"]["graceful_stop"]:
            os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, lambda *_: write_stop_request(folder, "graceful"))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    follow(run, lambda: process_alive(pid, proc_started), on_request, until_finished=True)
    run.drain()
    run.write_notes(log_path)
    status, error, exit_code = attach_outcome(run, read_stop_request(folder), pid)
    store_runs.finish_run(conn, run_id, status, exit_code, error)
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
    """Start the detached watch supervisor of a run `launch.start_watch` created."""
    folder = run_dir(home, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "moedesk.runner.external", "watch", "--home", str(home),
           "--run-id", str(run_id)]
    with open(supervisor_log(folder), "a") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, close_fds=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc.pid


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
