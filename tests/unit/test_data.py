"""Data: the grammar corpus and its labels, file sources, split, seeded batching."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from moedesk.profiles.schema import DataSection
from moedesk.train import grammar
from moedesk.train.data import BYTE_CLASS_LABELS, DataError, LMData, load_corpus, unigram_entropy
from moedesk.train.grammar import LABEL_NAMES, grammar_corpus


def test_grammar_corpus_is_deterministic_per_seed():
    a_text, a_labels = grammar_corpus(7, 300)
    b_text, b_labels = grammar_corpus(7, 300)
    c_text, _ = grammar_corpus(8, 300)
    assert np.array_equal(a_text, b_text) and np.array_equal(a_labels, b_labels)
    assert not np.array_equal(a_text[:500], c_text[:500])
    assert bytes(a_text).count(b"\n") == 300
    # the cache hands out copies: a caller's edits never leak into the next corpus
    a_text[:] = 0
    assert np.array_equal(grammar_corpus(7, 300)[0], b_text)


def words_by_label() -> dict[str, set[str]]:
    past = {p for _, p, _ in grammar.TRANSITIVE + grammar.INTRANSITIVE}
    return {
        "subject_pronoun": {w for w, _ in grammar.SUBJECT_PRONOUNS},
        "object_pronoun": set(grammar.OBJECT_PRONOUNS),
        "determiner": set(grammar.DETERMINERS) | {"an"},
        "noun": set(grammar.NOUNS), "adjective": set(grammar.ADJECTIVES),
        "verb_inf": {i for i, _, _ in grammar.TRANSITIVE + grammar.INTRANSITIVE},
        "verb_past": past, "verb_3sg": {s for _, _, s in grammar.TRANSITIVE + grammar.INTRANSITIVE},
        "auxiliary": {"will", "do", "does", "did"}, "preposition": set(grammar.PREPOSITIONS),
        "adverb": set(grammar.ADVERBS) | {"not"}, "conjunction": set(grammar.CONJUNCTIONS),
    }


def test_every_byte_carries_the_class_of_its_word():
    text, labels = grammar_corpus(3, 400)
    assert len(text) == len(labels) and labels.max() < len(LABEL_NAMES)
    vocab, seen = words_by_label(), set()
    # split the byte stream into runs of one label; each run must be one word of that class
    starts = np.flatnonzero(np.diff(labels.astype(int), prepend=-1))
    ends = np.append(starts[1:], len(labels))
    for s, e in zip(starts, ends, strict=True):
        name, chunk = LABEL_NAMES[labels[s]], bytes(text[s:e]).decode()
        seen.add(name)
        if name == "space":
            assert set(chunk) <= {" ", "\n"}, chunk
        elif name == "punct":
            assert set(chunk) <= set(".,?"), chunk
        else:
            for word in chunk.split(" ") if " " in chunk else [chunk]:
                assert word.lower() in {w.lower() for w in vocab[name]}, (name, word)
    assert seen == set(LABEL_NAMES)


def test_grammar_agreement_rules_hold():
    text = bytes(grammar_corpus(5, 2000)[0]).decode()
    assert re.search(r"\b[Aa] [aeiou]", text) is None          # "an apple", never "a apple"
    # a sentence-initial pronoun subject takes the verb form that agrees with it
    assert re.search(r"^(He|She|It) (walk|see|like)\b", text, re.M) is None
    assert re.search(r"^(I|We|They) (walks|sees|likes)\b", text, re.M) is None
    assert re.search(r"^(He|She|It) (walks|sees|likes)\b", text, re.M) is not None
    assert re.search(r"^(I|We|They) (walk|see|like)\b", text, re.M) is not None


def test_text_source_labels_byte_classes(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("Hi 42, ok!\n")
    corpus = load_corpus(DataSection(source="text", path=str(path)))
    assert bytes(corpus.tokens.astype(np.uint8)) == b"Hi 42, ok!\n"
    assert corpus.label_names == BYTE_CLASS_LABELS
    names = [corpus.label_names[i] for i in corpus.labels]
    assert names == ["letter", "letter", "space", "digit", "digit", "punct", "space", "letter",
                     "letter", "punct", "space"]


def test_token_sources_npy_and_bin(tmp_path):
    tokens = np.arange(1000) % 300
    np.save(tmp_path / "t.npy", tokens)
    tokens.astype(np.uint16).tofile(tmp_path / "t.bin")
    for name in ("t.npy", "t.bin"):
        corpus = load_corpus(DataSection(source="tokens", path=str(tmp_path / name)))
        assert np.array_equal(corpus.tokens, tokens)
    cfg = DataSection(source="tokens", path=str(tmp_path / "t.npy"), seq_len=8)
    with pytest.raises(DataError, match="vocab_size"):
        LMData(cfg, seed=0, batch_size=2, vocab_size=256)
    assert LMData(cfg, seed=0, batch_size=2, vocab_size=300).splits["val"].numel() == 100


def test_split_and_targets_are_shifted_inputs():
    cfg = DataSection(seq_len=16, grammar_sentences=300, val_fraction=0.1)
    data = LMData(cfg, seed=0, batch_size=4, vocab_size=256)
    full = load_corpus(cfg).tokens
    n_val = math.ceil(len(full) * 0.1)
    assert torch.equal(data.splits["val"], torch.from_numpy(full[-n_val:]))
    starts = data.sample_starts()
    x, y = data.windows("train", starts)
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row, s in zip(x, starts.tolist(), strict=True):
        assert torch.equal(row, torch.from_numpy(full[s:s + 16]))
    labels = data.window_labels("train", starts)
    assert labels.shape == (4, 16)


def test_batches_depend_only_on_the_seed_and_resume_from_state():
    cfg = DataSection(seq_len=16, grammar_sentences=300)
    a, b, c = (LMData(cfg, seed=s, batch_size=4, vocab_size=256) for s in (1, 1, 2))
    first_a = [a.train_batch()[0] for _ in range(3)]
    assert all(torch.equal(p, b.train_batch()[0]) for p in first_a)
    assert not torch.equal(first_a[0], c.train_batch()[0])
    state = a.state_dict()
    ahead = [a.train_batch()[0] for _ in range(3)]
    c.load_state_dict(state)
    assert all(torch.equal(p, c.train_batch()[0]) for p in ahead)


def test_validation_batches_are_fixed_whatever_the_seed():
    cfg = DataSection(seq_len=16, grammar_sentences=300)
    a = LMData(cfg, seed=1, batch_size=4, vocab_size=256)
    b = LMData(cfg, seed=99, batch_size=4, vocab_size=256)
    a.train_batch()
    for (xa, ya), (xb, yb) in zip(a.val_batches(3), b.val_batches(3), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    starts = a.val_starts(12)
    assert starts[0] == 0 and starts[-1] == len(a.splits["val"]) - 17
    assert len(set(starts.tolist())) == 12


def test_unigram_entropy_in_nats():
    assert unigram_entropy(np.array([0, 1, 2, 3] * 10)) == pytest.approx(math.log(4))
    assert unigram_entropy(np.array([5] * 10)) == pytest.approx(0.0)
    assert unigram_entropy(np.array([0, 0, 0, 1])) == pytest.approx(
        -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))


def test_too_little_data_is_a_clear_error(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("tiny text")
    with pytest.raises(DataError, match="window"):
        LMData(DataSection(source="text", path=str(path), seq_len=16), 0, 2, 256)
