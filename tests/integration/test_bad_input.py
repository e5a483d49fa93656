"""Every bad input of the reliability report is a clear error (issue 12, item 8).

One table: the command, the setup that makes its input bad, the expected exit code and
message; each case also checks that no traceback was printed and that nothing appeared:
no file in the home (beyond what the setup made) and no new row in any table. Cases that
need a mount (a read-only home, a full disk, a read-only copy) run as root and skip
otherwise. Then the cases whose point is elsewhere: a runaway query and Ctrl-C, negative
token ids, a run named `[/]`.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from moedesk.cli.query import EXIT_INTERRUPTED
from moedesk.profiles import profile_to_dict, validate_data
from moedesk.store import connect_writer
from moedesk.store import runs as store_runs
from tests.conftest import PROFILES, REPO, moedesk, wait_for

pytestmark = pytest.mark.slow

TINY = str(PROFILES / "tiny_dense.toml")
DEEP = "[" * 3000 + "]" * 3000


def seeded(home: Path) -> None:
    """A store with one ended run, so run references have something to miss."""
    db = connect_writer(home / "moedesk.db")
    config = profile_to_dict(validate_data({"name": "t", "kind": "dense", "seed": 1}))
    run_id = store_runs.create_run(db.conn, config=config, profile_path="t.toml",
                                   home=home).run_id
    store_runs.finish_run(db.conn, run_id, "completed", 0, None)
    db.close()


def garbage_store(home: Path) -> None:
    (home / "moedesk.db").write_bytes(os.urandom(64 * 1024))


def mounted(where: Path, options: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")


@dataclass
class Case:
    id: str
    args: list[str]  # "{home}" and "{tmp}" are filled in
    code: int
    message: str  # in stderr, with "{home}"/"{tmp}" filled in
    setup: Callable[[Path, Path], None] | None = None  # (home, tmp)
    home_flag: bool = True  # pass --home {home}


def write(name: str, text: str) -> Callable[[Path, Path], None]:
    return lambda home, tmp: (tmp / name).write_text(text)


def fifo(home: Path, tmp: Path) -> None:
    os.mkfifo(tmp / "fifo.toml")


def file_home(home: Path, tmp: Path) -> None:
    (tmp / "plainfile").write_text("x")


def read_only_home(home: Path, tmp: Path) -> None:
    mounted(tmp / "ro", "ro,size=1m")


def tiny_disk(home: Path, tmp: Path) -> None:
    mounted(tmp / "full", "size=16k")


CASES = [
    Case("id-too-large", ["show", "99999999999999999999"], 2,
         "no run '99999999999999999999'", lambda h, t: seeded(h)),
    Case("id-superscript", ["show", "²"], 2, "no run '²'", lambda h, t: seeded(h)),
    Case("id-fullwidth", ["stop", "１"], 2, "no run '１'", lambda h, t: seeded(h)),
    Case("resume-id-too-large", ["resume", "99999999999999999999"], 2, "no run",
         lambda h, t: seeded(h)),
    Case("resume-at-superscript", ["resume", "1", "--at", "²"], 2,
         "use a step number or 'best'", lambda h, t: seeded(h)),
    Case("sample-at-superscript", ["sample", "1@²"], 2,
         "use a step number or 'best'", lambda h, t: seeded(h)),
    Case("alerts-id-superscript", ["alerts", "²"], 2, "no run '²'", lambda h, t: seeded(h)),
    Case("analysis-id-too-large", ["analysis", "99999999999999999999"], 2, "no run",
         lambda h, t: seeded(h)),
    Case("home-is-a-file", ["run", TINY, "--home", "{tmp}/plainfile"], 2,
         "cannot use {tmp}/plainfile as the data home: it is a file", file_home, False),
    Case("home-under-a-file", ["run", TINY, "--home", "{tmp}/plainfile/sub"], 2,
         "cannot create the data home {tmp}/plainfile/sub", file_home, False),
    Case("home-read-only", ["run", TINY, "--home", "{tmp}/ro/home"], 2,
         "cannot create the data home {tmp}/ro/home", read_only_home, False),
    Case("home-read-only-root", ["run", TINY, "--home", "{tmp}/ro"], 2,
         "cannot write in the data home {tmp}/ro", read_only_home, False),
    Case("disk-full-before-first-run", ["run", TINY, "--home", "{tmp}/full"], 2,
         "nothing was left behind", tiny_disk, False),
    Case("damaged-runs", ["runs"], 2, "the store at {home}/moedesk.db is damaged",
         lambda h, t: garbage_store(h)),
    Case("damaged-show", ["show", "1"], 2, "is damaged", lambda h, t: garbage_store(h)),
    Case("damaged-alerts", ["alerts"], 2, "is damaged", lambda h, t: garbage_store(h)),
    Case("damaged-query", ["query", "SELECT 1"], 2, "is damaged",
         lambda h, t: garbage_store(h)),
    Case("damaged-run", ["run", TINY], 2, "is damaged", lambda h, t: garbage_store(h)),
    Case("damaged-resume", ["resume", "1"], 2, "is damaged", lambda h, t: garbage_store(h)),
    Case("deep-toml-file", ["run", "{tmp}/deep.toml"], 2, "nested too deeply",
         write("deep.toml", f'name = "x"\nkind = "dense"\nx = {DEEP}\n')),
    Case("deep-toml-set", ["run", TINY, "--set", f"x={DEEP}"], 2, "nested too deeply"),
    Case("set-without-equals", ["run", TINY, "--set", "nokey"], 2,
         "must look like section.key=value"),
    Case("fifo-profile", ["run", "{tmp}/fifo.toml"], 2, "not a regular file", fifo),
    Case("dev-zero-profile", ["profiles", "validate", "/dev/zero"], 2, "not a regular file",
         home_flag=False),
    Case("huge-profile", ["run", "{tmp}/huge.toml"], 2, "larger than 1024 KB",
         write("huge.toml", "# x\n" * 400_000)),
]


def snapshot(home: Path, tmp: Path) -> tuple:
    files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*")
                   if not str(p).endswith(("-wal", "-shm", ".migrate.lock")))
    rows = {}
    db = home / "moedesk.db"
    if db.is_file():
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'"):
                rows[table] = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            conn.close()
        except sqlite3.DatabaseError:
            rows = {"damaged": db.read_bytes()}
    return files, rows


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_a_clear_error_with_no_side_effect(tmp_path, case):
    home = tmp_path / "home"
    home.mkdir()
    try:
        if case.setup:
            case.setup(home, tmp_path)
        before = snapshot(home, tmp_path)
        args = [a.format(home=home, tmp=tmp_path) for a in case.args]
        result = moedesk(*args, home=home if case.home_flag else None, timeout=60)
        err = result.stderr.replace("\n", "")
        assert result.returncode == case.code, (result.returncode, result.stdout, err)
        assert case.message.format(home=home, tmp=tmp_path) in err, err
        assert "Traceback" not in result.stderr + result.stdout
        assert snapshot(home, tmp_path) == before
    finally:
        for name in ("ro", "full"):
            if (tmp_path / name).is_mount():
                subprocess.run(["umount", "-l", str(tmp_path / name)], check=False)


def test_a_read_only_copy_of_a_store_can_be_read(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    seeded(home)
    if os.geteuid() != 0:
        pytest.skip("a read-only mount needs root")
    copy = tmp_path / "copy"
    mounted(copy, "size=4m")
    try:
        for path in home.iterdir():
            if path.is_file():
                (copy / path.name).write_bytes(path.read_bytes())
        subprocess.run(["mount", "-o", "remount,ro", str(copy)], check=True)
        result = moedesk("runs", home=copy)
        assert result.returncode == 0, result.stderr
        assert "t-1" in result.stdout and "completed" in result.stdout
    finally:
        subprocess.run(["umount", "-l", str(copy)], check=False)


def test_a_runaway_query_stops_at_ctrl_c(home):
    seeded(home)
    proc = subprocess.Popen([sys.executable, "-m", "moedesk", "query",
                             "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)"
                             " SELECT COUNT(*) FROM c", "--home", str(home)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = str(home / "moedesk.db")
    try:
        # the statement runs once the store is open (on a busy machine, seconds after start)
        wait_for(lambda: any(f.path == db for f in psutil.Process(proc.pid).open_files()),
                 timeout=60, interval=0.1, what="the query to open the store")
        time.sleep(1.0)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - sent < 5
    # 130, the shell's code for Ctrl-C (cli/query.py; tests/cli/test_query_cli.py agrees)
    assert proc.returncode == EXIT_INTERRUPTED and "interrupted" in err, (proc.returncode, err)
    assert "Traceback" not in err
    limit = moedesk("query", "SELECT 1", "--limit", "99999999999999999999", home=home)
    # out of range: refused with the range (cli/query.py), never an OverflowError
    assert limit.returncode == 2 and "must be between 1 and" in limit.stderr, limit.stderr
    assert "Traceback" not in limit.stderr


def test_negative_token_ids_fail_the_run_clearly(home, tmp_path):
    import numpy as np

    tokens = np.arange(4000, dtype=np.int64) % 50
    tokens[1234] = -3
    np.save(tmp_path / "tokens.npy", tokens)
    result = moedesk("run", TINY, "--set", "data.source=tokens", "--set",
                     f"data.path={tmp_path / 'tokens.npy'}", "--set", "train.steps=20",
                     "--set", "train.threads=1", home=home)
    assert result.returncode == 1, result.stdout + result.stderr
    log = (home / "1" / "train.log").read_text()
    assert "holds a negative id (-3)" in log and "Traceback" not in log
    assert "holds a negative id (-3)" in result.stderr


def test_a_run_named_with_markup_works_everywhere(home):
    started = moedesk("run", TINY, "--name", "[/]", "--set", "train.steps=200000",
                      "--set", "train.threads=1", "--detach", home=home)
    assert started.returncode == 0 and "started run 1 ([/])" in started.stdout, started
    wait_for(lambda: "running" in moedesk("runs", home=home).stdout, what="running")
    for args in (["runs"], ["show", "1"], ["show", "[/]"]):
        result = moedesk(*args, home=home)
        assert result.returncode == 0 and "[/]" in result.stdout, (args, result.stderr)
    stopped = moedesk("stop", "[/]", home=home)
    assert stopped.returncode == 0 and "run 1 ([/]) stopped at step" in stopped.stdout, stopped
    resumed = moedesk("resume", "[/]", "--detach", home=home)
    assert resumed.returncode == 0 and "resuming run 1 ([/])" in resumed.stdout, resumed
    moedesk("stop", "1", home=home, check=True)
