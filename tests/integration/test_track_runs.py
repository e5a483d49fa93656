"""moedesk.init end to end: real supervisors, real SIGKILLs, a locked store, stops, a plain
PyTorch loop with watch_router on an MoE layer that knows nothing of moedesk."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from torch import nn

import moedesk
from moedesk.paths import events_file
from moedesk.store import Reader
from tests.conftest import moedesk as moedesk_cli
from tests.conftest import wait_for

pytestmark = pytest.mark.slow


def reader(home: Path) -> Reader:
    return Reader(home / "moedesk.db")


def info_of(home: Path, ref):
    with reader(home) as r:
        return r.run(ref)


def count(home: Path, sql: str, *args) -> int:
    with reader(home) as r:
        return r.conn.execute(sql, args).fetchone()[0]


def run_script(tmp_path: Path, body: str, *args: str, wait: bool = True):
    script = tmp_path / "train_script.py"
    script.write_text("import os, sys, time, signal\nimport moedesk\n" + textwrap.dedent(body))
    cmd = [sys.executable, str(script), *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def ended(home: Path, run_id: int):
    return wait_for(lambda: (i := info_of(home, run_id)).status not in ("queued", "running")
                    and i.row["ended_at"] and i, timeout=120, what=f"run {run_id} to end")


def test_init_log_finish_stores_everything(home):
    run = moedesk.init(name="plain", config={"lr": 0.01, "seed": 5}, home=home, tags=["t1", "t2"],
                       total_steps=5)
    for step in range(1, 6):
        run.log({"train/loss": 3.0 - step, "train/lr": 0.01}, step=step)
        run.log_expert_load({0: [step, 2, 3, 4], 2: [1, 1, 1, 1]}, top_k=1)
    run.alert("checkpoint skipped", "disk nearly full", level="warning")
    run.finish()  # waits until the supervisor stored it all
    info = info_of(home, run.id)
    assert (info.name, info.kind, info.status, info.total_steps, info.last_step) == \
        ("plain", "external", "completed", 5, 5)
    assert info.row["seed"] == 5 and info.config["config"] == {"lr": 0.01, "seed": 5}
    assert info.config["moe"] == {"num_experts": 4, "top_k": 1}
    assert count(home, "SELECT COUNT(*) FROM metrics WHERE run_id = ? AND name = 'train/loss'",
                 run.id) == 5
    assert count(home, "SELECT COUNT(*) FROM metrics WHERE run_id = ? AND name = 'moe/L2/cv'",
                 run.id) == 5
    assert count(home, "SELECT COUNT(*) FROM expert_load WHERE run_id = ?", run.id) == 10
    assert count(home, "SELECT COUNT(*) FROM run_tags WHERE run_id = ?", run.id) == 2
    with reader(home) as r:
        alert = r.alerts(run.id)[0]
    assert alert["rule"] == "user" and alert["message"] == "checkpoint skipped: disk nearly full"
    listing = moedesk_cli("runs", home=home, check=True).stdout
    assert "plain" in listing and "external" in listing


def test_sigkill_right_after_a_burst_loses_nothing(home, tmp_path):
    result = run_script(tmp_path, f"""
        run = moedesk.init(name="burst", home={str(home)!r}, stop_on="never")
        print(run.id, flush=True)
        for step in range(1, 3001):
            run.log({{f"m{{i}}": step + i for i in range(20)}}, step=step)
            if step % 10 == 0:
                run.log_expert_load({{0: [step, 1, 2, 3], 1: [4, 5, 6, step]}}, top_k=2)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert result.returncode == -signal.SIGKILL
    run_id = int(result.stdout.split()[0])
    info = ended(home, run_id)
    assert info.status == "crashed" and "without finish()" in info.row["error"]
    assert count(home, "SELECT COUNT(*) FROM metrics WHERE run_id = ? AND name GLOB 'm[0-9]*'",
                 run_id) == 3000 * 20
    assert count(home, "SELECT COUNT(*) FROM expert_load WHERE run_id = ?", run_id) == 300 * 2
    assert info.last_step == 3000


