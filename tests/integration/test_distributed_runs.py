"""Runs on several processes through the real CLI and supervisor (torchrun, gloo, 127.0.0.1):
a graceful stop ends every rank at the same step with a checkpoint, and the run resumes;
a SIGKILLed rank ends every rank within seconds and the run is crashed with that rank
named; `moedesk stop --kill` leaves no rank behind; a rendezvous port in use fails the
run with a clear error; two simulated nodes train what one node with two processes does.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from moedesk.runner.checkpoints import list_checkpoints
from moedesk.store import Reader
from tests.conftest import REPO, moedesk, wait_for

pytestmark = pytest.mark.slow

TINY = "profiles/tiny_dense.toml"
SMALL = ["--set", "train.warmup_steps=2", "--set", "train.batch_size=4", "--set",
         "data.grammar_sentences=500", "--set", "train.eval_every=0", "--set", "train.threads=1"]
LONG = [*SMALL, "--set", "train.steps=100000", "--set", "checkpoint.every=0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_info(home: Path, run_id: int = 1):
    return Reader(home / "moedesk.db").run(run_id)


def losses(home: Path, run_id: int = 1) -> dict[int, float]:
    return dict(Reader(home / "moedesk.db").series(run_id, "train/loss"))


def ranks_of(agent_pid: int) -> dict[int, psutil.Process]:
    """torchrun's workers by RANK."""
    out = {}
    for child in psutil.Process(agent_pid).children():
        try:
            out[int(child.environ()["RANK"])] = child
        except (psutil.Error, KeyError):
            continue
    return out


def alive(procs) -> list[int]:
    out = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.NoSuchProcess:
            continue
    return out


def start_long(home: Path, *extra: str) -> tuple[int, dict[int, psutil.Process]]:
    moedesk("run", TINY, "--nproc-per-node", "2", *LONG, *extra, "--detach", home=home,
            check=True)
    wait_for(lambda: run_info(home).last_step >= 3, timeout=300, what="progress")
    agent = run_info(home).row["trainer_pid"]
    ranks = wait_for(lambda: (lambda r: r if len(r) == 2 else None)(ranks_of(agent)),
                     timeout=30, what="two ranks")
    return agent, ranks


def ended(home: Path) -> bool:
    return run_info(home).status not in ("queued", "running")


def stop_lines(log: str) -> dict[str, int]:
    """{"[rank R]": step} of each rank's 'stopped at step N' line."""
    out = {}
    for line in log.splitlines():
        if "] stopped at step " in line:
            rank = line[line.index("[rank"):line.index("]") + 1]
            out[rank] = int(line.split("stopped at step ")[1].split(":")[0])
    return out


def test_stop_ends_every_rank_at_the_same_step_with_a_checkpoint_then_resumes(home):
    agent, ranks = start_long(home)
    moedesk("stop", "1", home=home, check=True)
    wait_for(lambda: ended(home), timeout=180, what="the stop")
    info = run_info(home)
    assert info.status == "stopped" and info.row["exit_code"] == 0, info.row["error"]
    assert info.row["error"] is None  # torchrun's exit after the stop it passed on is clean
    log = (Path(info.row["run_dir"]) / "train.log").read_text()
    stopped = stop_lines(log)
    assert set(stopped) == {"[rank 0]", "[rank 1]"} and len(set(stopped.values())) == 1
    step = stopped["[rank 0]"]
    assert [c.step for c in list_checkpoints(Path(info.row["run_dir"]))] == [step]
    assert max(losses(home)) == step
    assert alive([psutil.Process(agent)] if psutil.pid_exists(agent) else []) == []
    assert alive(ranks.values()) == []
    # resume on two ranks; --steps (rank 0's argument) reaches rank 1 too
    moedesk("resume", "1", "--steps", str(step + 3), "--detach", home=home, check=True)
    wait_for(lambda: ended(home), timeout=300, what="the resumed run")
    assert run_info(home).status == "stopped" and run_info(home).last_step == step + 3
    assert sorted(losses(home)) == list(range(1, step + 4))
    log = (Path(info.row["run_dir"]) / "train.log").read_text()
    assert f"[rank 1] stopped at step {step + 3}: reached --stop-at" in log


