"""The runner's Python API: start, resume and fork runs. CLI and TUI both call it.

Starting a run creates its row (queued) and spawns a detached supervisor
(`start_new_session=True`), so the run outlives the terminal, the TUI and an SSH
disconnect; the launcher records the supervisor's pid at once, so a supervisor that dies
before starting the trainer reads as `failed` within a poll. Every entry point first
writes down what it finds (`Reader.record_gone`: crashed and failed runs) and refuses to
write into a damaged store. `stopping.py` waits for a stop to take effect. No torch here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import psutil

from moedesk.health.thresholds import STOP_ON
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
from moedesk.store import external as store_external
from moedesk.store import runs as store_runs
from moedesk.store.db import check_writable
from moedesk.store.reads import RunInfo


class RunError(Exception):
    """A run operation that cannot be done; the message says why and what to do."""


@dataclass
class Launched:
    run_id: int
    name: str
    supervisor_pid: int


class Resumed(NamedTuple):
    info: RunInfo  # the run as it was before the resume
    step: int  # the checkpoint step it continues from
    gap: tuple[int, int] | None  # steps no checkpoint could restore (recorded in `resumes`)


def spawn_supervisor(home: Path, run_id: int, resume: str | None = None,
                     stop_at: int | None = None) -> int:
    """Start the run's detached supervisor and record its pid and start time."""
    folder = run_dir(home, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "moedesk.runner.supervise", "--home", str(home),
           "--run-id", str(run_id)]
    if resume:
        cmd += ["--resume", resume]
    if stop_at is not None:
        cmd += ["--stop-at", str(stop_at)]
    return spawn_detached(home, run_id, cmd)


def spawn_detached(home: Path, run_id: int, cmd: list[str]) -> int:
    """Start `cmd` as the run's detached supervisor (its own session, output to
    supervisor.log) and record its pid and start time."""
    folder = run_dir(home, run_id)
    with open(supervisor_log(folder), "a") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, close_fds=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        started = psutil.Process(proc.pid).create_time()
    except psutil.Error:
        started = None  # already gone: the reader sees a dead pid and calls the run failed
    db = connect_writer(db_path(home))
    try:
        store_runs.record_spawned(db.conn, run_id, proc.pid, started)
    finally:
        db.close()
    return proc.pid


def _writer(home: Path):
    """A writer on a store that passes its quick check (StoreDamaged otherwise)."""
    db = connect_writer(db_path(home))
    try:
        check_writable(db, db_path(home))
    except StoreError:
        db.close()
        raise
    return db


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
    db = _writer(home)
    try:
        run_id, final_name = store_runs.create_run(
            db.conn, config=profile_to_dict(profile), profile_path=profile.path, home=home,
            name=name, parent_id=parent_ids[0], parent_step=parent_ids[1], stop_on=stop_on)
    finally:
        db.close()
    if init_from is not None:  # before the supervisor exists, so the trainer finds it
        from moedesk.runner.init_from import write_init_request

        write_init_request(run_dir(home, run_id), *init_from)
    try:
        pid = spawn_supervisor(home, run_id, resume=parent[2] if parent else None,
                               stop_at=stop_at)
    except (OSError, StoreError) as exc:
        _record_failed_start(home, run_id, exc)
        raise RunError(f"run {run_id} ({final_name}) could not start its supervisor: {exc}"
                       " (recorded as failed)") from None
    return Launched(run_id, final_name, pid)


def _record_failed_start(home: Path, run_id: int, exc: Exception) -> None:
    try:
        db = connect_writer(db_path(home))
        try:
            store_runs.finish_run(db.conn, run_id, "failed", None,
                                  f"the supervisor could not be started: {exc}")
        finally:
            db.close()
    except StoreError:
        pass  # readers call it failed after the grace period anyway


def get_run(home: Path, ref: str | int) -> RunInfo:
    """A run by id or name, after recording what its supervisor's absence means."""
    with open_reader(home) as reader:
        return reader.run(ref)


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


def _extend_hint(info: RunInfo) -> str:
    return (f"A run's length is part of its learning-rate schedule (warmup, then decay over "
            f"train.steps = {info.total_steps}), so a resume never lengthens it. To train on"
            f" from its weights, fork it into a new run with a longer schedule: `moedesk run"
            f" {info.row.get('profile_path') or 'PROFILE'} --from {info.id}@{info.last_step}"
            f" --set train.steps=N`")


def plan_resume(info: RunInfo, step: int | str | None, stop_at: int | None
                ) -> tuple[CheckpointInfo, tuple[int, int] | None]:
    """Which checkpoint a resume continues from, and the steps it cannot restore.

    Without `step`: the newest checkpoint the stored rows reach; when every checkpoint is
    newer than them (steps were truly lost), a RunError naming the missing steps: the user
    accepts the gap with `--at`. With `step`: that checkpoint, gap and all."""
    total = info.total_steps or info.config["train"]["steps"]
    if stop_at is not None and stop_at > total:
        raise RunError(f"--steps {stop_at} is past run {info.id}'s train.steps = {total}."
                       f" {_extend_hint(info)}")
    if step is None and info.status == "completed" and info.last_step >= total:
        raise RunError(f"run {info.id} ({info.name}) completed all {total} steps: there is"
                       f" nothing to resume. {_extend_hint(info)}. To redo its end, resume"
                       " from an earlier checkpoint with --at STEP")
    ckpt = checkpoint_for(info, step, at_most=info.last_step)
    gap = (info.last_step + 1, ckpt.step) if ckpt.step > info.last_step else None
    if gap and step is None:
        raise RunError(
            f"the stored rows of run {info.id} ({info.name}) end at step {info.last_step},"
            f" but its oldest checkpoint is at step {ckpt.step}: steps {gap[0]}..{gap[1]}"
            " were never stored and no checkpoint can restore them. Resume anyway with"
            f" --at {ckpt.step} (the gap is recorded in `resumes`)")
    if stop_at is not None and stop_at <= ckpt.step:
        raise RunError(f"--steps {stop_at} is not after the checkpoint step {ckpt.step}:"
                       " a resume trains at least one step (pick a larger --steps, or an"
                       " earlier checkpoint with --at)")
    return ckpt, gap


