"""`moedesk stop`: ask, make sure the supervisor heard, wait for the checkpoint.

`launch.request_stop` writes the request and signals the trainer. `stop_and_wait` then
waits up to `ACK_TIMEOUT_S` for the supervisor's acknowledgement (control.py); a
supervisor that does not answer is frozen (SIGSTOP, hung): the stop is reported as not
acknowledged, and `--kill` then kills the supervisor too and records the run as stopped
itself. Acknowledged, it waits for the run to end and reports the step its checkpoint
was written at. A run that had already ended without anyone recording it (a dead
supervisor) is recorded first, and the outcome says so.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from moedesk.paths import db_path
from moedesk.runner.control import read_stop_ack, signal_trainer
from moedesk.runner.launch import request_stop
from moedesk.store import StoreError, connect_writer, open_reader, process_alive
from moedesk.store import runs as store_runs
from moedesk.store.liveness import Recorded, record_end
from moedesk.store.reads import RunInfo

ACK_TIMEOUT_S = 5.0
END_TIMEOUT_S = 300.0
POLL_S = 0.1


@dataclass
class StopOutcome:
    info: RunInfo  # the run as found
    recorded: Recorded | None = None  # it had already ended: what was recorded just now
    ack: dict | None = None  # the supervisor's acknowledgement (step it saw, time)
    ended_before_ack: bool = False  # it ended before the supervisor could answer
    killed_supervisor: bool = False  # --kill on a frozen supervisor
    final: RunInfo | None = None  # the run after it ended (None: not waited, or still going)
    checkpoint: dict | None = None  # the checkpoint row it ended with


def _current(home: Path, run_id: int) -> RunInfo:
    with open_reader(home) as reader:
        return reader.run(run_id)


def _checkpoint_at_end(home: Path, info: RunInfo) -> dict | None:
    with open_reader(home, record=False) as reader:
        rows = [c for c in reader.checkpoints(info.id) if c["step"] <= info.last_step]
    return rows[-1] if rows else None


def stop_and_wait(home: Path, ref: str | int, kill: bool = False, wait: bool = True,
                  ack_timeout: float = ACK_TIMEOUT_S,
                  timeout: float = END_TIMEOUT_S) -> StopOutcome:
    with open_reader(home, record=False) as reader:
        recorded = reader.record_gone()
        info = reader.run(ref)
    mine = [r for r in recorded if r.run_id == info.id]
    if mine:
        return StopOutcome(info, recorded=mine[0], final=info)
    request = request_stop(info, kill)
    out = StopOutcome(info)
    run_dir = Path(info.row["run_dir"])
    deadline = time.monotonic() + ack_timeout
    while out.ack is None:
        ack = read_stop_ack(run_dir)
        if ack is not None and ack.get("request_time") == request["time"]:
            out.ack = ack
            break
        current = _current(home, info.id)
        if current.status not in store_runs.ACTIVE:
            out.ended_before_ack, out.final = True, current
            break
        if time.monotonic() >= deadline:
            if not kill:
                return out  # not acknowledged: the caller says so
            out.killed_supervisor = _kill_frozen(home, current)
            out.final = _current(home, info.id)
            return out
        time.sleep(POLL_S)
    if out.final is None and wait:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            current = _current(home, info.id)
            if current.status not in store_runs.ACTIVE:
                out.final = current
                break
            time.sleep(POLL_S)
    if out.final is not None:
        out.checkpoint = _checkpoint_at_end(home, out.final)
    return out


def _kill_frozen(home: Path, info: RunInfo) -> bool:
    """SIGKILL an unresponsive supervisor and its trainer, then record the run stopped."""
    pid, started = info.row["supervisor_pid"], info.row["supervisor_started"]
    killed = False
    if process_alive(pid, started):
        try:
            os.kill(pid, signal.SIGKILL)
            killed = True
        except OSError:
            pass
    if not signal_trainer(info.row["trainer_pid"], signal.SIGKILL) and info.row["trainer_pid"]:
        try:  # an attached external process need not lead a process group
            os.kill(info.row["trainer_pid"], signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + 5.0
    while process_alive(pid, started) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    reason = (f"killed by request; its supervisor (pid {pid}) was unresponsive and was"
              " killed too")
    try:
        db = connect_writer(db_path(home))
        try:
            record_end(db.conn, info.row | {"status": info.row["stored_status"]}, "stopped",
                       reason)
        finally:
            db.close()
    except StoreError:
        pass  # the next command records it as crashed
    return killed


__all__ = ["StopOutcome", "stop_and_wait", "ACK_TIMEOUT_S", "END_TIMEOUT_S"]
