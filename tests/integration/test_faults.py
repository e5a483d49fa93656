"""Runs that survive faults: SIGKILLs at random moments, dead supervisors, a killed CLI,
damaged checkpoints and a full disk. Through the real CLI and supervisor, tiny runs.

After every kill: the run ends crashed, the database passes `PRAGMA integrity_check`,
rows committed before the kill are still there, every listed checkpoint verifies, and
the run resumes from its last good checkpoint, re-logging the lost steps identically.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from moedesk.runner.checkpoints import CheckpointError, find_checkpoint, list_checkpoints, verify_checkpoint
from moedesk.store import Reader, StoreError
from tests.conftest import REPO, moedesk, wait_for

TINY = "profiles/tiny_dense.toml"
# a checkpoint every 2 steps makes kills mid-checkpoint likely; keeping 4 covers the few
# steps a killed supervisor may not have committed yet
LONG = ["--set", "train.steps=100000", "--set", "train.threads=1", "--set",
        "checkpoint.every=2", "--set", "checkpoint.keep=4"]


def reader(home: Path) -> Reader:
    return Reader(home / "moedesk.db")


def gone(pid: int | None) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, TypeError, ValueError):
        return True


def integrity_ok(home: Path) -> bool:
    conn = sqlite3.connect(f"file:{home / 'moedesk.db'}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def losses(home: Path, run_id: int = 1) -> dict[int, float]:
    return dict(reader(home).series(run_id, "train/loss"))


def check_after_crash(home: Path, committed: dict[int, float]) -> None:
    """The invariants every kill must leave behind."""
    assert integrity_ok(home)
    r = reader(home)
    info = r.run(1)
    assert info.status == "crashed", (info.status, info.row["error"])
    now = losses(home)
    assert all(now.get(step) == value for step, value in committed.items())  # nothing lost
    assert sorted(now) == list(range(1, max(now) + 1))  # no gap, no overlap
    dupes = r.query("SELECT name, step FROM metrics WHERE run_id = 1 GROUP BY name, step"
                    " HAVING COUNT(*) > 1")[1]
    assert dupes == []
    listed = list_checkpoints(Path(info.row["run_dir"]))
    assert listed, "a crash must leave the last good checkpoint"
    for ckpt in listed:
        verify_checkpoint(ckpt)  # raises CheckpointError on a half-written file


def kill_at_random(home: Path, rng: random.Random, target: str) -> dict[int, float]:
    """Wait for fresh progress, SIGKILL the trainer or the supervisor at a random moment
    (mid-step, mid-checkpoint, mid-ingest), and return the rows committed just before."""
    start = reader(home).run(1).last_step

    def progressed() -> bool:
        info = reader(home).run(1)
        assert info.status in ("queued", "running"), (info.status, info.row["error"])
        return info.status == "running" and info.last_step > start + 2

    wait_for(progressed, timeout=120, interval=0.05, what="the resumed run to make progress")
    time.sleep(rng.uniform(0.0, 0.6))
    committed = losses(home)
    row = reader(home).run(1).row
    os.kill(row["trainer_pid" if target == "trainer" else "supervisor_pid"], signal.SIGKILL)
    wait_for(lambda: gone(row["trainer_pid"]) and gone(row["supervisor_pid"]), timeout=60,
             what="trainer and supervisor to exit")
    wait_for(lambda: reader(home).run(1).status == "crashed", timeout=30, what="crashed")
    return committed


@pytest.mark.slow
def test_random_sigkills_leave_a_consistent_store_and_an_exact_resume(home):
    rng = random.Random(1234)
    moedesk("run", TINY, *LONG, "--detach", home=home, check=True)
    wait_for(lambda: list_checkpoints(home / "1"), timeout=120, what="a first checkpoint")
    kills = ["trainer"] * 7 + ["supervisor"] * 3  # reliability.md ran 40; CI time
    rng.shuffle(kills)
    lost: dict[int, float] = {}
    for target in kills:
        committed = kill_at_random(home, rng, target)
        check_after_crash(home, committed)
        # steps past the checkpoint are dropped on resume and must come back identical
        now = losses(home)
        assert all(now[s] == v for s, v in lost.items() if s in now), "resume was not exact"
        # a supervisor killed mid-batch can leave a checkpoint newer than the stored rows:
        # resume takes the newest one the curves reach, so they get no gap
        reach = [c.step for c in list_checkpoints(home / "1") if c.step <= max(now)]
        assert reach, "every kept checkpoint is newer than the stored rows"
        newest = max(reach)
        lost = {s: v for s, v in now.items() if s > newest}
        resumed = moedesk("resume", "1", "--detach", home=home)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert f"from step {newest}" in resumed.stdout
    # the last segment runs to a fixed step and ends normally
    last = reader(home).run(1).last_step
    moedesk("stop", "1", home=home, check=True)
    info = wait_for(lambda: (i := reader(home).run(1)).status not in ("queued", "running") and i,
                    timeout=60, what="stop")
    assert info.status == "stopped" and info.last_step >= last
    assert len(reader(home).resumes(1)) == len(kills)
    assert integrity_ok(home)


@pytest.mark.slow
def test_supervisor_killed_shows_crashed_to_readers(home):
    moedesk("run", TINY, *LONG, "--detach", home=home, check=True)
    wait_for(lambda: reader(home).run(1).last_step >= 3, timeout=120, what="steps")
    row = reader(home).run(1).row
    os.kill(row["supervisor_pid"], signal.SIGKILL)
    wait_for(lambda: gone(row["supervisor_pid"]), timeout=30, what="supervisor gone")
    # nobody wrote "crashed" (the supervisor died first), yet every reader shows it
    raw = reader(home).query("SELECT status FROM runs WHERE id = 1")[1][0][0]
    assert raw == "running" and reader(home).run(1).status == "crashed"
    assert "crashed" in moedesk("runs", home=home, check=True).stdout
    # ...and the command wrote it down for SQL users, with the reason
    status, error = reader(home).query("SELECT status, error FROM runs WHERE id = 1")[1][0]
    assert status == "crashed" and "supervisor" in error
    assert "crashed" in moedesk("show", "1", home=home, check=True).stdout
    # without its supervisor the trainer cannot report: it dies at its next event
    wait_for(lambda: gone(row["trainer_pid"]), timeout=30, what="orphaned trainer to exit")
    resumed = moedesk("resume", "1", "--steps", str(reader(home).run(1).last_step + 4), home=home)
    assert resumed.returncode == 4, resumed.stdout + resumed.stderr
    assert integrity_ok(home)


def started(home: Path) -> bool:
    try:  # the first run creates the database: its schema may not be there yet
        return reader(home).run(1).last_step >= 2
    except (sqlite3.OperationalError, StoreError):
        return False


@pytest.mark.slow
def test_killing_the_launching_cli_does_not_stop_the_run(home):
    cli = subprocess.Popen([sys.executable, "-m", "moedesk", "run", TINY, "--set",
                            "train.steps=40", "--set", "train.threads=1", "--home", str(home)],
                           cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: started(home), timeout=120, what="the run to start")
        cli.send_signal(signal.SIGHUP)  # the terminal went away...
        cli.kill()  # ...and took the CLI with it
        cli.wait(timeout=10)
    finally:
        if cli.poll() is None:
            cli.kill()
    info = wait_for(lambda: (i := reader(home).run(1)).status not in ("queued", "running") and i,
                    timeout=180, what="the run to finish on its own")
    assert info.status == "completed" and info.last_step == 40


@pytest.mark.slow
def test_damaged_checkpoints_are_named_not_loaded(home):
    moedesk("run", TINY, "--set", "train.steps=20", "--set", "checkpoint.every=10", "--set",
            "checkpoint.keep=0", "--set", "train.threads=1", home=home, check=True)
    folder = home / "1" / "checkpoints"
    newest = folder / "step_00000020.pt"
    original = newest.read_bytes()
    # a crash mid-write leaves a temporary file and maybe a file without its sidecar
    (folder / "step_00000030.pt.tmp").write_bytes(original[:1000])
    (folder / "step_00000030.pt").write_bytes(original[:5000])
    assert [c.step for c in list_checkpoints(home / "1")] == [10, 20]

    # the run completed: a plain resume has nothing to do (newuser.md 6), so name the step
    assert "nothing to resume" in moedesk("resume", "1", home=home).stderr
    # same size, flipped bytes: the checksum catches it
    newest.write_bytes(original[:4096] + bytes(b ^ 0xFF for b in original[4096:4104])
                       + original[4104:])
    result = moedesk("resume", "1", "--at", "20", home=home)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(newest) in result.stderr.replace("\n", "") and "corrupt" in result.stderr
    # cut short: named too, never skipped silently, with the way out
    newest.write_bytes(original[: len(original) // 2])
    result = moedesk("resume", "1", "--at", "20", home=home)
    text = result.stderr.replace("\n", "")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(newest) in text and "truncated" in text and "--at 10" in text
    assert reader(home).run(1).status == "completed"  # a refused resume changes nothing
    result = moedesk("resume", "1", "--at", "10", "--steps", "14", home=home)
    assert result.returncode == 4, result.stdout + result.stderr
    assert reader(home).run(1).last_step == 14
    assert not list(folder.glob("*.tmp"))  # the supervisor's start removed the leftover


@pytest.mark.slow
def test_full_disk_while_checkpointing_fails_clearly_and_keeps_the_previous_one(home):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    folder = home / "1" / "checkpoints"
    folder.mkdir(parents=True)
    # one tiny-dense checkpoint (~1.4 MB) fits in 2 MiB, a second does not
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        result = moedesk("run", TINY, "--set", "train.steps=30", "--set", "checkpoint.every=5",
                         "--set", "checkpoint.keep=3", "--set", "train.threads=1", home=home)
        assert result.returncode == 1, result.stdout + result.stderr
        info = reader(home).run(1)
        assert info.status == "failed" and info.last_step == 10
        assert "No space left on device" in info.row["error"]
        assert "step_00000010.pt" in info.row["error"]
        (kept,) = list_checkpoints(home / "1")
        assert kept.step == 5
        verify_checkpoint(kept)
        assert not list(folder.glob("*.tmp"))  # the failed write cleaned up after itself
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_resume_picks_a_checkpoint_the_stored_rows_reach(tmp_path):
    """A supervisor killed before committing can leave checkpoints newer than the rows."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for step in (4, 6, 8):
        data = bytes([step]) * 100
        (folder / f"step_{step:08d}.pt").write_bytes(data)
        (folder / f"step_{step:08d}.json").write_text(
            f'{{"step": {step}, "size": 100, "sha256": "{hashlib.sha256(data).hexdigest()}"}}')
    assert find_checkpoint(tmp_path).step == 8
    assert find_checkpoint(tmp_path, at_most=7).step == 6  # 7 and 8 are re-logged
    assert find_checkpoint(tmp_path, at_most=2).step == 4  # the smallest gap there is
    (folder / "step_00000006.pt").write_bytes(b"x" * 50)
    with pytest.raises(CheckpointError, match=r"step_00000006.pt is truncated.*--at 4"):
        find_checkpoint(tmp_path, at_most=7)
    assert find_checkpoint(tmp_path, step=4).step == 4
