"""Token streams for the LM kinds: loading, the train/val split, and seeded batching.

Sources (profile `[data]`): the built-in grammar corpus (byte tokens, word-class labels),
a UTF-8 text file (byte tokens, byte-class labels), or token ids (`source = "tokens"`): a
prepared folder from `moedesk data prepare` (train.bin, val.bin, its BPE tokenizer; word
classes of the BPE pieces as labels), a `.npy` of ints or a `.bin` of uint16. Validation
is `[data] val_path` when given (a text file encoded like the training data, a token
file, or a prepared folder's val.bin), else a prepared folder's own val.bin, else the
last `val_fraction` of the stream. The labels the routing analysis reads are the
validation corpus's.

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

from moedesk.data.manifest import ManifestError, dataset_files
from moedesk.data.tokenizer import (
    BYTE_CLASS_LABELS,
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    TokenizerError,
    byte_class,
    token_classes,
)
from moedesk.data.tokens import read_token_array
from moedesk.profiles.schema import DataSection
from moedesk.train.grammar import LABEL_NAMES as GRAMMAR_LABELS
from moedesk.train.grammar import grammar_corpus

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
    table = np.array([BYTE_CLASS_LABELS.index(byte_class(b)) for b in range(256)], dtype=np.uint8)
    return table[data]


def data_tokenizer(cfg: DataSection, vocab_size: int) -> Tokenizer | None:
    """The tokenizer of a `[data]` section: bytes for grammar and text, a prepared folder's
    BPE for tokens (None for a bare token array)."""
    if cfg.source in ("grammar", "text"):
        return ByteTokenizer(vocab_size)
    try:
        files = dataset_files(cfg.path)
        return BPETokenizer(files.tokenizer) if files.tokenizer else None
    except (ManifestError, TokenizerError) as exc:
        raise DataError(str(exc)) from None


def _token_corpus(tokens: np.ndarray, tokenizer: Tokenizer | None) -> Corpus:
    if tokenizer is None:
        return Corpus(tokens, np.zeros(len(tokens), dtype=np.uint8), TOKEN_LABELS)
    table, names = token_classes(tokenizer)
    table_V = np.array(table, dtype=np.uint8)
    return Corpus(tokens, table_V[np.clip(tokens, 0, len(table_V) - 1)], names)


def load_corpus(cfg: DataSection) -> Corpus:
    """The whole training token stream of a `[data]` section, with a label per token."""
    if cfg.source == "grammar":
        data, labels = grammar_corpus(cfg.grammar_seed, cfg.grammar_sentences)
        return Corpus(data.astype(np.int64), labels, GRAMMAR_LABELS)
    path = Path(cfg.path)
    if cfg.source == "text":
        return _text_corpus(path)
    if cfg.source == "tokens":
        try:
            files = dataset_files(path)
            tokens = read_token_array(files.train, files.dtype)
            tokenizer = BPETokenizer(files.tokenizer) if files.tokenizer else None
        except (ManifestError, TokenizerError) as exc:
            raise DataError(str(exc)) from None
        return _token_corpus(tokens, tokenizer)
    raise DataError(f"data.source {cfg.source!r} is not a token stream for an LM")


def _text_corpus(path: Path) -> Corpus:
    try:
        data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read text file {path}: {exc.strerror or exc}") from None
    return Corpus(data.astype(np.int64), byte_classes(data), BYTE_CLASS_LABELS)


def load_val_corpus(cfg: DataSection, vocab_size: int) -> Corpus | None:
    """The validation stream: `val_path`, else a prepared folder's val.bin, else None
    (the tail of the training stream is held out)."""
    try:
        if cfg.val_path:
            files = dataset_files(cfg.val_path, text_ok=True)
            if files.kind == "text":
                tokenizer = data_tokenizer(cfg, vocab_size)
                if tokenizer is None:
                    raise DataError(f"data.val_path {cfg.val_path} is text, but data.path is a "
                                    "token array with no tokenizer to encode it")
                if tokenizer.kind == "bytes":
                    return _text_corpus(Path(cfg.val_path))
                text = Path(cfg.val_path).read_bytes()
                return _token_corpus(np.array(tokenizer.encode(text, f"data.val_path "
                                                              f"{cfg.val_path}"), np.int64),
                                     tokenizer)
            source = files.val if files.kind == "folder" else files.train
        elif cfg.source == "tokens":
            files = dataset_files(cfg.path)
            if files.kind != "folder" or files.val is None:
                return None
            source = files.val
        else:
            return None
        if files.kind == "folder" and source is None:
            raise DataError(f"data.val_path {cfg.val_path}: the prepared folder has no val.bin")
        tokens = read_token_array(source, files.dtype)
        return _token_corpus(tokens, BPETokenizer(files.tokenizer) if files.tokenizer else
                             data_tokenizer(cfg, vocab_size) if cfg.source != "tokens" else None)
    except (ManifestError, TokenizerError) as exc:
        raise DataError(str(exc)) from None
    except OSError as exc:
        raise DataError(f"cannot read data.val_path {cfg.val_path}: {exc.strerror or exc}") \
            from None


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
        val = load_val_corpus(cfg, vocab_size)
        self.rank, self.world = rank, world
        self.global_batch = batch_size * world
        self.label_names = corpus.label_names
        self.seq_len, self.batch_size, self.device = cfg.seq_len, batch_size, torch.device(device)
        for part, what in ((corpus, "the training data"), (val, "the validation data")):
            if part is None or not len(part.tokens):
                continue
            if int(part.tokens.min()) < 0:
                raise DataError(f"token id {int(part.tokens.min())} of {what} is negative: token"
                                f" ids are 0..{vocab_size - 1} (model.vocab_size = {vocab_size})")
            if int(part.tokens.max()) >= vocab_size:
                raise DataError(f"token id {int(part.tokens.max())} of {what} does not fit "
                                f"model.vocab_size = {vocab_size}")
        window = cfg.seq_len + 1
        tokens = torch.from_numpy(corpus.tokens)
        labels = torch.from_numpy(corpus.labels)
        if val is None:
            n_val = math.ceil(len(corpus.tokens) * cfg.val_fraction)
            n_train = len(corpus.tokens) - n_val
            if n_train < window or n_val < window:
                raise DataError(f"{len(corpus.tokens)} tokens cannot give a {window}-token "
                                f"window to both splits (train {n_train}, val {n_val}); use "
                                "more data, a shorter data.seq_len or another "
                                "data.val_fraction")
            self.label_names = corpus.label_names
            self.splits = {"train": tokens[:n_train], "val": tokens[n_train:]}
            self.split_labels = {"train": labels[:n_train], "val": labels[n_train:]}
        else:
            if len(corpus.tokens) < window or len(val.tokens) < window:
                raise DataError(f"a {window}-token window needs more tokens: train "
                                f"{len(corpus.tokens)}, validation {len(val.tokens)}; use more "
                                "data or a shorter data.seq_len")
            self.label_names = val.label_names
            self.splits = {"train": tokens, "val": torch.from_numpy(val.tokens)}
            self.split_labels = {"train": labels, "val": torch.from_numpy(val.labels)}
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
