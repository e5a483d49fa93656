"""`moedesk watch -- CMD`: a detached supervised command, its log, stops of its process group,
its exit code, a moedesk.init inside joining the run, and a hung-up terminal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from moedesk.paths import train_log
from moedesk.runner import launch
from moedesk.store import Reader
from tests.conftest import moedesk, wait_for

pytestmark = pytest.mark.slow


def info_of(home: Path, ref):
    with Reader(home / "moedesk.db") as reader:
        return reader.run(ref)


def ended(home: Path, run_id: int):
    return wait_for(lambda: (i := info_of(home, run_id)).status not in ("queued", "running")
                    and i.row["ended_at"] and i, timeout=120, what=f"run {run_id} to end")


def script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "job.py"
    path.write_text("import os, sys, time, signal, subprocess\n" + textwrap.dedent(body))
    return path


# the conftest helper puts --home last, which would hand it to the watched command: each
# watch call here names the home before "--"


def watched_id(result) -> int:
    assert result.returncode in (0, 1, 3, 4), result.stderr
    return int(result.stdout.split("watching run ")[1].split()[0])


def test_watch_runs_the_command_logs_it_and_an_init_inside_joins(home, tmp_path):
    job = script(tmp_path, """
        import moedesk
        print("to stdout", flush=True)
        print("to stderr", file=sys.stderr, flush=True)
        run = moedesk.init(name="from-init", config={"lr": 0.1}, tags=["inner"], total_steps=10)
        for step in range(1, 11):
            run.log({"train/loss": 1.0 / step}, step=step)
            run.log_expert_load({0: [step, 8, 8, 8]}, top_k=1)
        print("cwd", os.getcwd(), flush=True)
    """)
    result = moedesk("watch", "--home", str(home), "--tag", "outer", "--cwd", str(tmp_path), "--",
                     sys.executable, str(job))
    assert result.returncode == 0, result.stderr
    assert "to stdout" in result.stdout and "to stderr" in result.stdout  # followed live
    info = ended(home, watched_id(result))
    assert (info.status, info.name, info.kind, info.total_steps, info.last_step) == \
        ("completed", "from-init", "external", 10, 10)
    assert info.row["exit_code"] == 0
    assert info.config["external"]["command"] == [sys.executable, str(job)]
    assert info.config["config"] == {"lr": 0.1}
    log = train_log(info.row["run_dir"]).read_text()
    assert "to stdout" in log and "to stderr" in log and f"cwd {tmp_path}" in log
    with Reader(home / "moedesk.db") as reader:
        tags = [r[0] for r in reader.conn.execute("SELECT tag FROM run_tags WHERE run_id = ?",
                                                  (info.id,))]
        rows, _ = reader.expert_load_since(info.id, 0)
    assert sorted(tags) == ["inner", "outer"] and len(rows) == 10


@pytest.mark.parametrize("body, status, code, error", [
    ("sys.exit(3)\n", "failed", 3, "exited with code 3"),
    ("os.kill(os.getpid(), signal.SIGKILL)\n", "crashed", -9, "killed by signal SIGKILL"),
    ("print('plain script, no moedesk')\n", "completed", 0, None),
])
def test_the_exit_code_decides_the_status(home, tmp_path, body, status, code, error):
    job = script(tmp_path, body)
    result = moedesk("watch", "--home", str(home), "--detach", "--", sys.executable, str(job),
                     check=True)
    info = ended(home, watched_id(result))
    assert (info.status, info.row["exit_code"]) == (status, code), info.row["error"]
    if error:
        assert error in info.row["error"]


SLEEPER = """
child = subprocess.Popen(["sleep", "300"])
print("child", child.pid, flush=True)
if "--ignore-term" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    time.sleep(0.1)
"""


def _child_pid(home: Path, run_id: int) -> int:
    def found():
        log = train_log(info_of(home, run_id).row["run_dir"])
        text = log.read_text() if log.exists() else ""
        return next((int(line.split()[1]) for line in text.splitlines()
                     if line.startswith("child ")), None)
    return wait_for(found, what="the command's child")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_stop_sends_sigterm_to_the_whole_process_group(home, tmp_path):
    job = script(tmp_path, SLEEPER)
    run_id = watched_id(moedesk("watch", "--home", str(home), "--detach", "--", sys.executable,
                                str(job), check=True))
    child = _child_pid(home, run_id)
    moedesk("stop", str(run_id), home=home, check=True)
    info = ended(home, run_id)
    assert info.status == "stopped" and info.row["exit_code"] == -signal.SIGTERM
    assert "stopped by request" in info.row["error"]
    wait_for(lambda: _gone(child), what="the command's child to get the SIGTERM too")


def test_kill_sends_sigkill_when_sigterm_is_ignored(home, tmp_path):
    job = script(tmp_path, SLEEPER)
    run_id = watched_id(moedesk("watch", "--home", str(home), "--detach", "--", sys.executable,
                                str(job), "--ignore-term", check=True))
    child = _child_pid(home, run_id)
    # the supervisor acknowledges the stop (it passed SIGTERM on), which the command ignores
    asked = moedesk("stop", str(run_id), "--no-wait", home=home, check=True)
    assert f"stopping run {run_id}" in asked.stdout and "requested at step" in asked.stdout
    time.sleep(1.0)
    assert info_of(home, run_id).status == "running"
    moedesk("stop", str(run_id), "--kill", home=home, check=True)
    info = ended(home, run_id)
    assert info.status == "stopped" and info.row["exit_code"] == -signal.SIGKILL
    assert "killed by request" in info.row["error"]
    wait_for(lambda: _gone(child), what="the command's child to be killed too")


def test_the_run_survives_its_terminal_hanging_up(home, tmp_path):
    job = script(tmp_path, """
        import moedesk
        run = moedesk.init()
        for step in range(1, 31):
            run.log({"train/loss": 1.0}, step=step)
            time.sleep(0.1)
    """)
    # a login shell in its own session stands for the terminal; the CLI follows in it
    terminal = subprocess.Popen(
        ["bash", "-c", f"{sys.executable} -m moedesk watch --home {home} -- {sys.executable} "
                       f"{job}; sleep 60"], start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    run_id = wait_for(lambda: (home / "moedesk.db").exists() and _first_running(home),
                      what="the watched run to start")
    os.killpg(terminal.pid, signal.SIGHUP)  # the terminal closes
    terminal.wait(timeout=30)
    info = ended(home, run_id)
    assert info.status == "completed" and info.last_step == 30


def _first_running(home: Path) -> int | None:
    try:
        with Reader(home / "moedesk.db") as reader:
            runs = [r for r in reader.runs() if r.status == "running" and r.last_step >= 1]
    except Exception:  # noqa: BLE001 - the store is being created
        return None
    return runs[0].id if runs else None


def test_a_bad_command_is_a_clear_error_and_no_run(home, tmp_path):
    result = moedesk("watch", "--home", str(home), "--", "no-such-program-xyz")
    assert result.returncode == 2 and "'no-such-program-xyz' is not an executable" in result.stderr
    assert "Traceback" not in result.stderr
    result = moedesk("watch", "--home", str(home), "--cwd", str(tmp_path / "nope"), "--", "true")
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert not (home / "moedesk.db").exists()


def test_start_watch_is_the_python_api(home, tmp_path):
    job = script(tmp_path, "print('api', flush=True)\n")
    started = launch.start_watch(home, [sys.executable, str(job)], tmp_path, name="via-api",
                                 tags=["x"])
    info = ended(home, started.run_id)
    assert (info.name, info.status) == ("via-api", "completed")
    with pytest.raises(launch.RunError, match="give the command"):
        launch.start_watch(home, [], tmp_path)
