"""Nothing lost, nothing stuck (issue 12), through the real CLI, supervisor and trainer:
real processes, real signals, a real lock held past the busy timeout, a real full tmpfs.

Each test is one defect of research/reliability.md: a double resume, a supervisor killed
between a checkpoint and its commit, steps truly gone, a crash nobody recorded, a run
stuck queued, a store that refuses writes, a frozen supervisor and its thaw, `--home`
before the command, housekeeping of checkpoint files, resuming a completed run.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from moedesk.runner.checkpoints import list_checkpoints
from moedesk.store import Reader
from tests.conftest import REPO, moedesk, wait_for

pytestmark = pytest.mark.slow

TINY = "profiles/tiny_dense.toml"
FAST = ["--set", "train.threads=1", "--set", "train.eval_every=0"]
LONG = ["--set", "train.steps=100000", *FAST, "--set", "checkpoint.every=5",
        "--set", "checkpoint.keep=1"]


def reader(home: Path) -> Reader:
    return Reader(home / "moedesk.db")


def sql(home: Path, query: str, args: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(f"file:{home / 'moedesk.db'}?mode=ro", uri=True)
    try:
        return conn.execute(query, args).fetchall()
    finally:
        conn.close()


def supervisor_pid(home: Path) -> int | None:
    try:  # the first run creates the store: its schema may not be there yet
        rows = sql(home, "SELECT supervisor_pid FROM runs")
    except sqlite3.OperationalError:
        return None
    return rows[0][0] if rows else None


def gone(pid: int | None) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, TypeError, ValueError):
        return True


def ended(home: Path, run_id: int = 1, timeout: float = 180):
    return wait_for(lambda: (i := reader(home).run(run_id)).status
                    not in ("queued", "running", "unresponsive") and i,
                    timeout=timeout, what=f"run {run_id} to end")


def duplicates(home: Path) -> list:
    return sql(home, "SELECT run_id, name, step, COUNT(*) FROM metrics"
                     " GROUP BY run_id, name, step HAVING COUNT(*) > 1")


def steps_of(home: Path, run_id: int = 1) -> list[int]:
    return [s for s, _ in reader(home).series(run_id, "train/loss")]


def crash_the_trainer(home: Path, at_least: int = 7) -> None:
    wait_for(lambda: reader(home).run(1).last_step >= at_least, what="steps")
    row = reader(home).run(1).row
    os.kill(row["trainer_pid"], signal.SIGKILL)
    wait_for(lambda: gone(row["supervisor_pid"]), what="the supervisor to record the crash")


def test_two_resumes_at_once_start_one_run_and_refuse_the_other(home):
    moedesk("run", TINY, *LONG, "--detach", home=home, check=True)
    crash_the_trainer(home)
    assert reader(home).run(1).status == "crashed"
    cmd = [sys.executable, "-m", "moedesk", "resume", "1", "--detach", "--home", str(home)]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    refusal = next(err for code, _, err in results if code == 2)
    assert "Traceback" not in refusal and ("still queued" in refusal or "another command"
                                           in refusal or "still running" in refusal), refusal
    wait_for(lambda: reader(home).run(1).last_step >= 20, what="the resumed run")
    moedesk("stop", "1", home=home, check=True)
    assert len(reader(home).resumes(1)) == 1
    assert duplicates(home) == []
    launches = (home / "1" / "train.log").read_text().count("--- moedesk supervisor")
    assert launches == 2  # the first start and one resume


def test_a_supervisor_killed_before_committing_a_checkpoint_leaves_no_gap(home):
    """keep=1: the trainer used to prune the checkpoint the store reached before the
    supervisor committed the newer one (research/reliability.md D3)."""
    moedesk("run", TINY, *LONG, "--detach", home=home, check=True)
    wait_for(lambda: reader(home).run(1).last_step >= 6, what="steps")
    row = reader(home).run(1).row
    os.kill(row["supervisor_pid"], signal.SIGSTOP)  # it cannot commit; the trainer goes on
    stored = reader(home).run(1).last_step
    try:
        wait_for(lambda: any(c.step > stored + 5 for c in list_checkpoints(home / "1")),
                 what="two checkpoints the store has not seen")
    finally:
        os.kill(row["supervisor_pid"], signal.SIGKILL)
    os.kill(row["trainer_pid"], signal.SIGKILL)
    wait_for(lambda: gone(row["trainer_pid"]) and gone(row["supervisor_pid"]), what="exit")
    stored = reader(home).run(1).last_step
    reach = [c.step for c in list_checkpoints(home / "1") if c.step <= stored]
    assert reach, "the checkpoint the stored rows reach was pruned"
    resumed = moedesk("resume", "1", "--detach", home=home)
    assert resumed.returncode == 0 and f"from step {max(reach)}" in resumed.stdout, resumed
    wait_for(lambda: reader(home).run(1).last_step >= stored + 8, what="the resumed run")
    moedesk("stop", "1", home=home, check=True)
    steps = steps_of(home)
    assert steps == list(range(1, max(steps) + 1))  # no gap
    assert reader(home).resumes(1)[0]["gap_from"] is None
    # the supervisor pruned after committing: one row, and its file, per kept checkpoint
    rows = reader(home).checkpoints(1)
    assert len(rows) == 1 and all(Path(c["path"]).exists() for c in rows)


def test_steps_truly_gone_are_named_and_recorded_not_hidden(home):
    moedesk("run", TINY, *LONG, "--detach", home=home, check=True)
    crash_the_trainer(home, at_least=12)
    stored = reader(home).run(1).last_step
    # the checkpoints the rows reach are lost (deleted by hand, a disk problem): only a
    # newer one is left, as after a supervisor died under an older moedesk
    ckpts = list_checkpoints(home / "1")
    newest = ckpts[-1]
    for c in ckpts[:-1]:
        c.path.unlink()
        c.path.with_suffix(".json").unlink()
    sql_exec(home, "UPDATE runs SET last_step = ? WHERE id = 1", (newest.step - 3,))
    sql_exec(home, "DELETE FROM metrics WHERE step > ?", (newest.step - 3,))
    stored = newest.step - 3
    refused = moedesk("resume", "1", home=home)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    text = refused.stderr.replace("\n", "")
    assert f"steps {stored + 1}..{newest.step} were never stored" in text
    assert f"--at {newest.step}" in text and reader(home).run(1).status == "crashed"
    accepted = moedesk("resume", "1", "--at", str(newest.step), "--steps",
                       str(newest.step + 3), home=home)
    assert accepted.returncode == 4, accepted.stdout + accepted.stderr
    assert f"steps {stored + 1}..{newest.step} are missing" in accepted.stderr
    (resume,) = reader(home).resumes(1)
    assert (resume["gap_from"], resume["gap_to"]) == (stored + 1, newest.step)


def sql_exec(home: Path, query: str, args: tuple = ()) -> None:
    conn = sqlite3.connect(home / "moedesk.db", isolation_level=None)
    try:
        conn.execute(query, args)
    finally:
        conn.close()


def test_a_crash_is_written_down_by_the_next_command(home):
    moedesk("run", TINY, *LONG, "--detach", home=home, check=True)
    wait_for(lambda: reader(home).run(1).last_step >= 3, what="steps")
    row = reader(home).run(1).row
    os.kill(row["supervisor_pid"], signal.SIGKILL)
    wait_for(lambda: gone(row["supervisor_pid"]), what="the supervisor to die")
    assert sql(home, "SELECT status FROM runs")[0][0] == "running"
    moedesk("alerts", home=home, check=True)  # any command that opens the store
    status, error, ended_at = sql(home, "SELECT status, error, ended_at FROM runs")[0]
    assert status == "crashed" and ended_at and f"supervisor (pid {row['supervisor_pid']})" \
        in error


def _claimed_supervisor(home: Path, run_id: int, timeout: float = 60) -> int:
    """The supervisor pid of `run_id` the moment it claims the run, polled every ~1 ms."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            rows = sql(home, "SELECT supervisor_pid FROM runs WHERE id = ?", (run_id,))
        except sqlite3.Error:  # the store is still being created
            rows = []
        if rows and rows[0][0] is not None:
            return rows[0][0]
        time.sleep(0.001)
    raise AssertionError(f"run {run_id}'s supervisor never claimed it")


