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

Shape letters: B samples, W trits per sample, U whole symbols per sample, X trits per
symbol, Y word tokens per sample (at most U + 1).
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
    separators_SX: Tensor | None  # int8 [separators, X]; None: words are unknown


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
    sample, each moved to one of its two other trit values (J = those positions)."""
    batch = x_BW.shape[0]
    dim = min(input_dim, x_BW.shape[1])
    n_changed = min(dim, max(1, round(corruption * dim)))
    where_BJ = torch.rand(batch, dim, generator=generator).argsort(dim=1)[:, :n_changed]
    shift_BJ = (torch.randint(0, 2, (batch, n_changed), generator=generator) * 2 - 1)
    out = x_BW.clone()
    out.scatter_(1, where_BJ, gf3_add(out.gather(1, where_BJ), shift_BJ.to(torch.int8)))
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
    symbols_BUX, tail = _split(x_BW, per)
    batch, whole, _ = symbols_BUX.shape
    order_BU = torch.rand(batch, whole, generator=generator).argsort(dim=1)
    mixed_BUX = symbols_BUX.gather(1, order_BU.unsqueeze(-1).expand_as(symbols_BUX))
    return torch.cat([mixed_BUX.reshape(batch, -1), tail], dim=1)


def shuffle_words(x_BW: Tensor, symbols: Symbols, generator: torch.Generator) -> Tensor:
    """The complete interior words of each sample (a word keeps its trailing separator)
    in a new order; the first and the last (partial) word stay in place. A random
    permutation that happens to be the identity is replaced by a rotation by one, so a
    sample with two or more interior words always changes order; a sample with fewer
    comes back unchanged."""
    if symbols.separators_SX is None:
        raise ValueError("shuffle_words needs word separators: the balanced encoding of text")
    symbols_BUX, tail = _split(x_BW, symbols.trits_per_symbol)
    batch, whole, _ = symbols_BUX.shape
    is_sep_BU = (symbols_BUX.unsqueeze(2) == symbols.separators_SX).all(-1).any(-1)
    # token of a symbol = separators strictly before it: a word and its separator share one
    token_BU = torch.cumsum(is_sep_BU.long(), 1) - is_sep_BU.long()
    last_B1 = token_BU[:, -1:]  # the trailing (partial) word, possibly just a separator
    tokens = whole + 1
    ids_BY = torch.arange(tokens).expand(batch, tokens)
    interior_BY = (ids_BY > 0) & (ids_BY < last_B1)
    # random order of the interior tokens; the fixed ones keep their rank
    fixed_BY = torch.where(ids_BY == 0, 0.0, ids_BY + 2.0)  # first, then last (and unused)
    key_BY = torch.where(interior_BY, torch.rand(batch, tokens, generator=generator) + 1.0,
                         fixed_BY)
    rank_BY = key_BY.argsort(1).argsort(1)
    identity_B = (rank_BY == ids_BY).all(1)
    n_interior_B1 = interior_BY.sum(1, keepdim=True)
    rotated_BY = torch.where(interior_BY, (ids_BY % n_interior_B1.clamp(min=1)) + 1, ids_BY)
    rank_BY = torch.where(identity_B.unsqueeze(1), rotated_BY, rank_BY)
    # sort symbols by (new rank of their token, position): words move, letters stay in order
    unit_key_BU = rank_BY.gather(1, token_BU) * whole + torch.arange(whole)
    order_BU = unit_key_BU.argsort(1)
    mixed_BUX = symbols_BUX.gather(1, order_BU.unsqueeze(-1).expand_as(symbols_BUX))
    return torch.cat([mixed_BUX.reshape(batch, -1), tail], dim=1)


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
