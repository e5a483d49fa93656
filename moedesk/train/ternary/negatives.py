"""Negative samples for Forward-Forward: what a positive is contrasted with (`ternary.negatives`).

- corrupt: the seeds' GenerateNegativeSample; `corruption` of the expert-input positions
  each moved to one of their two other trit values. Position by position this is easy to
  detect (a per-position frequency table scores 0.98 on text), so it measures little.
- hybrid: the positive up to a random symbol boundary, then another real window of the
  batch (Hinton's Forward-Forward hybrids, in one dimension). Every position holds a
  real symbol from a real window at that position, so per-position statistics match the
  positives exactly; only the junction and the halves' mutual consistency differ.
- shuffle: the window's whole symbols (bytes) in a random order. Same per-position
  statistics; the order inside the window is gone.
- shuffle_words: the window's complete interior words (each with its trailing space or
  newline) in a new order; the partial first and last words stay where they are, so the
  window's edges carry no tell-tale. Needs the balanced encoding of text.

A symbol is `trits_per_symbol` trits: 6 for the balanced encoding (one byte), 1 for the
letters encoding and for trit files. Every generator is vectorized over the batch and
drawn from the caller's generator, so a seeded run makes the same negatives.

Shape letters: B samples, W trits per sample, T whole symbols per sample (a window's byte
positions: its tokens), X trits per symbol, Z word tokens per sample (at most T + 1),
U positions drawn at random (the trits a corrupt negative changes); 2 the two word
separators.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from moedesk.train.ternary.trits import ENCODERS, gf3_add

NEGATIVES = ("corrupt", "hybrid", "shuffle", "shuffle_words")
WORD_SEPARATORS = b" \n"


@dataclass(frozen=True)
class Symbols:
    """How trits group into symbols, and which symbols separate words."""

    trits_per_symbol: int
    separators_2X: Tensor | None  # int8 [separators, X]; None: words are unknown


def symbols_of(encoding: str, source: str) -> Symbols:
    """Symbols of a profile's data: bytes for encoded text, single trits for trit files."""
    if source == "trits":
        return Symbols(1, None)
    encode, trits_per_byte = ENCODERS[encoding]
    if encoding != "balanced":  # letters maps spaces and lower case alike to 0
        return Symbols(trits_per_byte, None)
    return Symbols(trits_per_byte, encode(WORD_SEPARATORS).view(len(WORD_SEPARATORS), -1))


def corrupt(x_BW: Tensor, input_dim: int, corruption: float, generator: torch.Generator
            ) -> Tensor:
    """round(corruption * input_dim) (at least 1) distinct expert-input positions per
    sample, each moved to one of its two other trit values (U = those positions)."""
    batch = x_BW.shape[0]
    dim = min(input_dim, x_BW.shape[1])
    n_changed = min(dim, max(1, round(corruption * dim)))
    where_BU = torch.rand(batch, dim, generator=generator).argsort(dim=1)[:, :n_changed]
    shift_BU = (torch.randint(0, 2, (batch, n_changed), generator=generator) * 2 - 1)
    out = x_BW.clone()
    out.scatter_(1, where_BU, gf3_add(out.gather(1, where_BU), shift_BU.to(torch.int8)))
    return out


def _split(x_BW: Tensor, per: int) -> tuple[Tensor, Tensor]:
    """(whole symbols [B, U, X], the partial tail [B, W - U*X])."""
    batch, width = x_BW.shape
    whole = width // per
    return x_BW[:, :whole * per].reshape(batch, whole, per), x_BW[:, whole * per:]


def hybrid(x_BW: Tensor, per: int, generator: torch.Generator) -> Tensor:
    """Each sample up to a random symbol boundary (1..U-1 symbols), then a different
    sample of the batch from there on (the partial tail goes with the second part)."""
    batch, width = x_BW.shape
    whole = width // per
    if batch < 2 or whole < 2:
        raise ValueError(f"hybrid negatives need at least 2 samples and 2 symbols, got a "
                         f"batch of {batch} with {whole} symbols")
    partner_B = (torch.arange(batch) + torch.randint(1, batch, (batch,), generator=generator)
                 ) % batch
    cut_B1 = torch.randint(1, whole, (batch, 1), generator=generator) * per
    second_BW = torch.arange(width).unsqueeze(0) >= cut_B1
    return torch.where(second_BW, x_BW[partner_B], x_BW)


