"""The runner's Python API: start, stop, resume and fork runs. CLI and TUI both call it.

Starting a run creates its row (queued) and spawns a detached supervisor
(`start_new_session=True`), so the run outlives the terminal, the TUI and an SSH
disconnect. Nothing here imports torch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from moedesk.health.thresholds import STOP_ON
from moedesk.paths import db_path, run_dir, supervisor_log
from moedesk.profiles import Profile, profile_to_dict
from moedesk.runner.checkpoints import CheckpointError, find_checkpoint, verify_checkpoint
from moedesk.runner.control import (
    clear_stop_request,
    signal_trainer,
    stop_signal,
    write_stop_request,
)
from moedesk.store import StoreError, connect_writer, open_reader
from moedesk.store import external as store_external
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
              parent: tuple[int, int, str] | None = None) -> Launched:
    """Create a queued run for a validated profile and start its supervisor.

    `parent` = (run_id, step, checkpoint path) forks from another run's checkpoint.
    """
    db = connect_writer(db_path(home))
    try:
        run_id, final_name = store_runs.create_run(
            db.conn, config=profile_to_dict(profile), profile_path=profile.path, home=home,
            name=name, parent_id=parent[0] if parent else None,
            parent_step=parent[1] if parent else None, stop_on=stop_on)
    finally:
        db.close()
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


def checkpoint_for(info: RunInfo, step: int | None, at_most: int | None = None):
    """The verified checkpoint of a run at `step` (or its newest, at or before `at_most`
    when there is one); RunError when unusable."""
    try:
        found = find_checkpoint(Path(info.row["run_dir"]), step, at_most)
        verify_checkpoint(found)
    except CheckpointError as exc:
        raise RunError(str(exc)) from None
    return found


def resume_run(home: Path, ref: str | int, step: int | None = None,
               stop_at: int | None = None) -> tuple[RunInfo, int]:
    """Continue a run in place from a checkpoint; rows after that step are dropped first."""
    info = get_run(home, ref)
    if info.status in store_runs.ACTIVE:
        raise RunError(f"run {info.id} ({info.name}) is still {info.status}; stop it first")
    if info.kind == store_external.EXTERNAL_KIND:  # issue 13 hook
        raise RunError(f"run {info.id} ({info.name}) is an external run: moedesk did not start "
                       "its training and cannot resume it; start your script again from one of "
                       f"its checkpoints (moedesk show {info.id})")
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
    """`moedesk run PROFILE --from RUN[@STEP]`: a new run starting from another's checkpoint."""
    ref, _, at = source.partition("@")
    if at and not at.isdigit():
        raise RunError(f"--from {source!r}: the step after @ must be a number")
    parent = get_run(home, ref)
    if parent.kind != profile.kind:
        raise RunError(f"--from {source!r}: run {parent.id} is kind {parent.kind}, the profile is "
                       f"kind {profile.kind}; a fork keeps the kind")
    ckpt = checkpoint_for(parent, int(at) if at else None)
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


# ---- watched commands (issue 13): a hook kept apart for the merge with the runner work ----

def start_watch(home: Path, argv: list[str], cwd: str | Path | None = None, *,
                name: str | None = None, tags: list[str] | tuple = (),
                stop_on: str | None = None) -> Launched:
    """`moedesk watch -- CMD ARGS...` (and the TUI's dialog): run any command as a detached,
    supervised external run (runner/external.py `watch`); RunError on a bad command."""
    from moedesk.runner import external

    argv = [str(a) for a in argv or []]
    if not argv:
        raise RunError("watch: give the command after --, e.g. moedesk watch -- python train.py")
    folder = Path(cwd or os.getcwd()).expanduser().resolve()
    if not folder.is_dir():
        raise RunError(f"watch: the working directory {folder} does not exist")
    program = argv[0]
    found = (folder / program) if os.sep in program else shutil.which(program)
    if not found or not os.access(found, os.X_OK) or Path(found).is_dir():
        raise RunError(f"watch: {program!r} is not an executable command"
                       + ("" if os.sep in program else " on PATH"))
    if stop_on is not None and stop_on not in STOP_ON:
        raise RunError(f"watch: stop_on got {stop_on!r}; allowed values: {', '.join(STOP_ON)}")
    config = external.settings(name=name, stop_on=stop_on or "critical", command=argv,
                               cwd=str(folder), program=external.command_stem(argv))
    db = connect_writer(db_path(home))
    try:
        run_id, final_name = store_external.create_external_run(
            db.conn, home=home, config=config, default_stem=config["external"]["program"],
            stop_on=config["health"]["stop_on"], tags=list(tags))
    finally:
        db.close()
    return Launched(run_id, final_name, external.spawn(home, run_id))


__all__ = ["RunError", "Launched", "start_run", "stop_run", "resume_run", "fork_run",
           "get_run", "spawn_supervisor", "reconcile_crashed", "start_watch", "StoreError"]
