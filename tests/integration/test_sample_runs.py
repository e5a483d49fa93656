"""Sampling, samples during training and keep-best through the real CLI and supervisor.

One topk run trains on text whose held-out tail reverses the training order (a->b->c in
training, c->b->a held out), so its validation loss falls and then rises: the best
checkpoint is in the middle, and `[checkpoint] keep = 1` would prune it without keep-best.
"""

from __future__ import annotations

import json

import pytest

from moedesk.paths import db_path
from moedesk.store import Reader
from tests.conftest import PROFILES, moedesk

pytestmark = pytest.mark.slow

SETTINGS = {"data.source": '"text"', "data.val_fraction": "0.15", "data.seq_len": "16",
            "train.steps": "60", "train.eval_every": "10", "train.eval_batches": "2",
            "train.warmup_steps": "5", "train.min_lr_ratio": "1.0", "train.lr": "3e-3",
            "train.sample_every": "20", "train.sample_tokens": "12",
            "checkpoint.every": "30", "checkpoint.keep": "1",
            "checkpoint.keep_best": '"val/loss"'}


def sets(path) -> list[str]:
    out = ["--set", f'data.path="{path}"']
    for key, value in SETTINGS.items():
        out += ["--set", f"{key}={value}"]
    return out


def test_samples_best_checkpoint_and_at_best_everywhere(home, tmp_path):
    data = tmp_path / "cycle.txt"
    data.write_text("abc" * 600 + "cba" * 100)
    profile = str(PROFILES / "tiny_topk.toml")
    run = moedesk("run", profile, *sets(data), home=home, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr

    with Reader(db_path(home)) as reader:
        val = dict(reader.series(1, "val/loss"))
        best_step = min(val, key=val.get)
        assert 10 <= best_step < 60 and val[60] > val[best_step]
        best = reader.best_checkpoint(1)
        assert best["step"] == best_step and best["metric"] == "val/loss"
        assert best["score"] == pytest.approx(val[best_step], rel=1e-9)
        assert sum(c["best"] for c in reader.checkpoints(1)) == 1
        samples = sorted(reader.samples(1), key=lambda r: r["step"])
    assert [s["step"] for s in samples] == [20, 40, 60]
    assert all(s["prompt"] and s["temperature"] == 0.8 and s["max_new_tokens"] == 12
               for s in samples)
    assert len({s["seed"] for s in samples}) == 3
    on_disk = sorted(p.name for p in (home / "1" / "checkpoints").glob("step_*.pt"))
    assert on_disk == sorted({f"step_{best_step:08d}.pt", "step_00000060.pt"})

    # the CLI writes the stored sample again from the same step's checkpoint
    last = samples[-1]
    again = moedesk("sample", "1@60", "--prompt", last["prompt"], "--seed", str(last["seed"]),
                    "--temperature", "0.8", "--max-new-tokens", "12", "--json", home=home)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["text"] == last["text"]

    routed = moedesk("route", "1@best", "--text", "abccba", "--json", home=home)
    assert routed.returncode == 0, routed.stderr
    out = json.loads(routed.stdout)
    assert out["step"] == best_step and len(out["tokens"]) == 6

    # a fork from the best checkpoint records it as its parent step
    fork = moedesk("run", profile, *sets(data), "--from", "1@best", "--stop-at",
                   str(best_step + 1), home=home, timeout=600)
    assert fork.returncode in (0, 4), fork.stdout + fork.stderr
    with Reader(db_path(home)) as reader:
        assert (reader.run(2).row["parent_id"], reader.run(2).row["parent_step"]) == \
            (1, best_step)

    # resume --at best continues from it, dropping the later rows, and ends where it did
    resumed = moedesk("resume", "1", "--at", "best", home=home, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"from step {best_step}" in resumed.stdout
    with Reader(db_path(home)) as reader:
        assert reader.resumes(1)[-1]["from_step"] == best_step
        assert reader.best_checkpoint(1)["step"] == best_step
        again_samples = sorted(reader.samples(1), key=lambda r: r["step"])
    assert [(s["step"], s["text"]) for s in again_samples] == \
        [(s["step"], s["text"]) for s in samples]

    bad = moedesk("resume", "1", "--at", "newest", home=home)
    assert bad.returncode == 2 and "use a step number or 'best'" in bad.stderr