def freeze_a_fresh_supervisor(home: Path) -> dict:
    """Start runs until one's supervisor is caught (SIGSTOP) before it starts the trainer.

    The store is polled while `moedesk run --detach` is still exiting, and the supervisor
    frozen as soon as it claims the run: waiting for the CLI to exit first left too short
    a window on a loaded machine (all five tries missed it under pytest-xdist)."""
    for attempt in range(1, 6):
        cli = subprocess.Popen([sys.executable, "-m", "moedesk", "run", TINY, "--set",
                                "train.steps=50", *FAST, "--detach", "--home", str(home)],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
        pid = _claimed_supervisor(home, attempt)
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            pid = None
        _, err = cli.communicate(timeout=120)
        assert cli.returncode == 0, err
        if pid is None:
            continue
        row = reader(home).run(attempt).row
        if row["trainer_pid"] is None:
            return row
        os.kill(pid, signal.SIGCONT)
    pytest.fail("no supervisor could be caught before it started its trainer")


def test_a_supervisor_dead_before_the_trainer_leaves_nothing_queued(home):
    row = freeze_a_fresh_supervisor(home)
    run_id = row["id"]
    os.kill(row["supervisor_pid"], signal.SIGKILL)
    wait_for(lambda: gone(row["supervisor_pid"]), what="the supervisor to die")
    listed = moedesk("runs", home=home, check=True).stdout
    assert any(line.split()[:1] == [str(run_id)] and "failed" in line
               for line in listed.splitlines()), listed
    status, error = sql(home, "SELECT status, error FROM runs WHERE id = ?", (run_id,))[0]
    assert status == "failed" and "exited before starting the trainer" in error
    stopped = moedesk("stop", str(run_id), home=home)
    assert stopped.returncode == 2 and "is failed" in stopped.stderr  # says what it is
    resumed = moedesk("resume", str(run_id), home=home)
    assert resumed.returncode == 2 and "no complete checkpoint" in resumed.stderr


def test_a_foreground_run_gives_up_within_seconds_when_its_supervisor_dies(home):
    cli = subprocess.Popen([sys.executable, "-m", "moedesk", "run", TINY, "--set",
                            "train.steps=100000", *FAST, "--home", str(home)], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pid = wait_for(lambda: (home / "moedesk.db").exists() and supervisor_pid(home),
                       what="a supervisor pid")
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        out, err = cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert time.monotonic() - killed < 10
    assert cli.returncode in (1, 3), out + err  # failed (before the trainer) or crashed
    assert "Traceback" not in err and "supervisor" in err


def hold_lock(path: Path, seconds: float) -> threading.Thread:
    ready = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None, timeout=60)
        conn.execute("BEGIN IMMEDIATE")
        ready.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=hold)
    thread.start()
    ready.wait()
    return thread


