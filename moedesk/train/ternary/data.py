"""Trit samples for the ternary kind: loading, the held-out split, epochs and negatives.

A sample is `sample_width` trits: the router reads its first `specialization_dim`, the
experts its first `input_dim`. Text (the grammar corpus or a file) is cut into
non-overlapping windows of just enough bytes and encoded (`ternary.encoding`); the seeds'
trit-sample file gives samples directly, each truncated or zero-padded to the width.
The last `data.val_fraction` of the samples is held out.

Epoch order is a permutation drawn from (seed, epoch) alone, so the data position is
just (epoch, batch in epoch). Negatives come from `negatives.py` (`ternary.negatives`);
the held-out negatives are drawn once from their own seed.

Shape letters: B samples (a batch, or the held-out set), W trits per sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from moedesk.profiles.schema import Profile, TernarySection
from moedesk.train.ternary.negatives import make_negatives, symbols_of
from moedesk.train.ternary.trits import ENCODERS, TritFileError, read_trit_samples


class TernaryDataError(Exception):
    """Data a ternary run cannot use; the message says which source and why."""


def derived_seed(seed: int, stream: int) -> int:
    """Seeds of independent generators (router, weights, training, epochs) from one seed."""
    return (seed * 1_000_003 + 7919 * stream) % 2**63


def sample_width(cfg: TernarySection) -> int:
    return max(cfg.input_dim, cfg.specialization_dim)


def _text_bytes(profile: Profile) -> bytes:
    data = profile.data
    if data.source == "grammar":
        from moedesk.train.grammar import grammar_corpus

        text, _labels = grammar_corpus(data.grammar_seed, data.grammar_sentences)
        return text.tobytes()
    try:
        return Path(data.path).read_bytes()
    except OSError as exc:
        raise TernaryDataError(f"cannot read text file {data.path}: {exc.strerror or exc}"
                               ) from None


def encode_windows(text: bytes, width: int, encoding: str) -> Tensor:
    """Non-overlapping byte windows, each encoded and cut to `width` trits: int8 [N, width]."""
    encode, trits_per_byte = ENCODERS[encoding]
    window = math.ceil(width / trits_per_byte)
    count = len(text) // window
    trits = encode(text[:count * window])
    return trits.reshape(count, window * trits_per_byte)[:, :width].contiguous()


def fit_samples(samples: list[Tensor], width: int) -> Tensor:
    """Trit-file samples truncated or zero-padded to `width`: int8 [N, width]."""
    out = torch.zeros(len(samples), width, dtype=torch.int8)
    for i, sample in enumerate(samples):
        n = min(width, sample.numel())
        out[i, :n] = sample[:n]
    return out


def load_samples(profile: Profile) -> tuple[Tensor, Tensor]:
    """(train, held-out) samples, int8 [N, width] each."""
    width = sample_width(profile.ternary)
    if profile.data.source == "trits":
        try:
            samples = fit_samples(read_trit_samples(profile.data.path), width)
        except TritFileError as exc:
            raise TernaryDataError(str(exc)) from None
    else:
        samples = encode_windows(_text_bytes(profile), width, profile.ternary.encoding)
    held_out = max(1, math.floor(len(samples) * profile.data.val_fraction))
    train, val = samples[:-held_out], samples[-held_out:]
    if len(train) < profile.train.batch_size:
        raise TernaryDataError(f"{len(train)} training samples of {width} trits from "
                               f"data.source = {profile.data.source!r}; need at least "
                               f"train.batch_size = {profile.train.batch_size}")
    return train, val


def held_out_pairs(profile: Profile, held_out: Tensor, pair_seed: int = 0
                   ) -> tuple[Tensor, Tensor]:
    """The evaluation set: the first eval_batches x batch_size held-out samples and their
    negatives, drawn from a fixed seed (`pair_seed`, 0 in training) so every run over the
    same data sees the same pairs."""
    x_BW = held_out[:profile.train.eval_batches * profile.train.batch_size]
    if profile.ternary.negatives == "hybrid" and len(x_BW) < 2:
        raise TernaryDataError(f"{len(x_BW)} held-out sample; hybrid negatives need 2 "
                               "(raise data.val_fraction)")
    generator = torch.Generator().manual_seed(derived_seed(pair_seed, 3))
    t = profile.ternary
    return x_BW, make_negatives(x_BW, t.negatives, symbols_of(t.encoding, profile.data.source),
                                t.input_dim, t.corruption, generator)


@dataclass
class DataPosition:
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches taken from the current epoch


class EpochBatches:
    """Fixed-size batches over the training samples, one shuffled pass per epoch.

    The tail that does not fill a batch is left out of that epoch (a different tail
    each epoch, since the order changes)."""

    def __init__(self, train: Tensor, batch_size: int, seed: int):
        self.train = train
        self.batch_size = batch_size
        self.seed = seed
        self.batches_per_epoch = len(train) // batch_size
        self.position = DataPosition()
        self._order: Tensor | None = None
        self._order_epoch = -1

    def _epoch_order(self) -> Tensor:
        if self._order_epoch != self.position.epoch:
            seed = derived_seed(self.seed, 1000 + self.position.epoch)
            generator = torch.Generator().manual_seed(seed)
            self._order = torch.randperm(len(self.train), generator=generator)
            self._order_epoch = self.position.epoch
        assert self._order is not None
        return self._order

    def next_batch(self) -> tuple[Tensor, bool]:
        """The next batch and whether it ends an epoch."""
        start = self.position.batch * self.batch_size
        batch = self.train[self._epoch_order()[start:start + self.batch_size]]
        self.position.batch += 1
        ends_epoch = self.position.batch == self.batches_per_epoch
        if ends_epoch:
            self.position = DataPosition(self.position.epoch + 1, 0)
        return batch, ends_epoch

    def state_dict(self) -> dict:
        return {"epoch": self.position.epoch, "batch": self.position.batch}

    def load_state_dict(self, state: dict) -> None:
        self.position = DataPosition(int(state["epoch"]), int(state["batch"]))