def test_log_never_waits_for_a_locked_store(home):
    run = moedesk.init(name="locked", home=home)
    blocker = sqlite3.connect(home / "moedesk.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # every writer, the supervisor included, waits now
    try:
        for step in range(1, 2001):
            run.log({"train/loss": 1.0 / step}, step=step)
        lines = events_file(run.run_dir).read_text().splitlines()
        assert sum('"type":"metrics"' in line for line in lines) == 2000
        assert count(home, "SELECT COUNT(*) FROM metrics WHERE run_id = ?", run.id) == 0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    run.finish()
    assert count(home, "SELECT COUNT(*) FROM metrics WHERE run_id = ?", run.id) == 2000
    assert info_of(home, run.id).status == "completed"


@pytest.mark.parametrize("body, status, error", [
    ("run.log({'a': 1})\n", "completed", None),  # atexit: a normal interpreter exit
    ("run.log({'a': 1})\nraise ValueError('boom')\n", "failed", "ValueError: boom"),
    ("raise KeyboardInterrupt\n", "stopped", "interrupted"),
    ("run.finish(exit_code=3)\n", "failed", "exit code 3"),
    ("with run:\n    raise RuntimeError('in block')\n", "failed", "RuntimeError: in block"),
    ("run.log({'a': 1})\nos._exit(0)\n", "crashed", "without finish()"),
])
def test_how_a_process_ends_decides_the_status(home, tmp_path, body, status, error):
    result = run_script(tmp_path, f"run = moedesk.init(home={str(home)!r})\n"
                                  "print(run.id, flush=True)\n" + body)
    info = ended(home, int(result.stdout.split()[0]))
    assert info.status == status, (info.row["error"], result.stderr)
    if error:
        assert error in info.row["error"]


LOOP = """
run = moedesk.init(name="looper", home={home!r}, graceful_stop={graceful})
print(run.id, flush=True)
step = 0
while not ({honours} and run.should_stop):  # honours=False: a loop that never looks
    step += 1
    run.log({{"train/loss": 1.0}}, step=step)
    time.sleep(0.02)
print("clean exit", flush=True)
run.finish()
"""


@pytest.mark.parametrize("graceful, honours, args, exit_code, error", [
    (False, False, (), -signal.SIGTERM, "stopped by request"),  # SIGTERM ends it
    (True, True, (), 0, "stopped by request"),  # it sees should_stop and ends itself
    (True, False, ("--kill",), -signal.SIGKILL, "killed by request"),  # hung: only --kill
])
def test_moedesk_stop_on_an_attached_run(home, tmp_path, graceful, honours, args, exit_code,
                                         error):
    proc = run_script(tmp_path, LOOP.format(home=str(home), graceful=graceful, honours=honours),
                      wait=False)
    run_id = int(proc.stdout.readline())
    wait_for(lambda: info_of(home, run_id).last_step >= 5, what="a few steps")
    stopped = moedesk_cli("stop", str(run_id), *args, home=home, check=True)
    if not honours:  # the supervisor passed the signal on and acknowledged it first
        assert "requested at step" in stopped.stdout, stopped.stdout
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == exit_code
    assert ("clean exit" in out) == (exit_code == 0)
    info = ended(home, run_id)
    assert info.status == "stopped" and error in info.row["error"]


# ---- the external supervisor on the reliability layer (one writer, heartbeat, spool) ---------

SLOW = """
run = moedesk.init(name="slow", home={home!r}, stop_on="never")
print(run.id, flush=True)
for step in range(1, {steps} + 1):
    run.log({{"train/loss": 1.0 / step}}, step=step)
    run.log_expert_load({{0: [step, 1, 2, 3]}}, top_k=1)
    time.sleep({sleep})
run.finish()
print("finished", flush=True)
"""


def start_slow(home: Path, tmp_path: Path, steps: int, sleep: float, env: dict | None = None):
    script = tmp_path / "slow.py"
    script.write_text("import os, sys, time\nimport moedesk\n"
                      + SLOW.format(home=str(home), steps=steps, sleep=sleep))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    return proc, int(proc.stdout.readline())


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stored_steps(home: Path, run_id: int) -> list[int]:
    with reader(home) as r:
        return [s for s, _ in r.series(run_id, "train/loss")]


def test_an_attached_run_is_claimed_and_beats(home, tmp_path):
    proc, run_id = start_slow(home, tmp_path, 400, 0.02)
    try:
        info = wait_for(lambda: (i := info_of(home, run_id)).last_step >= 2 and i,
                        what="a few steps")
        row = info.row
        assert info.status == "running" and row["trainer_pid"] == proc.pid
        assert row["supervisor_pid"] and row["supervisor_pid"] != proc.pid
        assert (Path(row["run_dir"]) / "heartbeat").exists()
        # one writer: a second supervisor for the same run is refused and changes nothing
        second = subprocess.run([sys.executable, "-m", "moedesk.runner.external", "watch",
                                 "--home", str(home), "--run-id", str(run_id)],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and f"run {run_id} is running, not queued" in second.stdout
        assert info_of(home, run_id).row["supervisor_pid"] == row["supervisor_pid"]
    finally:
        proc.communicate(timeout=120)
    info = ended(home, run_id)
    assert info.status == "completed" and stored_steps(home, run_id) == list(range(1, 401))
    assert not (Path(info.row["run_dir"]) / "heartbeat").exists()  # removed at the end


def test_a_dead_attach_supervisor_is_recorded_crashed_by_the_next_command(home, tmp_path):
    proc, run_id = start_slow(home, tmp_path, 100_000, 0.02)
    try:
        row = wait_for(lambda: (i := info_of(home, run_id)).last_step >= 3 and i.row,
                       what="a few steps")
        os.kill(row["supervisor_pid"], signal.SIGKILL)
        wait_for(lambda: not alive(row["supervisor_pid"]), what="the supervisor to die")
        assert count(home, "SELECT COUNT(*) FROM runs WHERE status = 'running'") == 1
        shown = moedesk_cli("show", str(run_id), home=home, check=True).stdout
        assert "crashed" in shown, shown
        status, error = sql_row(home, "SELECT status, error FROM runs WHERE id = ?", run_id)
        assert status == "crashed" and f"supervisor (pid {row['supervisor_pid']})" in error
    finally:
        proc.kill()
        proc.communicate(timeout=60)


def sql_row(home: Path, query: str, *args):
    with reader(home) as r:
        return tuple(r.conn.execute(query, args).fetchone())


def test_a_frozen_attach_supervisor_is_unresponsive_and_kill_ends_both(home, tmp_path):
    proc, run_id = start_slow(home, tmp_path, 100_000, 0.02)
    row = wait_for(lambda: (i := info_of(home, run_id)).last_step >= 3 and i.row,
                   what="a few steps")
    os.kill(row["supervisor_pid"], signal.SIGSTOP)
    try:
        wait_for(lambda: "unresponsive" in moedesk_cli("runs", home=home).stdout, timeout=40,
                 interval=1, what="runs to show unresponsive")
        asked = moedesk_cli("stop", str(run_id), home=home)
        assert asked.returncode == 1 and "did not acknowledge" in asked.stderr, asked
        assert proc.poll() is None  # a graceful stop waits for the supervisor
        killed = moedesk_cli("stop", str(run_id), "--kill", home=home, check=True)
        assert "unresponsive" in killed.stdout and "recorded as stopped" in killed.stdout
        # the attached process leads no process group of its own: it is killed by pid
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        assert not alive(row["supervisor_pid"])
    finally:
        if alive(row["supervisor_pid"]):
            os.kill(row["supervisor_pid"], signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
    info = info_of(home, run_id)
    assert info.status == "stopped" and "unresponsive" in info.row["error"]


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


def test_a_lock_past_the_busy_timeout_is_spooled_and_replayed(home, tmp_path):
    proc, run_id = start_slow(home, tmp_path, 300, 0.03)
    wait_for(lambda: info_of(home, run_id).last_step >= 3, what="a few steps")
    hold_lock(home / "moedesk.db", 8.0).join()  # the supervisor's busy timeout is 5 s
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0 and "finished" in out, err
    info = ended(home, run_id)
    assert info.status == "completed", info.row["error"]
    assert stored_steps(home, run_id) == list(range(1, 301))
    assert count(home, "SELECT COUNT(*) FROM expert_load WHERE run_id = ?", run_id) == 300
    with reader(home) as r:
        outage = [a for a in r.alerts(run_id) if a["rule"] == "store_unwritable"]
    assert outage and "database is locked" in outage[0]["message"]
    assert outage[0]["cleared_step"] is not None
    assert not (Path(info.row["run_dir"]) / "spool.jsonl").exists()


def test_a_store_unwritable_past_the_limit_stops_the_process(home, tmp_path):
    proc, run_id = start_slow(home, tmp_path, 100_000, 0.02,
                              env={"MOEDESK_STORE_OUTAGE_LIMIT_S": "3"})
    wait_for(lambda: info_of(home, run_id).last_step >= 3, what="a few steps")
    hold_lock(home / "moedesk.db", 16.0).join()
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGTERM  # sent by its supervisor (no graceful_stop)
    info = ended(home, run_id)
    assert info.status == "stopped", info.row["error"]
    assert "stopped by moedesk: the store was unwritable for more than 3 s" in info.row["error"]
    # every step the process logged before its SIGTERM was spooled, then replayed
    assert stored_steps(home, run_id) == list(range(1, info.last_step + 1))


# ---- a plain PyTorch loop on an MoE layer that knows nothing of moedesk ----------------------

class TopKMoE(nn.Module):
    """A small top-k MoE FFN as people write them: gate logits, softmax top-k, a loop."""

    def __init__(self, dim: int = 16, experts: int = 4, k: int = 2):
        super().__init__()
        self.gate = nn.Linear(dim, experts, bias=False)
        self.experts = nn.ModuleList(nn.Linear(dim, dim) for _ in range(experts))
        self.k = k

    def forward(self, x_TD):
        weights, ids = self.gate(x_TD).softmax(-1).topk(self.k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        out = torch.zeros_like(x_TD)
        for e, expert in enumerate(self.experts):
            rows, slot = (ids == e).nonzero(as_tuple=True)
            if rows.numel():
                out.index_add_(0, rows, weights[rows, slot, None] * expert(x_TD[rows]))
        return out


def train_loop(home: Path, collapse: bool, steps: int = 40):
    torch.manual_seed(0)
    layer = TopKMoE()
    if collapse:  # every token's top 2 are the same two experts, for good
        layer.gate.weight.data.zero_()
        layer.gate.weight.requires_grad_(False)
    opt = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.05)
    run = moedesk.init(name="plain-moe", home=home, moe={"balanced": False}, graceful_stop=True,
                       total_steps=steps)
    run.watch_router(layer.gate, top_k=2)  # a Linear: its logits are the contract
    done = 0
    for step in range(1, steps + 1):
        layer.train()
        for _ in range(2):  # two micro-batches per optimizer step
            x = torch.randn(24, 16)
            loss = (layer(x) - x).pow(2).mean()
            loss.backward()
        opt.step()
        opt.zero_grad()
        layer.eval()
        with torch.no_grad():
            layer(torch.randn(100, 16))  # an evaluation: not counted
        run.log({"train/loss": loss.item()}, step=step)
        done = step
        if run.should_stop:
            break
    run.finish()
    return run, done


def test_watch_router_in_a_plain_loop(home):
    torch.set_num_threads(1)
    run, done = train_loop(home, collapse=False)
    assert done == 40
    info = info_of(home, run.id)
    assert info.status == "completed" and info.config["moe"]["num_experts"] == 4
    with reader(home) as r:
        loads, _ = r.expert_load_since(run.id, 0)
    assert [step for step, _, _ in loads] == list(range(1, 41))
    assert all(sum(counts) == 2 * 24 * 2 for _, _, counts in loads)  # micro-batches x T x k
    assert count(home, "SELECT COUNT(*) FROM metrics WHERE run_id = ? AND name = "
                       "'moe/imbalance'", run.id) == 40


def test_collapsed_router_in_a_plain_loop_fires_and_stops(home):
    torch.set_num_threads(1)
    # the rule fires after ~30 collapsed steps; the stop reaches a loop this fast (~70
    # steps/s) a few steps later, or many more on a loaded machine: 300 leaves room
    run, done = train_loop(home, collapse=True, steps=300)
    assert done < 300
    info = info_of(home, run.id)
    assert info.status == "stopped" and "routing_collapse" in info.row["error"]
    with reader(home) as r:
        rules = {a["rule"] for a in r.alerts(run.id)}
    assert "routing_collapse" in rules