def shuffle(x_BW: Tensor, per: int, generator: torch.Generator) -> Tensor:
    """The whole symbols of each sample in a random order (the partial tail stays)."""
    symbols_BTX, tail = _split(x_BW, per)
    batch, whole, _ = symbols_BTX.shape
    order_BT = torch.rand(batch, whole, generator=generator).argsort(dim=1)
    mixed_BTX = symbols_BTX.gather(1, order_BT.unsqueeze(-1).expand_as(symbols_BTX))
    return torch.cat([mixed_BTX.reshape(batch, -1), tail], dim=1)


def shuffle_words(x_BW: Tensor, symbols: Symbols, generator: torch.Generator) -> Tensor:
    """The complete interior words of each sample (a word keeps its trailing separator)
    in a new order; the first and the last (partial) word stay in place. A random
    permutation that happens to be the identity is replaced by a rotation by one, so a
    sample with two or more interior words always changes order; a sample with fewer
    comes back unchanged."""
    if symbols.separators_2X is None:
        raise ValueError("shuffle_words needs word separators: the balanced encoding of text")
    symbols_BTX, tail = _split(x_BW, symbols.trits_per_symbol)
    batch, whole, _ = symbols_BTX.shape
    is_sep_BT = (symbols_BTX.unsqueeze(2) == symbols.separators_2X).all(-1).any(-1)
    # token of a symbol = separators strictly before it: a word and its separator share one
    token_BT = torch.cumsum(is_sep_BT.long(), 1) - is_sep_BT.long()
    last_B1 = token_BT[:, -1:]  # the trailing (partial) word, possibly just a separator
    tokens = whole + 1
    ids_BZ = torch.arange(tokens).expand(batch, tokens)
    interior_BZ = (ids_BZ > 0) & (ids_BZ < last_B1)
    # random order of the interior tokens; the fixed ones keep their rank
    fixed_BZ = torch.where(ids_BZ == 0, 0.0, ids_BZ + 2.0)  # first, then last (and unused)
    key_BZ = torch.where(interior_BZ, torch.rand(batch, tokens, generator=generator) + 1.0,
                         fixed_BZ)
    rank_BZ = key_BZ.argsort(1).argsort(1)
    identity_B = (rank_BZ == ids_BZ).all(1)
    n_interior_B1 = interior_BZ.sum(1, keepdim=True)
    rotated_BZ = torch.where(interior_BZ, (ids_BZ % n_interior_B1.clamp(min=1)) + 1, ids_BZ)
    rank_BZ = torch.where(identity_B.unsqueeze(1), rotated_BZ, rank_BZ)
    # sort symbols by (new rank of their token, position): words move, letters stay in order
    unit_key_BT = rank_BZ.gather(1, token_BT) * whole + torch.arange(whole)
    order_BT = unit_key_BT.argsort(1)
    mixed_BTX = symbols_BTX.gather(1, order_BT.unsqueeze(-1).expand_as(symbols_BTX))
    return torch.cat([mixed_BTX.reshape(batch, -1), tail], dim=1)


def make_negatives(x_BW: Tensor, kind: str, symbols: Symbols, input_dim: int,
                   corruption: float, generator: torch.Generator) -> Tensor:
    """One negative per positive, of generator `kind` (one of NEGATIVES)."""
    if kind == "corrupt":
        return corrupt(x_BW, input_dim, corruption, generator)
    if kind == "hybrid":
        return hybrid(x_BW, symbols.trits_per_symbol, generator)
    if kind == "shuffle":
        return shuffle(x_BW, symbols.trits_per_symbol, generator)
    if kind == "shuffle_words":
        return shuffle_words(x_BW, symbols, generator)
    raise ValueError(f"unknown negatives {kind!r}; allowed: {', '.join(NEGATIVES)}")