def test_a_lock_held_past_the_busy_timeout_loses_nothing(home):
    moedesk("run", TINY, "--set", "train.steps=60", *FAST, "--set", "checkpoint.every=10",
            "--set", "checkpoint.keep=1", "--detach", home=home, check=True)
    wait_for(lambda: reader(home).run(1).last_step >= 3, what="steps")
    hold_lock(home / "moedesk.db", 9.0).join()  # the supervisor's busy timeout is 5 s
    info = ended(home)
    assert info.status == "completed", info.row["error"]
    assert steps_of(home) == list(range(1, 61))
    alerts = [a for a in reader(home).alerts(1) if a["rule"] == "store_unwritable"]
    assert alerts and "database is locked" in alerts[0]["message"], reader(home).alerts(1)
    assert not (home / "1" / "spool.jsonl").exists()
    assert [c["step"] for c in reader(home).checkpoints(1)] == [60]


def test_a_store_unwritable_past_the_limit_stops_the_trainer_with_a_checkpoint(home,
                                                                                monkeypatch):
    monkeypatch.setenv("MOEDESK_STORE_OUTAGE_LIMIT_S", "4")
    moedesk("run", TINY, *LONG, "--detach", home=home, check=True)
    wait_for(lambda: reader(home).run(1).last_step >= 3, what="steps")
    hold_lock(home / "moedesk.db", 20.0).join()
    info = ended(home)
    assert info.status == "stopped" and "store was unwritable" in info.row["error"]
    steps = steps_of(home)
    assert steps == list(range(1, info.last_step + 1))  # everything spooled was replayed
    assert reader(home).checkpoints(1)[-1]["step"] == info.last_step


def test_a_full_disk_while_running_loses_nothing(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    home = tmp_path / "disk"
    home.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(home)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        # a run that outlasts the full disk on any machine (a fixed step count finished
        # inside the 6 s on a fast one, and its final checkpoint met the full disk)
        moedesk("run", TINY, "--set", "train.steps=1000000", *FAST, "--set",
                "checkpoint.every=0", "--detach", home=home, check=True)
        wait_for(lambda: reader(home).run(1).last_step >= 3, what="steps")
        filler = home / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=64"],
                       capture_output=True)
        time.sleep(6)  # the store and the spool both fail meanwhile
        filler.unlink()
        freed = reader(home).run(1).last_step
        wait_for(lambda: reader(home).run(1).last_step >= freed + 50, what="steps after")
        stop = moedesk("stop", "1", home=home)
        error = reader(home).run(1).row["error"] or ""  # its log lines less the progress
        assert stop.returncode == 0, [line for line in error.splitlines() if "Step " not in line]
        info = ended(home)
        assert info.status == "stopped", info.row["error"]
        assert steps_of(home) == list(range(1, info.last_step + 1))  # no step lost
        assert reader(home).checkpoints(1)[-1]["step"] == info.last_step
        assert any(a["rule"] == "store_unwritable" for a in reader(home).alerts(1))
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)