def test_a_killed_rank_ends_every_rank_and_the_run_crashes_naming_it(home):
    agent, ranks = start_long(home, "--set", "checkpoint.every=2")
    ranks[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: ended(home), timeout=60, what="the crash")
    took = time.monotonic() - killed
    info = run_info(home)
    assert info.status == "crashed", info.row["error"]
    error = info.row["error"]
    assert error.startswith("rank 1 (local rank 1 on ") and "was killed by SIGKILL" in error
    assert "last log lines of rank 1:" in error and "[rank 1] rank 1 of 2" in error
    assert took < 30, took  # seconds, not a hung collective (load on CI machines is high)
    assert alive(list(ranks.values())) == []
    assert not psutil.pid_exists(agent) or alive([psutil.Process(agent)]) == []
    # resumed, then killed on request: no rank survives its agent
    moedesk("resume", "1", "--detach", home=home, check=True)
    wait_for(lambda: run_info(home).status == "running" and
             len(ranks_of(run_info(home).row["trainer_pid"])) == 2, timeout=300,
             what="the resumed ranks")
    ranks = ranks_of(run_info(home).row["trainer_pid"])
    moedesk("stop", "1", "--kill", home=home, check=True)
    wait_for(lambda: ended(home), timeout=60, what="the kill")
    assert run_info(home).status == "stopped"
    wait_for(lambda: alive(list(ranks.values())) == [], timeout=10, what="the ranks to die")


def test_a_rendezvous_port_in_use_fails_the_run_clearly(home):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = moedesk("run", TINY, *SMALL, "--set", "train.steps=4", "--set",
                         "train.dist_timeout=20", "--nnodes", "2", "--rdzv-endpoint",
                         f"127.0.0.1:{port}", home=home, timeout=300)
    info = run_info(home)
    assert info.status == "failed" and result.returncode == 1
    assert info.row["error"].startswith("the ranks could not meet at the rendezvous")
    assert "EADDRINUSE" in info.row["error"] and "--rdzv-endpoint" in info.row["error"]
    assert "Traceback" not in result.stdout + result.stderr
    # a node rank outside the run: refused before anything starts
    bad = moedesk("run", TINY, "--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint",
                  "127.0.0.1:1234", home=home)
    assert bad.returncode == 2 and "--node-rank: got 2; must be < train.nnodes (2)" in bad.stderr


def test_two_nodes_train_what_one_node_with_two_processes_does(home, tmp_path):
    steps = ["--set", "train.steps=6", "--set", "checkpoint.every=0"]
    moedesk("run", TINY, *SMALL, *steps, "--nproc-per-node", "2", home=home, check=True)
    single = losses(home, 1)
    assert sorted(single) == list(range(1, 7))
    endpoint = f"127.0.0.1:{free_port()}"
    node_home = tmp_path / "node1-home"
    node1 = subprocess.Popen(
        [sys.executable, "-m", "moedesk", "run", TINY, *SMALL, *steps, "--nnodes", "2",
         "--node-rank", "1", "--rdzv-endpoint", endpoint, "--home", str(node_home)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "120", "NO_COLOR": "1"})
    moedesk("run", TINY, *SMALL, *steps, "--nnodes", "2", "--node-rank", "0",
            "--rdzv-endpoint", endpoint, home=home, check=True)
    out, _ = node1.communicate(timeout=300)
    assert node1.returncode == 0, out
    info = run_info(home, 2)
    assert info.status == "completed" and info.row["device"] == "cpu x 2 ranks"
    assert losses(home, 2) == single
    # node 1 keeps no run: no database, only its node folder with the ranks' exit
    assert not (node_home / "moedesk.db").exists()
    [folder] = list((node_home / "nodes").iterdir())
    assert json.loads((folder / "exit.json").read_text())["status"] == "ok"
    log = (folder / "train.log").read_text()
    assert "[rank 1] completed at step 6" in log and "[rank 0]" not in log
