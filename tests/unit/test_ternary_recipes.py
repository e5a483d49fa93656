"""Seed 000's training recipes for the ternary kind: each key does what it says."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from moedesk.profiles import ProfileError, load_profile, parse_overrides
from moedesk.train.ternary.batches import Curriculum, EpochBatches
from moedesk.train.ternary.data import load_data
from moedesk.train.ternary.experts import ExpertBank
from moedesk.train.ternary.model import TernaryMoE
from moedesk.train.ternary.router import random_trits

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "profiles" / "tiny_ternary.toml"


def _profile(*overrides: str):
    return load_profile(TINY, parse_overrides(list(overrides)))


def _batch(profile, seed: int = 0) -> torch.Tensor:
    data = load_data(profile)
    return data.train_BW[torch.randperm(len(data.train_BW),
                                        generator=torch.Generator().manual_seed(seed))[:32]]


class _Capture:
    """Wraps a bank's forward_pairs to keep what the training step fed it."""

    def __init__(self, model: TernaryMoE):
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        inner = model.bank.forward_pairs

        def forward_pairs(x_pos, x_neg, experts):
            self.calls.append((x_pos.clone(), x_neg.clone(), experts.clone()))
            return inner(x_pos, x_neg, experts)

        model.bank.forward_pairs = forward_pairs


@pytest.mark.slow
def test_augment_noise_replaces_about_that_share_of_training_trits_and_not_eval():
    x = _batch(_profile())
    model = TernaryMoE(_profile("ternary.augment_noise=0.3"))
    capture = _Capture(model)
    model.train_step(x)
    x_pos, _, _ = capture.calls[0]
    changed = float((x_pos[::4] != x[:, :48]).float().mean())  # K = 4 copies per sample
    assert abs(changed - 0.3 * 2 / 3) < 0.03  # a uniform draw keeps its value 1 time in 3
    clean = TernaryMoE(_profile())
    clean_capture = _Capture(clean)
    clean.train_step(x)
    assert torch.equal(clean_capture.calls[0][0][::4], x[:, :48])
    # evaluation never noises: same weights give the same accuracy with or without the key
    noisy_eval, plain_eval = TernaryMoE(_profile("ternary.augment_noise=0.9")), TernaryMoE(_profile())
    x_neg = plain_eval.negatives(x)
    assert noisy_eval.evaluate(x, x_neg, 32).accuracy == plain_eval.evaluate(x, x_neg, 32).accuracy


@pytest.mark.slow
def test_expert_dropout_skips_the_update_of_the_dropped_pairs():
    x = _batch(_profile())
    model = TernaryMoE(_profile("ternary.expert_dropout=0.5"))
    stats = model.train_step(x)
    assert stats.pairs == 32 * 4
    assert abs(stats.pairs_updated / stats.pairs - 0.5) < 0.12
    assert TernaryMoE(_profile()).train_step(x).pairs_updated == 32 * 4
    # at the bank: a dropped pair changes nothing; keeping one expert's pairs moves only it
    bank = ExpertBank(3, [12, 10, 8], 0.3, 0)
    gen = torch.Generator().manual_seed(0)
    x_pos, x_neg = random_trits((6, 12), gen), random_trits((6, 12), gen)
    experts = torch.tensor([0, 0, 1, 1, 2, 2])
    fwd = bank.forward_pairs(x_pos, x_neg, experts)
    before = [w.clone() for w in bank.weights_EIO]
    assert bank.update_contrastive(fwd, 0.5, 64, gen, torch.zeros(6, dtype=torch.bool)) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, bank.weights_EIO, strict=True))
    assert bank.update_contrastive(fwd, 0.5, 64, gen, experts == 1) > 0
    moved = [int((a != b).flatten(1).any(1).nonzero().flatten().tolist() == [1])
             for a, b in zip(before, bank.weights_EIO, strict=True)]
    assert moved == [1, 1]


@pytest.mark.slow
def test_several_negatives_per_positive_make_their_own_pairs():
    x = _batch(_profile())
    model = TernaryMoE(_profile("ternary.negative_samples_per_positive=3"))
    capture = _Capture(model)
    stats = model.train_step(x)
    x_pos, x_neg, experts = capture.calls[0]
    assert stats.pairs == 3 * 32 * 4 and len(x_neg) == 3 * 32 * 4
    assert int(stats.counts_E.sum()) == 32 * 4  # routing counted once per positive
    per_copy = x_neg.view(3, 32, 4, -1)[:, :, 0]
    assert torch.equal(x_pos.view(3, 32, 4, -1)[0], x_pos.view(3, 32, 4, -1)[2])
    assert not torch.equal(per_copy[0], per_copy[1]) and not torch.equal(per_copy[1], per_copy[2])
    assert torch.equal(experts.view(3, -1)[0], experts.view(3, -1)[1])


