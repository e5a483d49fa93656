"""The runner's Python API: start, stop, resume and fork runs. CLI and TUI both call it.

Starting a run creates its row (queued) and spawns a detached supervisor
(`start_new_session=True`), so the run outlives the terminal, the TUI and an SSH
disconnect. Nothing here imports torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from moedesk.paths import db_path, run_dir, supervisor_log
from moedesk.profiles import Profile, profile_to_dict
from moedesk.runner.checkpoints import (
    CheckpointError,
    CheckpointInfo,
    resolve_checkpoint,
    split_ref,
    verify_checkpoint,
)
from moedesk.runner.control import (
    clear_stop_request,
    signal_trainer,
    stop_signal,
    write_stop_request,
)
from moedesk.store import StoreError, connect_writer, open_reader
from moedesk.store import runs as store_runs
from moedesk.store.reads import RunInfo, effective_status


class RunError(Exception):
    """A run operation that cannot be done; the message says why and what to do."""


@dataclass
class Launched:
    run_id: int
    name: str
    supervisor_pid: int


def spawn_supervisor(home: Path, run_id: int, resume: str | None = None,
                     stop_at: int | None = None) -> int:
    folder = run_dir(home, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "moedesk.runner.supervise", "--home", str(home),
           "--run-id", str(run_id)]
    if resume:
        cmd += ["--resume", resume]
    if stop_at is not None:
        cmd += ["--stop-at", str(stop_at)]
    with open(supervisor_log(folder), "a") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, close_fds=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc.pid


def start_run(profile: Profile, home: Path, *, name: str | None = None,
              stop_on: str | None = None, stop_at: int | None = None,
              parent: tuple[int, int, str] | None = None,
              init_from: tuple[RunInfo, CheckpointInfo] | None = None) -> Launched:
    """Create a queued run for a validated profile and start its supervisor.

    `parent` = (run_id, step, checkpoint path) forks from another run's checkpoint;
    `init_from` = (run, checkpoint) takes only its weights (runner/init_from.py).
    """
    if init_from is not None:
        parent_ids = (init_from[0].id, init_from[1].step)
    else:
        parent_ids = (parent[0], parent[1]) if parent else (None, None)
    db = connect_writer(db_path(home))
    try:
        run_id, final_name = store_runs.create_run(
            db.conn, config=profile_to_dict(profile), profile_path=profile.path, home=home,
            name=name, parent_id=parent_ids[0], parent_step=parent_ids[1], stop_on=stop_on)
    finally:
        db.close()
    if init_from is not None:  # before the supervisor exists, so the trainer finds it
        from moedesk.runner.init_from import write_init_request

        write_init_request(run_dir(home, run_id), *init_from)
    pid = spawn_supervisor(home, run_id, resume=parent[2] if parent else None, stop_at=stop_at)
    return Launched(run_id, final_name, pid)


def get_run(home: Path, ref: str | int) -> RunInfo:
    with open_reader(home) as reader:
        return reader.run(ref)


def stop_run(home: Path, ref: str | int, kill: bool = False) -> RunInfo:
    """Graceful stop (finish the step, checkpoint, exit) or, with kill, SIGKILL now."""
    info = get_run(home, ref)
    if info.status not in store_runs.ACTIVE:
        raise RunError(f"run {info.id} ({info.name}) is {info.status}; only queued or running "
                       "runs can be stopped")
    write_stop_request(Path(info.row["run_dir"]), "kill" if kill else "graceful")
    signal_trainer(info.row["trainer_pid"], stop_signal(kill))
    return info


def checkpoint_for(info: RunInfo, step: int | str | None, at_most: int | None = None
                   ) -> CheckpointInfo:
    """The verified checkpoint of a run at `step` ("best": the keep-best one; None: its
    newest, at or before `at_most` when given); RunError when unusable."""
    try:
        found = resolve_checkpoint(Path(info.row["run_dir"]), step, at_most)
        verify_checkpoint(found)
    except CheckpointError as exc:
        raise RunError(f"run {info.id} ({info.name}): {exc}") from None
    return found


def checkpoint_of(home: Path, ref: str, kinds: tuple[str, ...] | None = None,
                  purpose: str = "this") -> tuple[RunInfo, CheckpointInfo]:
    """`RUN`, `RUN@STEP` or `RUN@best` -> the run and its verified checkpoint (read-only:
    `moedesk sample`, `route` and export read a checkpoint without a supervisor). With
    `kinds`, a run of another kind is refused first: "`purpose` needs kind ..."."""
    try:
        run, at = split_ref(ref)
    except CheckpointError as exc:
        raise RunError(str(exc)) from None
    info = get_run(home, run)
    if kinds is not None and info.kind not in kinds:
        raise RunError(f"run {info.id} ({info.name}) is a {info.kind} run; {purpose} needs "
                       f"kind {' or '.join(kinds)}")
    return info, checkpoint_for(info, at)


def resume_run(home: Path, ref: str | int, step: int | str | None = None,
               stop_at: int | None = None) -> tuple[RunInfo, int]:
    """Continue a run in place from a checkpoint (`step`: a number, "best" or None for the
    newest); rows after that step are dropped first."""
    info = get_run(home, ref)
    if info.status in store_runs.ACTIVE:
        raise RunError(f"run {info.id} ({info.name}) is still {info.status}; stop it first")
    # a supervisor killed mid-batch can leave a checkpoint newer than the last stored row;
    # resuming from it would leave a gap in the curves, so take the newest one at or before
    ckpt = checkpoint_for(info, step, at_most=info.last_step)
    db = connect_writer(db_path(home))
    try:
        store_runs.truncate_for_resume(db.conn, info.id, ckpt.step, str(ckpt.path))
    finally:
        db.close()
    clear_stop_request(Path(info.row["run_dir"]))
    spawn_supervisor(home, info.id, resume=str(ckpt.path), stop_at=stop_at)
    return info, ckpt.step


def fork_run(profile: Profile, home: Path, source: str, *, name: str | None = None,
             stop_on: str | None = None, stop_at: int | None = None) -> Launched:
    """`moedesk run PROFILE --from RUN[@STEP|@best]`: a new run from another's checkpoint."""
    try:
        ref, at = split_ref(source)
    except CheckpointError as exc:
        raise RunError(f"--from {exc}") from None
    parent = get_run(home, ref)
    if parent.kind != profile.kind:
        raise RunError(f"--from {source!r}: run {parent.id} is kind {parent.kind}, the profile is "
                       f"kind {profile.kind}; a fork keeps the kind")
    ckpt = checkpoint_for(parent, at)
    return start_run(profile, home, name=name, stop_on=stop_on, stop_at=stop_at,
                     parent=(parent.id, ckpt.step, str(ckpt.path)))


def reconcile_crashed(home: Path) -> list[int]:
    """Mark running runs whose supervisor died as crashed in the database."""
    with open_reader(home) as reader:
        dead = [r.id for r in reader.runs() if r.row["status"] == "running"
                and effective_status(r.row) == "crashed"]
    if dead:
        db = connect_writer(db_path(home))
        try:
            for run_id in dead:
                store_runs.mark_crashed_if_active(db.conn, run_id, "supervisor process is gone")
        finally:
            db.close()
    return dead


__all__ = ["RunError", "Launched", "start_run", "stop_run", "resume_run", "fork_run",
           "get_run", "checkpoint_for", "checkpoint_of", "spawn_supervisor",
           "reconcile_crashed", "StoreError"]
