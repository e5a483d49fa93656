"""Token streams for the LM kinds: loading, the train/val split, and seeded batching.

Sources (profile `[data]`): the built-in grammar corpus (byte tokens, word-class labels),
a UTF-8 text file (byte tokens, byte-class labels), or a token array (`.npy` of ints or a
`.bin` of uint16). The last `val_fraction` of the stream is validation.

Training windows are drawn with a `torch.Generator` seeded from the profile seed; its
state is part of every checkpoint, so a resumed run sees the same batches. Validation
windows are evenly spaced over the validation stream: no randomness, identical for every
run over the same data, whatever its seed.

With several ranks (`rank`, `world`) every rank draws the same start offsets for the whole
global micro-batch (`world * batch_size` windows, the draw one process with that batch
size makes) and keeps its own slice of them: the shards are deterministic, disjoint per
draw, and their union is the one-process batch. The generator state is the same on every
rank, so a checkpoint's data state serves any world size. Validation windows and their
batches span the global micro-batch too (every rank evaluates them all).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from moedesk.profiles.schema import DataSection
from moedesk.train.grammar import LABEL_NAMES as GRAMMAR_LABELS
from moedesk.train.grammar import grammar_corpus

BYTE_CLASS_LABELS: tuple[str, ...] = ("letter", "digit", "space", "punct", "other")
TOKEN_LABELS: tuple[str, ...] = ("token",)


class DataError(Exception):
    """Data that cannot be used for training; the message says which file and why."""


@dataclass
class Corpus:
    tokens: np.ndarray  # int64 [N]
    labels: np.ndarray  # uint8 [N], an index into label_names
    label_names: tuple[str, ...]


def byte_classes(data: np.ndarray) -> np.ndarray:
    """Class id (into BYTE_CLASS_LABELS) of each byte."""
    table = np.full(256, BYTE_CLASS_LABELS.index("other"), dtype=np.uint8)
    for c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ":
        table[c] = BYTE_CLASS_LABELS.index("letter")
    for c in b"0123456789":
        table[c] = BYTE_CLASS_LABELS.index("digit")
    for c in b" \t\n\r\x0b\x0c":
        table[c] = BYTE_CLASS_LABELS.index("space")
    for c in b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~":
        table[c] = BYTE_CLASS_LABELS.index("punct")
    return table[data]


def load_corpus(cfg: DataSection) -> Corpus:
    """The whole token stream of a `[data]` section, with a label per token."""
    if cfg.source == "grammar":
        data, labels = grammar_corpus(cfg.grammar_seed, cfg.grammar_sentences)
        return Corpus(data.astype(np.int64), labels, GRAMMAR_LABELS)
    path = Path(cfg.path)
    if cfg.source == "text":
        try:
            data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        except OSError as exc:
            raise DataError(f"cannot read text file {path}: {exc.strerror or exc}") from None
        return Corpus(data.astype(np.int64), byte_classes(data), BYTE_CLASS_LABELS)
    if cfg.source == "tokens":
        try:
            if path.suffix == ".npy":
                tokens = np.load(path, allow_pickle=False)
            else:
                tokens = np.fromfile(path, dtype=np.uint16)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read token file {path}: {exc}") from None
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise DataError(f"token file {path} must hold a 1-D integer array, got "
                            f"{tokens.dtype} with shape {tokens.shape}")
        tokens = tokens.astype(np.int64)
        return Corpus(tokens, np.zeros(len(tokens), dtype=np.uint8), TOKEN_LABELS)
    raise DataError(f"data.source {cfg.source!r} is not a token stream for an LM")


def unigram_entropy(tokens: np.ndarray | Tensor) -> float:
    """Entropy in nats of the token frequencies: the loss of the best context-free model."""
    tokens = torch.as_tensor(tokens).flatten()
    counts = torch.bincount(tokens).double()
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * probs.log()).sum())


class LMData:
    """Train/val token streams with seeded training windows and fixed validation windows."""

    def __init__(self, cfg: DataSection, seed: int, batch_size: int, vocab_size: int,
                 device: torch.device | str = "cpu", rank: int = 0, world: int = 1):
        corpus = load_corpus(cfg)
        self.rank, self.world = rank, world
        self.global_batch = batch_size * world
        self.label_names = corpus.label_names
        self.seq_len, self.batch_size, self.device = cfg.seq_len, batch_size, torch.device(device)
        if len(corpus.tokens) and int(corpus.tokens.min()) < 0:
            raise DataError(f"token id {int(corpus.tokens.min())} is negative: token ids are"
                            f" 0..{vocab_size - 1} (model.vocab_size = {vocab_size})")
        if len(corpus.tokens) and int(corpus.tokens.max()) >= vocab_size:
            raise DataError(f"token id {int(corpus.tokens.max())} does not fit "
                            f"model.vocab_size = {vocab_size}")
        n_val = math.ceil(len(corpus.tokens) * cfg.val_fraction)
        n_train = len(corpus.tokens) - n_val
        window = cfg.seq_len + 1
        if n_train < window or n_val < window:
            raise DataError(f"{len(corpus.tokens)} tokens cannot give a {cfg.seq_len + 1}-token "
                            f"window to both splits (train {n_train}, val {n_val}); use more "
                            "data, a shorter data.seq_len or another data.val_fraction")
        tokens = torch.from_numpy(corpus.tokens)
        labels = torch.from_numpy(corpus.labels)
        self.splits = {"train": tokens[:n_train], "val": tokens[n_train:]}
        self.split_labels = {"train": labels[:n_train], "val": labels[n_train:]}
        self.generator = torch.Generator().manual_seed(seed)
        # unfold gives every window as a view; indexing it gathers a batch in one op
        self._windows = {name: t.unfold(0, window, 1) for name, t in self.splits.items()}

    # ---- windows -----------------------------------------------------------------------
    def sample_starts(self) -> Tensor:
        """Start offsets of this rank's part of the next training batch (advances the
        generator by one global batch)."""
        n_starts = len(self.splits["train"]) - self.seq_len
        starts = torch.randint(n_starts, (self.global_batch,), generator=self.generator)
        if self.world == 1:
            return starts
        return starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    @property
    def position_offset(self) -> int:
        """Where this rank's micro-batch starts in the flattened global micro-batch."""
        return self.rank * self.batch_size * self.seq_len

    def windows(self, split: str, starts: Tensor) -> tuple[Tensor, Tensor]:
        """Inputs and next-token targets [B, seq_len] for windows at `starts`, on device."""
        chunk_BW = self._windows[split][starts]
        chunk_BW = chunk_BW.to(self.device, non_blocking=True)
        return chunk_BW[:, :-1], chunk_BW[:, 1:]

    def window_labels(self, split: str, starts: Tensor) -> Tensor:
        """Class ids [B, seq_len] of the input tokens of windows at `starts` (CPU)."""
        return torch.stack([self.split_labels[split][s:s + self.seq_len] for s in starts.tolist()])

    def train_batch(self) -> tuple[Tensor, Tensor]:
        return self.windows("train", self.sample_starts())

    def val_starts(self, n_windows: int) -> Tensor:
        """`n_windows` evenly spaced start offsets over the validation stream."""
        last = len(self.splits["val"]) - self.seq_len - 1
        return torch.linspace(0, last, n_windows, dtype=torch.float64).round().long()

    def val_batches(self, n_batches: int) -> list[tuple[Tensor, Tensor]]:
        starts = self.val_starts(n_batches * self.global_batch)
        return [self.windows("val", chunk) for chunk in starts.split(self.global_batch)]

    # ---- resume ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
