"""Speed settings: torch.compile and activation checkpointing train the same model as eager,
resume works under compile, and the default thread count shares the cores between runs."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import torch

from moedesk.profiles import load_profile
from moedesk.runner import threads
from moedesk.runner.protocol import THREADS_ENV
from moedesk.train import loop
from moedesk.train.emit import ListEmitter
from moedesk.train.speed import BF16_EMULATED_RULE, bf16_alert, cpu_has_bf16, resolve_threads

REPO = Path(__file__).resolve().parents[2]
FAST = {"data.seq_len": 16, "model.max_seq_len": 16, "train.batch_size": 4,
        "data.grammar_sentences": 300, "train.eval_batches": 1, "train.warmup_steps": 2,
        "train.eval_every": 0, "checkpoint.every": 0, "train.sample_every": 0}


def losses(events) -> dict[int, float]:
    return {e["step"]: e["values"]["train/loss"] for e in events
            if e["type"] == "metrics" and "train/loss" in e["values"]}


class LogKeepingEmitter(ListEmitter):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


def train(tmp_path: Path, name: str, profile: str, stop_at=None, resume=None, **overrides):
    prof = load_profile(REPO / "profiles" / f"{profile}.toml", {**FAST, **overrides})
    emitter = LogKeepingEmitter()
    status = loop.train_lm(prof, tmp_path / name, emitter, stop_at=stop_at, resume=resume)
    return status, emitter


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["tiny_dense", "tiny_topk"])
def test_activation_checkpointing_trains_the_same_model(tmp_path, profile):
    steps = {"train.steps": 12, "model.dropout": 0.1}
    _, eager = train(tmp_path, "eager", profile, **steps)
    _, recompute = train(tmp_path, "ac", profile, **steps, **{"train.activation_checkpointing": True})
    want, got = losses(eager.events), losses(recompute.events)
    assert sorted(got) == sorted(want) == list(range(1, 13))
    assert all(got[s] == pytest.approx(want[s], abs=1e-5) for s in want), (want, got)
    # the routing counts are not doubled by the recompute: same expert loads
    loads = [[e["loads"] for e in em.events if e["type"] == "expert_load"]
             for em in (eager, recompute)]
    assert loads[0] == loads[1]


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["tiny_dense", "tiny_topk"])
def test_compiled_loss_curve_equals_eager_and_resumes(tmp_path, profile):
    steps = {"train.steps": 8}
    _, eager = train(tmp_path, "eager", profile, **steps)
    status, compiled = train(tmp_path, "compiled", profile, **steps, **{"train.compile": True})
    assert status == "completed"
    want, got = losses(eager.events), losses(compiled.events)
    assert sorted(got) == list(range(1, 9))
    # the compiling first step is reported on its own, once
    assert sum("torch.compile: first step" in line for line in compiled.lines) == 1
    assert not any("torch.compile" in line for line in eager.lines)
    assert all(got[s] == pytest.approx(want[s], rel=1e-4, abs=1e-4) for s in want), (want, got)
    # stop at 4, resume compiled: the same losses as the uninterrupted compiled run
    first_status, first = train(tmp_path, "resumed", profile, stop_at=4, **steps,
                                **{"train.compile": True})
    assert first_status == "stopped"
    ckpt = [e for e in first.events if e["type"] == "checkpoint"][-1]
    status, second = train(tmp_path, "resumed", profile, resume=Path(ckpt["path"]), **steps,
                           **{"train.compile": True})
    assert status == "completed"
    again = losses(second.events)
    assert sorted(again) == list(range(5, 9))
    assert all(again[s] == pytest.approx(got[s], rel=1e-5, abs=1e-6) for s in again)


def test_explicit_threads_win_and_zero_takes_the_supervisors_share(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "1")
    assert resolve_threads(3) == 3
    assert resolve_threads(0) == 1
    monkeypatch.setenv(THREADS_ENV, "junk")
    assert resolve_threads(0) == 0
    monkeypatch.delenv(THREADS_ENV)
    assert resolve_threads(0) == 0


def test_the_cores_are_shared_by_the_live_runs(tmp_path):
    assert threads.default_threads(1, 2) == 2
    assert threads.default_threads(2, 2) == 1
    assert threads.default_threads(3, 2) == 1
    assert threads.default_threads(2, 16) == 8
    conn = sqlite3.connect(tmp_path / "runs.db")
    conn.execute("CREATE TABLE runs (status TEXT, supervisor_pid INT, supervisor_started REAL, "
                 "created_at REAL, run_dir TEXT, queued_at REAL)")
    now = time.time()
    import psutil
    me = psutil.Process()
    conn.executemany("INSERT INTO runs (status, supervisor_pid, supervisor_started, created_at)"
                     " VALUES (?, ?, ?, ?)", [
        ("running", me.pid, me.create_time(), now - 100),  # alive
        ("running", 2**22 + 7, now - 50, now - 100),        # supervisor gone: crashed
        ("queued", None, None, now - 1),                    # starting now
        ("queued", None, None, now - 3600),                 # a launch that never started
        ("completed", None, None, now - 10),
    ])
    assert threads.live_runs(conn, now) == 2
    env = threads.trainer_env(conn, {"train": {"threads": 0}})
    assert env == {THREADS_ENV: str(threads.default_threads(2, threads.cores()))}
    assert threads.trainer_env(conn, {"train": {"threads": 2}}) == {}


def test_bf16_on_a_cpu_without_bf16_instructions_alerts():
    bf16 = load_profile(REPO / "profiles" / "tiny_dense.toml", {"train.bf16": True}).train
    fp32 = load_profile(REPO / "profiles" / "tiny_dense.toml").train
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    alert = bf16_alert(bf16, cpu, has_bf16=False)
    assert alert is not None and alert["rule"] == BF16_EMULATED_RULE
    assert alert["level"] == "warning" and "slower" in alert["text"]
    assert "bf16 = false" in alert["action"]
    assert bf16_alert(bf16, cpu, has_bf16=True) is None
    assert bf16_alert(fp32, cpu, has_bf16=False) is None
    gpu = bf16_alert(bf16, cuda, has_bf16=False)  # a GPU before compute capability 8.0
    assert gpu is not None and gpu["title"] == "bf16 is emulated on this GPU"
    assert "compute capability" in gpu["text"]
    assert bf16_alert(bf16, cuda, has_bf16=True) is None
    assert bf16_alert(bf16, torch.device("meta"), has_bf16=False) is None


def test_the_run_says_it_when_this_cpu_emulates_bf16(tmp_path):
    status, emitter = train(tmp_path, "bf16", "tiny_dense", **{"train.steps": 2,
                                                             "train.bf16": True})
    assert status == "completed"
    alerts = [e for e in emitter.events if e["type"] == "alert"]
    logged = any("bf16 is emulated" in line for line in emitter.lines)
    emulated = not cpu_has_bf16()
    assert logged == emulated, emitter.lines
    assert [a["rule"] for a in alerts] == ([BF16_EMULATED_RULE] if emulated else [])
    _, plain = train(tmp_path, "fp32", "tiny_dense", **{"train.steps": 2})
    assert not [e for e in plain.events if e["type"] == "alert"]
    assert not any("bf16 is emulated" in line for line in plain.lines)
