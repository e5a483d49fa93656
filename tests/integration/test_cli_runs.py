"""Real tiny trainings through the real CLI: complete, stop, crash, and four at once."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time

import pytest

from moedesk.store import Reader
from tests.conftest import moedesk, wait_for

pytestmark = pytest.mark.slow  # every test here starts real processes

TINY = "profiles/tiny_dense.toml"
ONE_THREAD = ["--set", "train.threads=1"]


def reader(home):
    return Reader(home / "moedesk.db")


def test_completed_run_has_rows_and_a_checkpoint(home):
    result = moedesk("run", TINY, "--set", "train.steps=60", "--set", "checkpoint.every=30",
                     home=home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "completed" in result.stdout
    r = reader(home)
    (info,) = r.runs()
    assert info.status == "completed" and info.last_step == 60 and info.row["exit_code"] == 0
    assert [s for s, _ in r.series(info.id, "train/loss")] == list(range(1, 61))
    names = set(r.latest_metrics(info.id))
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "val/loss",
            "val/ppl", "sys/step_s", "sys/rss_mb"} <= names
    ckpts = r.checkpoints(info.id)
    assert [c["step"] for c in ckpts] == [30, 60]
    assert all(os.path.getsize(c["path"]) == c["size"] for c in ckpts)
    assert info.row["params_total"] > 0


def test_graceful_stop_mid_run_checkpoints_and_ends_stopped(home):
    started = moedesk("run", TINY, "--set", "train.steps=1000000", "--detach", *ONE_THREAD,
                      home=home, check=True)
    assert "started run 1" in started.stdout
    wait_for(lambda: reader(home).run(1).last_step >= 5, what="steps")
    moedesk("stop", "1", home=home, check=True)
    info = wait_for(lambda: (i := reader(home).run(1)).status != "running" and i, what="stop")
    assert info.status == "stopped" and info.row["exit_code"] == 0
    ckpts = reader(home).checkpoints(1)
    assert ckpts and ckpts[-1]["step"] == info.last_step < 1000000


def test_trainer_killed_with_sigkill_ends_crashed(home):
    moedesk("run", TINY, "--set", "train.steps=1000000", "--detach", *ONE_THREAD, home=home,
            check=True)
    wait_for(lambda: reader(home).run(1).last_step >= 3, what="steps")
    os.kill(reader(home).run(1).row["trainer_pid"], signal.SIGKILL)
    info = wait_for(lambda: (i := reader(home).run(1)).status != "running" and i, what="end")
    assert info.status == "crashed" and info.row["exit_code"] == -9
    assert "SIGKILL" in info.row["error"]
    shown = moedesk("show", "1", home=home)
    assert "crashed" in shown.stdout


def test_bad_profile_is_a_clear_error_and_creates_no_run(home, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nkind = "dense"\nseed = 1\n[train]\nlr = "high"\n')
    result = moedesk("run", str(bad), home=home)
    assert result.returncode == 2
    assert f"{bad}: train.lr: got 'high'; must be a number" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (home / "moedesk.db").exists()
    result = moedesk("run", TINY, "--set", "model.n_heads=3", home=home)
    assert result.returncode == 2 and "model.dim: got 64; must be divisible" in result.stderr


def test_four_runs_at_once_with_a_polling_reader_lose_nothing(home):
    steps = 40
    for _ in range(4):
        moedesk("run", TINY, "--set", f"train.steps={steps}", "--set", "train.eval_every=20",
                "--detach", *ONE_THREAD, home=home, check=True)
    errors, seen = [], {}
    done = threading.Event()

    def poll():
        r = reader(home)
        cursors = {}
        while not done.is_set():
            try:
                for info in r.runs():
                    rows, cursors[info.id] = r.metrics_since(info.id, cursors.get(info.id, 0))
                    seen[info.id] = seen.get(info.id, 0) + len(rows)
            except sqlite3.OperationalError as exc:
                errors.append(str(exc))
            time.sleep(0.05)

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        wait_for(lambda: all(i.status not in ("queued", "running") for i in reader(home).runs())
                 and len(reader(home).runs()) == 4, timeout=300, what="four runs")
    finally:
        done.set()
        thread.join()
    assert errors == []
    r = reader(home)
    for info in r.runs():
        assert info.status == "completed", info.row["error"]
        assert [s for s, _ in r.series(info.id, "train/loss")] == list(range(1, steps + 1))
        total = r.query("SELECT COUNT(*) FROM metrics WHERE run_id = ?", (info.id,))[1][0][0]
        assert seen[info.id] == total  # the incremental reader saw every row exactly once


def test_help_does_not_import_torch():
    """The one import-time boundary import-linter cannot see: `moedesk --help` (and so the
    TUI's start) loads no torch, although some commands import it when they run."""
    import subprocess
    import sys

    code = ("import sys, runpy; sys.argv=['moedesk','--help']\n"
            "try:\n    runpy.run_module('moedesk', run_name='__main__')\n"
            "except SystemExit: pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