def test_a_frozen_supervisor_is_unresponsive_and_its_thaw_is_quiet(home):
    moedesk("run", TINY, *LONG, "--stop-on", "warning", "--set",
            "health.stalled.min_seconds=8", "--detach", home=home, check=True)
    wait_for(lambda: reader(home).run(1).last_step >= 25, what="a usual step time")
    row = reader(home).run(1).row
    os.kill(row["supervisor_pid"], signal.SIGSTOP)
    try:
        wait_for(lambda: "unresponsive" in moedesk("runs", home=home).stdout, timeout=40,
                 interval=1, what="runs to show unresponsive")
        stop = moedesk("stop", "1", home=home)
        assert stop.returncode == 1 and "did not acknowledge" in stop.stderr, stop
    finally:
        os.kill(row["supervisor_pid"], signal.SIGCONT)
    info = ended(home)
    assert info.status == "stopped"  # by the request, which it saw after the thaw
    assert "health rule" not in (info.row["error"] or "")
    stalls = [a for a in reader(home).alerts(1) if a["rule"] == "stalled"]
    assert len(stalls) <= 1, stalls


def test_root_home_option_is_honoured_by_commands(home, tmp_path):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    cmd = [sys.executable, "-m", "moedesk", "--home", str(home), "run", str(REPO / TINY),
           "--set", "train.steps=12", *FAST]
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (home / "moedesk.db").exists() and not (cwd / "runs").exists()
    listed = subprocess.run([sys.executable, "-m", "moedesk", "--home", str(home), "runs"],
                            cwd=cwd, capture_output=True, text=True)
    assert "completed" in listed.stdout


def test_stop_reports_the_step_its_checkpoint_was_written_at(home):
    moedesk("run", TINY, *LONG, "--detach", home=home, check=True)
    wait_for(lambda: reader(home).run(1).last_step >= 3, what="steps")
    stop = moedesk("stop", "1", home=home)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    info = reader(home).run(1)
    ckpt = reader(home).checkpoints(1)[-1]
    assert info.status == "stopped" and ckpt["step"] == info.last_step
    assert f"stopped at step {info.last_step}; checkpoint written at step {ckpt['step']}" \
        in stop.stdout.replace("\n", " ")
    again = moedesk("stop", "1", home=home)
    assert again.returncode == 2 and "is stopped" in again.stderr


def test_resuming_a_completed_run_refuses_clearly_and_changes_nothing(home):
    moedesk("run", TINY, "--set", "train.steps=10", *FAST, "--set", "checkpoint.every=5",
            "--set", "checkpoint.keep=0", home=home, check=True)
    before = sql(home, "SELECT * FROM metrics ORDER BY rowid")
    for args, expect in ((["resume", "1"], "completed all 10 steps"),
                         (["resume", "1", "--steps", "20"], "--steps 20 is past"),
                         (["resume", "1", "--at", "5", "--steps", "5"], "not after the"
                                                                        " checkpoint step 5")):
        result = moedesk(*args, home=home)
        assert result.returncode == 2 and expect in result.stderr.replace("\n", " "), result
        assert "Traceback" not in result.stderr
    assert "--from 1@10 --set train.steps=N" in moedesk("resume", "1", home=home).stderr \
        .replace("\n", "")
    assert sql(home, "SELECT * FROM metrics ORDER BY rowid") == before
    assert reader(home).resumes(1) == [] and reader(home).run(1).status == "completed"


def test_left_over_checkpoint_files_and_rows_are_cleaned_at_the_next_start(home):
    stopped = moedesk("run", TINY, "--set", "train.steps=20", *FAST, "--set",
                      "checkpoint.every=5", "--set", "checkpoint.keep=0", "--stop-at", "10",
                      home=home)
    assert stopped.returncode == 4, stopped.stdout + stopped.stderr
    folder = home / "1" / "checkpoints"
    (folder / "step_00000007.pt.tmp").write_bytes(b"half")  # a kill mid-write
    (folder / "step_00000005.pt").unlink()  # a file gone behind the store's back
    (folder / "step_00000005.json").unlink()
    assert [c["step"] for c in reader(home).checkpoints(1)] == [5, 10]
    resumed = moedesk("resume", "1", "--steps", "12", home=home)
    assert resumed.returncode == 4 and "from step 10" in resumed.stdout, resumed
    assert not list(folder.glob("*.tmp"))
    rows = reader(home).checkpoints(1)
    assert [c["step"] for c in rows] == [10, 12] and all(Path(c["path"]).exists() for c in rows)
