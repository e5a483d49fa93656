"""Samples during training (`[train] sample_every`): the events, their seeds, and a training
run that is exactly the same with them as without them."""

from __future__ import annotations

from pathlib import Path

import pytest

from moedesk.profiles import ProfileError, load_profile
from moedesk.train.data import LMData
from moedesk.train.emit import ListEmitter
from moedesk.train.generate import load_sampler, sample_seed
from moedesk.train.loop import train_lm
from moedesk.train.sampling import SampleSettings, sentence_start

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "profiles" / "tiny_topk.toml"


def model_losses(events: list[dict]) -> list[tuple[int, float]]:
    return [(e["step"], e["values"]["train/loss"]) for e in events
            if e["type"] == "metrics" and "train/loss" in e["values"]]


@pytest.mark.slow
def test_samples_leave_training_unchanged_and_can_be_written_again(tmp_path):
    common = {"train.steps": 30, "checkpoint.every": 15, "checkpoint.keep": 0,
              "train.sample_tokens": 10}
    plain, sampled = ListEmitter(), ListEmitter()
    assert train_lm(load_profile(TINY, {**common, "train.sample_every": 0}), tmp_path / "a",
                    plain) == "completed"
    profile = load_profile(TINY, {**common, "train.sample_every": 15,
                                  "train.sample_prompts": ["The dog", "A"]})
    assert train_lm(profile, tmp_path / "b", sampled) == "completed"
    assert model_losses(sampled.events) == model_losses(plain.events)
    samples = [e for e in sampled.events if e["type"] == "sample"]
    assert [(s["step"], s["prompt"]) for s in samples] == [(15, "The dog"), (15, "A"),
                                                           (30, "The dog"), (30, "A")]
    assert [s["seed"] for s in samples] == [sample_seed(1, st, i) for st in (15, 30)
                                            for i in (0, 1)]
    assert all(s["max_new_tokens"] == 10 and s["temperature"] == 0.8 and s["seconds"] > 0
               for s in samples)
    # the checkpoint of a sampling step writes the same continuation again
    sampler = load_sampler(tmp_path / "b" / "checkpoints" / "step_00000015.pt", "cpu")
    first = samples[0]
    assert sampler.complete(first["prompt"], SampleSettings(10, 0.8, seed=first["seed"])) == \
        first["text"]


@pytest.mark.slow
def test_the_default_prompt_starts_a_line_of_the_validation_text(tmp_path):
    profile = load_profile(TINY, {"train.steps": 4, "train.warmup_steps": 1, "train.sample_every": 4,
                                  "train.sample_tokens": 4, "checkpoint.every": 0})
    emitter = ListEmitter()
    assert train_lm(profile, tmp_path, emitter) == "completed"
    val = LMData(profile.data, profile.seed, 1, 256).splits["val"]
    expected = sentence_start(bytes(val[:4096].tolist())).decode()
    (sample,) = [e for e in emitter.events if e["type"] == "sample"]
    assert sample["prompt"] == expected and len(expected.split()) == 3


def test_sample_prompts_are_checked_with_the_profile():
    with pytest.raises(ProfileError, match=r"train.sample_prompts\[1\]: is empty"):
        load_profile(TINY, {"train.sample_prompts": ["ok", ""]})
    with pytest.raises(ProfileError, match="must be a list of strings"):
        load_profile(TINY, {"train.sample_prompts": "The"})
    with pytest.raises(ProfileError, match=r"sample_prompts\[0\]: is 70 tokens; must fit"):
        load_profile(TINY, {"train.sample_prompts": ["x" * 70]})
    with pytest.raises(ProfileError, match="train.sample_every: got -1"):
        load_profile(TINY, {"train.sample_every": -1})