def resume(home: Path, ref: str | int, step: int | str | None = None,
           stop_at: int | None = None) -> Resumed:
    """Continue a run in place from a checkpoint; rows after that step are dropped first.

    One writer per run: the requeue is a compare-and-set (`claim_resume`), so of two
    resumes at once one starts the run and the other gets a RunError."""
    info = get_run(home, ref)
    if info.status in store_runs.ACTIVE:
        raise RunError(f"run {info.id} ({info.name}) is still {info.status}; stop it first")
    if info.kind == store_external.EXTERNAL_KIND:
        raise RunError(f"run {info.id} ({info.name}) is an external run: moedesk did not start "
                       "its training and cannot resume it; start your script again from one of "
                       f"its checkpoints (moedesk show {info.id})")
    ckpt, gap = plan_resume(info, step, stop_at)
    db = _writer(home)
    try:
        claimed = store_runs.claim_resume(db.conn, info.id, ckpt.step, str(ckpt.path), gap)
    finally:
        db.close()
    if not claimed:
        raise RunError(f"run {info.id} ({info.name}) was just started by another command (a"
                       " second resume?); a run has one supervisor at a time: see `moedesk"
                       f" show {info.id}`")
    clear_stop_request(Path(info.row["run_dir"]))
    spawn_supervisor(home, info.id, resume=str(ckpt.path), stop_at=stop_at)
    return Resumed(info, ckpt.step, gap)


def resume_run(home: Path, ref: str | int, step: int | str | None = None,
               stop_at: int | None = None) -> tuple[RunInfo, int]:
    """`resume`, as (run, checkpoint step) (the TUI's call)."""
    done = resume(home, ref, step, stop_at)
    return done.info, done.step


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


def reconcile(home: Path) -> list:
    """Record every run whose supervisor is gone (crashed, or failed before it started
    the trainer); returns what was recorded (`store.liveness.Recorded`)."""
    if not db_path(home).exists():
        return []
    with open_reader(home, record=False) as reader:
        return reader.record_gone()


def stop_run(home: Path, ref: str | int, kill: bool = False) -> RunInfo:
    """Ask a run to stop: graceful (finish the step, checkpoint, exit) or, with kill,
    SIGKILL now. Returns at once (the TUI's call); `stopping.stop_and_wait` also waits
    for the supervisor's acknowledgement and the end (the CLI's)."""
    info = get_run(home, ref)
    request_stop(info, kill)
    return info


def request_stop(info: RunInfo, kill: bool) -> dict:
    """Write the stop request, then signal the trainer; RunError if the run is not active."""
    if info.status not in store_runs.ACTIVE:
        raise RunError(f"run {info.id} ({info.name}) is {info.status}; only queued, running or"
                       " unresponsive runs can be stopped")
    request = write_stop_request(Path(info.row["run_dir"]), "kill" if kill else "graceful")
    if info.kind != store_external.EXTERNAL_KIND:
        # an external run's supervisor passes the stop on itself: only it knows whether
        # the process stops on its own (graceful_stop) and whether it leads a group
        signal_trainer(info.row["trainer_pid"], stop_signal(kill))
    return request



# ---- watched commands: `moedesk watch -- CMD` and the TUI's watch dialog ------------------

def check_watch(argv: list[str], cwd: str | Path | None = None) -> tuple[list[str], Path]:
    """The command and the folder it runs in, or a RunError saying what is wrong (no
    command, a folder that does not exist, a program that is not an executable)."""
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
    return argv, folder


def start_watch(home: Path, argv: list[str], cwd: str | Path | None = None, *,
                name: str | None = None, tags: list[str] | tuple = (),
                stop_on: str | None = None) -> Launched:
    """`moedesk watch -- CMD ARGS...` (and the TUI's dialog): run any command as a detached,
    supervised external run (runner/external.py `watch`); RunError on a bad command."""
    from moedesk.runner import external

    argv, folder = check_watch(argv, cwd)
    if stop_on is not None and stop_on not in STOP_ON:
        raise RunError(f"watch: stop_on got {stop_on!r}; allowed values: {', '.join(STOP_ON)}")
    config = external.settings(name=name, stop_on=stop_on or "critical", command=argv,
                               cwd=str(folder), program=external.command_stem(argv))
    db = _writer(home)
    try:
        run_id, final_name = store_external.create_external_run(
            db.conn, home=home, config=config, default_stem=config["external"]["program"],
            stop_on=config["health"]["stop_on"], tags=list(tags))
    finally:
        db.close()
    try:
        pid = external.spawn(home, run_id)
    except (OSError, StoreError) as exc:
        _record_failed_start(home, run_id, exc)
        raise RunError(f"run {run_id} ({final_name}) could not start its supervisor: {exc}"
                       " (recorded as failed)") from None
    return Launched(run_id, final_name, pid)


__all__ = ["RunError", "Launched", "Resumed", "start_run", "stop_run", "request_stop",
           "resume", "resume_run", "plan_resume", "fork_run", "get_run", "checkpoint_for",
           "checkpoint_of", "spawn_supervisor", "check_watch", "start_watch",
           "reconcile", "StoreError"]