@pytest.mark.slow
def test_curriculum_pools_grow_from_the_easiest_samples(tmp_path):
    profile = _profile()
    data = load_data(profile)
    total = len(data.train_BW) + len(data.held_out_BW)
    scores = tmp_path / "scores.txt"
    # a score per window in file order: the reverse order, so the last windows are easiest
    scores.write_text("\n".join(str(total - i) for i in range(total)) + "\n")
    profile = _profile("ternary.curriculum_phases=3", "ternary.curriculum_by=scores",
                       f"ternary.curriculum_scores={scores}", "train.steps=90")
    curriculum = Curriculum(profile, data)
    n = len(data.train_BW)
    assert [curriculum.phase_of(s) for s in (1, 30, 31, 60, 61, 90)] == [0, 0, 1, 1, 2, 2]
    first, second = curriculum.pool(0), curriculum.pool(1)
    assert len(first) == math.ceil(n / 3) and len(second) == math.ceil(2 * n / 3)
    assert first.tolist() == list(range(n - len(first), n))  # the lowest scores
    assert set(first.tolist()) <= set(second.tolist()) and curriculum.pool(2) is None
    batches = EpochBatches(data.train_BW, 32, 0)
    batches.set_pool(first, new_epoch=False)
    seen = torch.cat([batches.next_batch()[0] for _ in range(batches.batches_per_epoch)])
    allowed = {tuple(r) for r in data.train_BW[first].tolist()}
    assert all(tuple(r) in allowed for r in seen.tolist())
    batches.set_pool(second, new_epoch=True)  # mid-epoch or not, a new pool starts fresh
    assert batches.position.batch == 0


@pytest.mark.slow
def test_typicality_curriculum_starts_with_the_most_typical_windows():
    profile = _profile("ternary.curriculum_phases=4", "ternary.curriculum_by=typicality")
    data = load_data(profile)
    from moedesk.train.ternary.baselines import Baselines

    score = Baselines(data.train_BW, 1).scores(data.train_BW)["frequency"]
    pool = Curriculum(profile, data).pool(0)
    rest = torch.ones(len(score), dtype=torch.bool)
    rest[pool] = False
    assert float(score[pool].min()) >= float(score[rest].max())


def test_curriculum_rules_name_the_key():
    with pytest.raises(ProfileError) as info:
        _profile("ternary.curriculum_phases=3")  # length, but text windows
    assert any(line.endswith("ternary.curriculum_by: got 'length'; text windows all have the "
                             "same length, so only trit-file sources can be ordered by it "
                             "(use 'typicality' or 'scores')") for line in info.value.lines)
    with pytest.raises(ProfileError) as info:
        _profile("ternary.curriculum_phases=3", "ternary.curriculum_by=scores")
    assert any("ternary.curriculum_scores: missing" in line for line in info.value.lines)


def test_schedule_rules_name_the_key():
    for overrides, want in [
        (["ternary.active_experts_schedule=[8]"], "ternary.active_experts_at: got []; needs one"),
        (["ternary.active_experts_schedule=[8, 6]", "ternary.active_experts_at=[20, 10]"],
         "ternary.active_experts_at: got [20, 10]; steps must increase"),
        (["ternary.active_experts_schedule=[40]", "ternary.active_experts_at=[10]"],
         "ternary.active_experts_schedule: got [40]; each entry must be in 1..27"),
        (["ternary.active_experts_schedule=[19]", "ternary.active_experts_at=[10]"],
         "ternary.active_experts_schedule: got [19]; the smallest 2 clusters hold 18"),
    ]:
        with pytest.raises(ProfileError) as info:
            _profile(*overrides)
        assert any(want in line for line in info.value.lines), (overrides, info.value.lines)


def _text_file(tmp_path: Path) -> Path:
    path = tmp_path / "other.txt"
    path.write_bytes(b"".join(f"line {i}: the value {i * 7 % 13} is fine.\n".encode()
                              for i in range(2000)))
    return path


@pytest.mark.slow
def test_sources_mix_by_weight_and_keep_their_held_out_parts(tmp_path):
    text = _text_file(tmp_path)
    profile = _profile(f'data.sources=[{{name = "grammar", weight = 3.0}}, '
                       f'{{name = "log", source = "text", path = "{text}", weight = 1.0}}]')
    data = load_data(profile)
    assert data.names == ("grammar", "log") and data.weights == (3.0, 1.0)
    assert set(data.held_out_source_B.tolist()) == {0, 1}
    assert "letter" in data.class_names and "noun" in data.class_names
    batches = EpochBatches(data.train_BW, 32, 0, data.train_source_B, data.weights)
    order = batches._epoch_order()
    share = float((data.train_source_B[order] == 0).double().mean())
    assert abs(share - 0.75) < 0.01  # 3 : 1, whatever the sources' sizes
    assert len(order) == len(data.train_BW)


def test_source_entries_are_validated(tmp_path):
    bad = ('data.sources=[{name = "a"}, {name = "a", weight = 0}, '
           '{name = "b c", source = "text"}, {name = "d", source = "csv", extra = 1}]')
    with pytest.raises(ProfileError) as info:
        _profile(bad)
    lines = "\n".join(info.value.lines)
    for want in ("data.sources[1].name: got 'a'; names must be unique",
                 "data.sources[1].weight: got 0; must be a number > 0",
                 "data.sources[2].name: got 'b c'; required",
                 "data.sources[2].path: missing; source = 'text' needs a file",
                 "data.sources[3].extra: unknown key",
                 "data.sources[3].source: got 'csv'; allowed values: 'grammar', 'text', 'trits'"):
        assert want in lines, want
    with pytest.raises(ProfileError) as info:
        load_profile(REPO / "profiles" / "tiny_topk.toml",
                     parse_overrides(['data.sources=[{name = "a"}]']))
    assert any("only ternary runs read a source mix" in line for line in info.value.lines)


def test_relative_source_paths_are_taken_from_the_profile_folder(tmp_path):
    _text_file(tmp_path)
    profile_path = tmp_path / "p.toml"
    profile_path.write_text(TINY.read_text() + '\n[[data.sources]]\nname = "log"\n'
                            'source = "text"\npath = "other.txt"\n')
    profile = load_profile(profile_path)
    assert profile.data.sources[0]["path"] == str((tmp_path / "other.txt").resolve())
