"""Negative generators and the non-learned scorers they are meant to defeat."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moedesk.profiles import ProfileError, load_profile, parse_overrides
from moedesk.train.ternary.baselines import Baselines, pair_accuracy
from moedesk.train.ternary.data import eval_set, load_data
from moedesk.train.ternary.negatives import (
    corrupt,
    hybrid,
    make_negatives,
    shuffle,
    shuffle_words,
    symbols_of,
)
from moedesk.train.ternary.router import random_trits
from moedesk.train.ternary.trits import decode_balanced, encode_balanced

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "profiles" / "tiny_ternary.toml"
SYMBOLS = symbols_of("balanced", "grammar")


def _windows(*texts: bytes, tail: int = 2) -> torch.Tensor:
    """Balanced-encoded byte windows plus `tail` trits of a partial next byte."""
    rows = [torch.cat([encode_balanced(t), torch.tensor([1, -1][:tail], dtype=torch.int8)])
            for t in texts]
    return torch.stack(rows)


def _bytes(x_W: torch.Tensor) -> bytes:
    return decode_balanced(x_W[:x_W.numel() // 6 * 6])


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_corrupt_changes_exactly_the_share_of_expert_input_positions():
    x = random_trits((50, 40), _gen(1))
    neg = corrupt(x, input_dim=30, corruption=0.1, generator=_gen(2))
    changed = neg != x
    assert changed.sum(1).tolist() == [3] * 50  # round(0.1 * 30), each a real change
    assert not changed[:, 30:].any()  # never beyond the experts' input


def test_hybrid_is_a_prefix_of_the_sample_then_another_samples_suffix():
    x = random_trits((16, 6 * 10 + 2), _gen(3))
    neg = hybrid(x, 6, _gen(4))
    for b in range(16):
        cut = next(i for i in range(x.shape[1]) if neg[b, i] != x[b, i]) // 6 * 6
        assert 6 <= cut <= 6 * 9  # at a symbol boundary, 1..U-1 symbols kept
        partners = [p for p in range(16) if p != b and torch.equal(neg[b, cut:], x[p, cut:])]
        assert partners  # the rest, tail included, is a different sample's, in place
        assert torch.equal(neg[b, :cut], x[b, :cut])
    with pytest.raises(ValueError, match="at least 2 samples"):
        hybrid(x[:1], 6, _gen(0))


def test_shuffle_permutes_whole_symbols_and_keeps_the_tail():
    x = _windows(b"the cat saw a dog", b"abcdefghijklmnopq")
    neg = shuffle(x, 6, _gen(5))
    for b in range(2):
        assert sorted(_bytes(neg[b])) == sorted(_bytes(x[b]))
        assert _bytes(neg[b]) != _bytes(x[b])
        assert torch.equal(neg[b, -2:], x[b, -2:])


def test_shuffle_words_moves_only_interior_words():
    x = _windows(b"ouse the cat saw a do", b"He finds their young ", b"xx verylongword yy zz",
                 b"abcdefghijklmnopqrstu")
    for seed in range(20):
        neg = shuffle_words(x, SYMBOLS, _gen(seed))
        text = [_bytes(row) for row in neg]
        # the partial first and last words stay; the interior words are reordered
        assert text[0].startswith(b"ouse ") and text[0].endswith(b" do")
        assert sorted(text[0].split()) == sorted(b"ouse the cat saw a do".split())
        assert text[0] != b"ouse the cat saw a do"  # an identity draw becomes a rotation
        assert text[1] == b"He their finds young "  # two interior words: always swapped
        assert text[2] == b"xx verylongword yy zz" or text[2] == b"xx yy verylongword zz"
        assert text[3] == b"abcdefghijklmnopqrstu"  # no interior word: unchanged
    with pytest.raises(ValueError, match="balanced encoding"):
        shuffle_words(x, symbols_of("letters", "grammar"), _gen(0))


def test_newlines_separate_words_too():
    x = _windows(b"ran.\nWe laughed. Dog ")
    seen = {_bytes(shuffle_words(x, SYMBOLS, _gen(s))[0]) for s in range(10)}
    assert b"ran.\nlaughed. We Dog " in seen


def test_generators_are_reproducible_from_the_generator_seed():
    x = _windows(b"the cat saw a dog in ", b"a tree near the house", b"she sings so quietly ")
    for kind in ("corrupt", "hybrid", "shuffle", "shuffle_words"):
        a = make_negatives(x, kind, SYMBOLS, 64, 0.1, _gen(7))
        b = make_negatives(x, kind, SYMBOLS, 64, 0.1, _gen(7))
        assert torch.equal(a, b), kind
        assert not torch.equal(a, x), kind


def test_bigram_sees_trit_order_that_frequencies_cannot():
    # positives: x1 = x0; negatives: x1 = -x0. Every position's marginal is the same.
    first = random_trits((4000, 1), _gen(8))
    rest = random_trits((4000, 6), _gen(9))
    train = torch.cat([first, first, rest], 1)
    pos = train[:500]
    neg = torch.cat([pos[:, :1], -pos[:, :1], pos[:, 2:]], 1)
    acc = Baselines(train, trits_per_symbol=1).accuracies(pos, neg)
    assert abs(acc["template"] - 0.5) < 0.05 and abs(acc["frequency"] - 0.5) < 0.05
    assert acc["bigram"] > 0.6  # the x0 = 0 pairs (a third) are identical: ties
    assert pair_accuracy(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0])) == 0.75


@pytest.fixture(scope="module")
def tiny_data():
    data = load_data(load_profile(TINY))
    return data, Baselines(data.train_BW, 6)


@pytest.mark.parametrize("kind", ["hybrid", "shuffle", "shuffle_words"])
def test_hard_generators_put_the_non_learned_scorers_near_chance(tiny_data, kind):
    data, scorers = tiny_data
    profile = load_profile(TINY, parse_overrides([f"ternary.negatives={kind}",
                                                  "train.eval_batches=16"]))
    pairs = eval_set(profile, data)
    acc = scorers.accuracies(pairs.pos_BW, pairs.neg_BW)
    for name in ("template", "frequency", "bigram"):
        assert abs(acc[name] - 0.5) < 0.08, (kind, name, acc)


def test_corrupt_negatives_are_easy_for_the_same_scorers(tiny_data):
    data, scorers = tiny_data
    pairs = eval_set(load_profile(TINY), data)
    acc = scorers.accuracies(pairs.pos_BW, pairs.neg_BW)
    assert acc["frequency"] > 0.9 and acc["bigram"] > 0.9


def test_profiles_refuse_generators_their_data_cannot_feed():
    def problems(*overrides):
        with pytest.raises(ProfileError) as exc:
            load_profile(TINY, parse_overrides(list(overrides)))
        return exc.value.lines

    lines = problems("ternary.negatives=shuffle_words", "ternary.encoding=letters")
    assert any("ternary.negatives: got 'shuffle_words' with ternary.encoding = 'letters'" in line
               for line in lines)
    lines = problems("ternary.negatives=hybrid", "train.batch_size=1")
    assert any("a hybrid splices two samples" in line for line in lines)
    lines = problems("ternary.negatives=noise")
    assert any("allowed values: 'corrupt', 'hybrid', 'shuffle', 'shuffle_words'" in line
               for line in lines)
