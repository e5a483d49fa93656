"""The LM training loop: schedule, learning, exact resume, failure and stop paths, entry point."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moedesk.profiles import load_profile, profile_to_dict
from moedesk.profiles.schema import TrainSection
from moedesk.runner.protocol import decode
from moedesk.train import checkpoint as checkpoint_mod
from moedesk.train import loop
from moedesk.train.checkpoint import list_checkpoints, load_checkpoint
from moedesk.train.data import LMData, unigram_entropy
from moedesk.train.emit import ListEmitter
from moedesk.train.model import LM
from moedesk.train.optim import lr_at
from moedesk.train.stopflag import StopFlag

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "profiles" / "tiny_dense.toml"
# smaller and faster than tiny_dense itself, for the mechanics tests
FAST = {"data.seq_len": 16, "model.max_seq_len": 16, "train.batch_size": 4,
        "data.grammar_sentences": 300, "train.eval_batches": 1, "train.warmup_steps": 2}


def tiny(**overrides):
    return load_profile(TINY, {**FAST, **overrides})


def of_type(events, kind):
    return [e for e in events if e["type"] == kind]


def losses(events) -> dict[int, float]:
    return {e["step"]: e["values"]["train/loss"] for e in of_type(events, "metrics")
            if "train/loss" in e["values"]}


def test_schedule_warmup_then_cosine_to_the_floor():
    cfg = TrainSection(steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(1, cfg) == pytest.approx(1e-4)
    assert lr_at(5, cfg) == pytest.approx(5e-4)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(55, cfg) == pytest.approx(1e-4 + 0.5 * 9e-4)  # halfway down the cosine
    assert lr_at(100, cfg) == pytest.approx(1e-4)
    decay = [lr_at(s, cfg) for s in range(10, 101)]
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False))
    no_warmup = TrainSection(steps=10, warmup_steps=0, lr=2e-3, min_lr_ratio=0.0)
    assert lr_at(1, no_warmup) < 2e-3 and lr_at(10, no_warmup) == pytest.approx(0.0)


@pytest.mark.slow
def test_tiny_dense_learns_below_the_unigram_entropy(tmp_path):
    profile = load_profile(TINY)
    emitter = ListEmitter()
    assert loop.train_lm(profile, tmp_path, emitter) == "completed"
    val = [e["values"]["val/loss"] for e in of_type(emitter.events, "metrics")
           if "val/loss" in e["values"]]
    data = LMData(profile.data, profile.seed, 1, 256)
    entropy = unigram_entropy(data.splits["train"])
    assert len(val) == 3  # steps 50, 100, 150
    assert val[-1] < entropy - 0.2, (val, entropy)
    assert val[-1] < val[0]
    started = of_type(emitter.events, "started")[0]
    assert started["params"]["total"] == started["params"]["active"] > 0
    assert [c["step"] for c in of_type(emitter.events, "checkpoint")] == [50, 100, 150]


@pytest.mark.slow
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    # dropout and grad accumulation make the RNG and micro-batch state matter
    settings = {"train.steps": 40, "model.dropout": 0.1, "train.grad_accum": 2,
                "train.eval_every": 0, "checkpoint.every": 0}
    straight = ListEmitter()
    assert loop.train_lm(tiny(**settings), tmp_path / "a", straight) == "completed"

    first = ListEmitter()
    assert loop.train_lm(tiny(**settings), tmp_path / "b", first, stop_at=20) == "stopped"
    assert of_type(first.events, "finished")[0]["reason"] == "reached --stop-at 20"
    ckpt = of_type(first.events, "checkpoint")[-1]
    assert ckpt["step"] == 20
    second = ListEmitter()
    assert loop.train_lm(tiny(**settings), tmp_path / "b", second,
                         resume=Path(ckpt["path"])) == "completed"

    started = of_type(second.events, "started")[0]
    assert started["step"] == 20 and started["resumed_from"] == 20
    want, got = losses(straight.events), losses(second.events)
    assert sorted(got) == list(range(21, 41))
    assert all(got[s] == want[s] for s in range(21, 41)), [(s, want[s], got[s]) for s in got]
    assert losses(first.events) == {s: want[s] for s in range(1, 21)}
    end_a = load_checkpoint(list_checkpoints(tmp_path / "a")[-1].path)["model"]
    end_b = load_checkpoint(list_checkpoints(tmp_path / "b")[-1].path)["model"]
    assert all(torch.equal(end_a[k], end_b[k]) for k in end_a)


def test_resume_from_an_unreadable_checkpoint_fails_cleanly(tmp_path):
    emitter = ListEmitter()
    status = loop.train_lm(tiny(), tmp_path, emitter, resume=tmp_path / "missing.pt")
    assert status == "failed"
    assert "cannot resume" in of_type(emitter.events, "finished")[0]["reason"]


class NaNFromStep(LM):
    """Training loss turns NaN from training forward number `bad_step` on."""

    bad_step = 6

    def forward(self, idx_BT, targets_BT=None):
        logits, loss = super().forward(idx_BT, targets_BT)
        if self.training:
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls >= self.bad_step:
                loss = loss * float("nan")
        return logits, loss


@pytest.mark.parametrize("log_every,ckpt_every,detected_at", [(1, 1, 6), (4, 0, 8)])
def test_non_finite_loss_fails_without_checkpointing_it(tmp_path, monkeypatch, log_every,
                                                        ckpt_every, detected_at):
    monkeypatch.setattr(loop, "build_model", lambda profile: NaNFromStep(profile.model))
    emitter = ListEmitter()
    profile = tiny(**{"train.steps": 20, "train.log_every": log_every,
                      "checkpoint.every": ckpt_every, "checkpoint.keep": 0})
    assert loop.train_lm(profile, tmp_path, emitter) == "failed"
    finished = of_type(emitter.events, "finished")
    assert len(finished) == 1 and finished[0]["status"] == "failed"
    assert finished[0]["reason"] == f"non-finite loss at step {detected_at}"
    assert math.isnan(losses(emitter.events)[detected_at])
    saved = [c.step for c in list_checkpoints(tmp_path)]
    assert saved == list(range(1, 6)) if ckpt_every else saved == []
    assert all(c["step"] < 6 for c in of_type(emitter.events, "checkpoint"))


@pytest.mark.slow
def test_sigterm_finishes_the_step_checkpoints_and_stops(tmp_path):
    class SignalAtStep7(ListEmitter):
        def metrics(self, step, values):
            super().metrics(step, values)
            if step == 7:
                os.kill(os.getpid(), signal.SIGTERM)

    emitter = SignalAtStep7()
    with StopFlag() as stop:
        status = loop.train_lm(tiny(**{"train.steps": 50}), tmp_path, emitter, stop=stop)
    assert status == "stopped"
    assert of_type(emitter.events, "finished")[0] == {
        "type": "finished", "step": 7, "status": "stopped", "reason": "received SIGTERM"}
    assert [c["step"] for c in of_type(emitter.events, "checkpoint")] == [7]
    assert load_checkpoint(list_checkpoints(tmp_path)[-1].path)["step"] == 7
    assert max(losses(emitter.events)) == 7


def test_stop_flag_restores_handlers_and_a_second_ctrl_c_aborts():
    before = signal.getsignal(signal.SIGTERM)
    with StopFlag() as stop:
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.reason == "received SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) == before


def test_without_clipping_the_gradient_norm_is_still_reported(tmp_path):
    def first_norm(grad_clip: float) -> float:
        emitter = ListEmitter()
        profile = tiny(**{"train.steps": 2, "train.grad_clip": grad_clip})
        assert loop.train_lm(profile, tmp_path / str(grad_clip), emitter) == "completed"
        return of_type(emitter.events, "metrics")[0]["values"]["train/grad_norm"]

    # both report the norm before any clipping: same init, same first batch
    unclipped = first_norm(0.0)
    assert unclipped > 0 and math.isfinite(unclipped)
    assert unclipped == pytest.approx(first_norm(1e-3), rel=1e-5)


@pytest.mark.slow
def test_checkpoint_write_failure_fails_and_keeps_the_previous_one(tmp_path, monkeypatch):
    real_write = checkpoint_mod._write_atomic

    def disk_full_at_step_20(path, data):
        if "step_00000020" in path.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(checkpoint_mod, "_write_atomic", disk_full_at_step_20)
    emitter = ListEmitter()
    profile = tiny(**{"train.steps": 30, "checkpoint.every": 10})
    assert loop.train_lm(profile, tmp_path, emitter) == "failed"
    finished = of_type(emitter.events, "finished")[0]
    assert finished["step"] == 20 and "No space left on device" in finished["reason"]
    kept = list_checkpoints(tmp_path)
    assert [c.step for c in kept] == [10]
    assert load_checkpoint(kept[0].path)["step"] == 10


def run_trainer(run_dir: Path, *args: str, timeout: float = 120) -> tuple[int, list[dict]]:
    result = subprocess.run([sys.executable, "-m", "moedesk.train", str(run_dir), *args],
                            capture_output=True, text=True, timeout=timeout, cwd=REPO)
    events = [d.event for d in map(decode, result.stdout.splitlines()) if d.event]
    return result.returncode, events


def write_run_dir(path: Path, **overrides) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps(profile_to_dict(tiny(**overrides))))
    return path


@pytest.mark.slow
def test_entry_point_stop_at_then_resume(tmp_path):
    run_dir = write_run_dir(tmp_path / "run", **{"train.steps": 10})
    rc, events = run_trainer(run_dir, "--stop-at", "4")
    assert rc == 0
    assert events[0]["type"] == "started" and events[-1]["status"] == "stopped"
    ckpt = of_type(events, "checkpoint")[-1]
    assert ckpt["step"] == 4 and Path(ckpt["path"]).is_file()
    rc, events = run_trainer(run_dir, "--resume", ckpt["path"])
    assert rc == 0 and events[-1]["status"] == "completed" and events[-1]["step"] == 10
    assert sorted(losses(events)) == list(range(5, 11))


@pytest.mark.slow
def test_entry_point_sigterm_stops_with_exit_code_0(tmp_path):
    run_dir = write_run_dir(tmp_path / "run", **{"train.steps": 100000, "train.warmup_steps": 10})
    proc = subprocess.Popen([sys.executable, "-m", "moedesk.train", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    events = []
    try:
        for line in proc.stdout:
            event = decode(line).event
            if event:
                events.append(event)
            if event and event["type"] == "metrics":
                proc.send_signal(signal.SIGTERM)
                break
        events += [d.event for d in map(decode, proc.stdout) if d.event]
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()
    assert events[-1]["type"] == "finished" and events[-1]["status"] == "stopped"
    assert events[-1]["reason"] == "received SIGTERM"
    assert of_type(events, "checkpoint")[-1]["step"] == events[-1]["step"]


@pytest.mark.slow
def test_entry_point_without_config_exits_2(tmp_path):
    rc, events = run_trainer(tmp_path)
    assert rc == 2
    assert events[-1]["status"] == "failed" and "config.json" in events[-1]["reason"]
