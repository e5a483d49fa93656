"""Keep-best checkpoints: the tracker, pruning that spares the best, RUN@best resolution,
and a real run whose validation loss rises after a point."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from moedesk.paths import best_checkpoint_file
from moedesk.profiles import ProfileError, load_profile
from moedesk.runner.checkpoints import (
    BEST,
    CheckpointError,
    checkpoint_path,
    delete_checkpoint,
    list_checkpoints,
    parse_at,
    prune_plan,
    resolve_checkpoint,
    split_ref,
)
from moedesk.train.checkpoint import BestTracker, load_checkpoint, save_checkpoint
from moedesk.train.data import LMData
from moedesk.train.emit import ListEmitter
from moedesk.train.loop import build_model, evaluate, train_lm

REPO = Path(__file__).resolve().parents[2]


def test_tracker_minimises_val_loss_and_maximises_accuracy():
    loss = BestTracker("val/loss")
    assert [loss.offer(s, v) for s, v in [(10, 3.0), (20, 2.0), (30, 2.5), (40, float("nan")),
                                          (50, 1.9)]] == [True, True, False, False, True]
    assert (loss.step, loss.value, loss.metric) == (50, 1.9, "val/loss")
    assert loss.score_at(50) == 1.9 and loss.score_at(40) is None
    acc = BestTracker("ff/accuracy")
    assert [acc.offer(s, v) for s, v in [(1, 0.5), (2, 0.7), (3, 0.6)]] == [True, True, False]
    assert acc.step == 2
    score = BestTracker("seed000_score")
    assert score.metric == "ff/seed000_score" and score.maximise
    restored = BestTracker("val/loss")
    restored.load_state_dict(loss.state_dict())
    assert (restored.step, restored.value) == (50, 1.9)
    other = BestTracker("val/loss")
    other.load_state_dict({"keep_best": "ff/accuracy", "step": 3, "value": 0.9})
    assert other.step is None  # another measure starts over


def test_pruning_never_removes_the_best_and_best_json_marks_it(tmp_path):
    best = BestTracker("val/loss")
    for step, loss in [(10, 3.0), (20, 1.0), (30, 2.0), (40, 2.5), (50, 2.7)]:
        best.offer(step, loss)
        save_checkpoint({"step": step}, tmp_path, step, best=best)
    # the supervisor prunes (keep = 2) once the rows are committed: never the marked best
    listed = [(c.step, str(c.path)) for c in list_checkpoints(tmp_path)]
    drop = prune_plan(tmp_path, listed, keep=2)
    assert drop == [10, 30]
    for step in drop:
        delete_checkpoint(checkpoint_path(tmp_path, step))
    assert [c.step for c in list_checkpoints(tmp_path)] == [20, 40, 50]
    mark = json.loads(best_checkpoint_file(tmp_path).read_text())
    assert mark == {"step": 20, "keep_best": "val/loss", "metric": "val/loss", "value": 1.0}
    sidecar = json.loads((tmp_path / "checkpoints" / "step_00000040.json").read_text())
    assert sidecar["metric"] == "val/loss" and sidecar["score"] == 2.5
    assert resolve_checkpoint(tmp_path, BEST).step == 20
    assert resolve_checkpoint(tmp_path, "best").step == 20
    assert resolve_checkpoint(tmp_path).step == 50
    assert resolve_checkpoint(tmp_path, 40).step == 40
    assert load_checkpoint(resolve_checkpoint(tmp_path, BEST).path)["step"] == 20


def test_best_references_and_their_errors(tmp_path):
    assert split_ref("run-3@best") == ("run-3", BEST)
    assert split_ref("7@120") == ("7", 120) and split_ref("7") == ("7", None)
    assert parse_at("BEST") == BEST and parse_at("") is None
    for bad, message in [("7@", "put a step number or 'best'"), ("@5", "name a run"),
                         ("7@latest", "use a step number or 'best'"),
                         ("7@²", "use a step number or 'best'")]:  # not int('²')
        with pytest.raises(CheckpointError, match=message):
            split_ref(bad)
    save_checkpoint({"step": 5}, tmp_path, 5)
    with pytest.raises(CheckpointError, match="does not keep one; set \\[checkpoint\\] keep_best"):
        resolve_checkpoint(tmp_path, BEST)
    best_checkpoint_file(tmp_path).write_text(json.dumps({"step": 99, "metric": "val/loss",
                                                          "value": 1.5}))
    with pytest.raises(CheckpointError, match="step 99, val/loss = 1.5\\) is missing"):
        resolve_checkpoint(tmp_path, BEST)


def test_keep_best_must_fit_the_kind():
    with pytest.raises(ProfileError, match="ternary runs allow 'ff/accuracy', 'seed000_score'"):
        load_profile(REPO / "profiles" / "tiny_ternary.toml", {"checkpoint.keep_best": "val/loss"})
    with pytest.raises(ProfileError, match="dense runs allow 'val/loss'"):
        load_profile(REPO / "profiles" / "tiny_dense.toml",
                     {"checkpoint.keep_best": "seed000_score"})
    with pytest.raises(ProfileError, match="allowed values: '', 'val/loss'"):
        load_profile(REPO / "profiles" / "tiny_dense.toml", {"checkpoint.keep_best": "loss"})


def prune_as_the_supervisor_does(run_dir: Path, keep: int) -> None:
    """The trainer never prunes: the supervisor applies `prune_plan` after each commit."""
    listed = [(c.step, str(c.path)) for c in list_checkpoints(run_dir)]
    for step in prune_plan(run_dir, listed, keep):
        delete_checkpoint(checkpoint_path(run_dir, step))


def overfitting_profile(tmp_path: Path, **overrides):
    """Training text cycles a->b->c, the held-out tail c->b->a: validation loss falls while
    the model learns which bytes occur, then rises as it learns the training order."""
    data = tmp_path / "cycle.txt"
    data.write_text("abc" * 600 + "cba" * 100)
    return load_profile(REPO / "profiles" / "tiny_dense.toml", {
        "data.source": "text", "data.path": str(data), "data.val_fraction": 0.15,
        "data.seq_len": 16, "model.n_layers": 1, "train.steps": 60, "train.eval_every": 5,
        "train.eval_batches": 2, "train.warmup_steps": 5, "train.min_lr_ratio": 1.0,
        "train.sample_every": 0, "checkpoint.every": 10, "checkpoint.keep": 1,
        "checkpoint.keep_best": "val/loss", **overrides})


@pytest.mark.slow
def test_the_best_checkpoint_survives_when_validation_loss_rises(tmp_path):
    profile = overfitting_profile(tmp_path)
    run_dir = tmp_path / "run"
    emitter = ListEmitter()
    assert train_lm(profile, run_dir, emitter) == "completed"
    val = [(e["step"], e["values"]["val/loss"]) for e in emitter.events
           if e["type"] == "metrics" and "val/loss" in e["values"]]
    best_step, best_loss = min(val, key=lambda sv: sv[1])
    assert 5 < best_step < 60 and val[-1][1] > best_loss + 0.5  # it really rose
    # keep = 1 keeps the newest; the best is kept besides it
    prune_as_the_supervisor_does(run_dir, profile.checkpoint.keep)
    assert [c.step for c in list_checkpoints(run_dir)] == [best_step, 60]
    found = resolve_checkpoint(run_dir, BEST)
    assert found.step == best_step
    checkpoints = [e for e in emitter.events if e["type"] == "checkpoint"]
    assert checkpoints[-1]["best_step"] == best_step and checkpoints[-1]["metric"] == "val/loss"
    assert next(e for e in checkpoints if e["step"] == best_step)["score"] == best_loss
    # the file really holds the model that scored best: evaluate it again
    state = load_checkpoint(found.path)
    model = build_model(profile)
    model.load_state_dict(state["model"])
    data = LMData(profile.data, profile.seed, profile.train.batch_size, 256)
    again = evaluate(model, data.val_batches(profile.train.eval_batches),
                     lambda: torch.autocast("cpu", enabled=False))
    assert math.isclose(again, best_loss, rel_tol=1e-5)
    # a resumed run keeps its best so far
    resumed = ListEmitter()
    assert train_lm(profile, run_dir, resumed, resume=found.path) == "completed"
    assert resolve_checkpoint(run_dir, BEST).step == best_step


@pytest.mark.slow
@pytest.mark.parametrize("keep_best, metric", [("ff/accuracy", "ff/accuracy"),
                                               ("seed000_score", "ff/seed000_score")])
def test_ternary_keeps_its_best_evaluation(tmp_path, keep_best, metric):
    from moedesk.train.ternary.loop import train_ternary

    profile = load_profile(REPO / "profiles" / "tiny_ternary.toml", {
        "train.steps": 40, "train.eval_every": 10, "checkpoint.keep": 1,
        "checkpoint.keep_best": keep_best})
    emitter = ListEmitter()
    assert train_ternary(profile, tmp_path, emitter) == "completed"
    scored = [(e["step"], e["values"][metric]) for e in emitter.events
              if e["type"] == "metrics" and metric in e["values"] and e["step"] > 0]
    assert [s for s, _ in scored][-1] == 40
    best_step, best_value = max(scored, key=lambda sv: (sv[1], -sv[0]))  # earliest of ties
    mark = json.loads(best_checkpoint_file(tmp_path).read_text())
    assert (mark["step"], mark["metric"]) == (best_step, metric)
    assert mark["value"] == pytest.approx(best_value)
    assert resolve_checkpoint(tmp_path, BEST).step == best_step
    prune_as_the_supervisor_does(tmp_path, profile.checkpoint.keep)
    assert {c.step for c in list_checkpoints(tmp_path)} == {best_step, 40}
    if metric == "ff/seed000_score":
        window = next(e["values"] for e in emitter.events if e["type"] == "metrics"
                      and e["step"] == best_step and "ff/goodness_delta" in e["values"])
        assert best_value == pytest.approx(window["ff/goodness_delta"]
                                           * (1 - window["moe/imbalance"]))
