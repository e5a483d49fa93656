"""Trit samples for the ternary kind: sources, windows, the held-out split and evaluation set.

A sample is `sample_width` trits: the router reads its first `specialization_dim`, the
experts its first `input_dim`. Text (the grammar corpus or a file) is cut into
non-overlapping windows of just enough bytes and encoded (`ternary.encoding`); the seeds'
trit-sample file gives samples directly, each truncated or zero-padded to the width.
A run reads one source (`data.source`) or a weighted mix (`[[data.sources]]`, seed 000's
multi-task training); the last `data.val_fraction` of each source is held out, or, for a
single source, every sample of `data.val_path` (a file of the source's kind: text, or a
trit file such as seed 000's test_data.bin).

Every held-out window also carries a class histogram (how many of its bytes belong to
each word class of the grammar corpus, or each byte class of a text file) for the
routing analysis. Negatives come from `negatives.py`; the held-out ones are drawn once
from their own seed, within each source. Batches and epochs live in `batches.py`.

Shape letters: B samples (a batch, or the held-out set), W trits per sample, T a window's
bytes (its token positions), J classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from moedesk.profiles.schema import Profile, TernarySection
from moedesk.train.ternary.negatives import Symbols, make_negatives, symbols_of
from moedesk.train.ternary.trits import ENCODERS, TritFileError, read_trit_samples


class TernaryDataError(Exception):
    """Data a ternary run cannot use; the message says which source and why."""


def derived_seed(seed: int, stream: int) -> int:
    """Seeds of independent generators (router, weights, training, epochs) from one seed."""
    return (seed * 1_000_003 + 7919 * stream) % 2**63


def sample_width(cfg: TernarySection) -> int:
    return max(cfg.input_dim, cfg.specialization_dim)


def _window_bytes(spec: SourceSpec) -> tuple[bytes, Tensor | None, tuple[str, ...]]:
    """(text bytes, class id per byte, class names) of a text or grammar source."""
    from moedesk.train.data import BYTE_CLASS_LABELS, byte_classes
    from moedesk.train.grammar import LABEL_NAMES, grammar_corpus

    if spec.source == "grammar":
        text, labels = grammar_corpus(spec.grammar_seed, spec.grammar_sentences)
        return text.tobytes(), torch.from_numpy(labels.astype("int64")), LABEL_NAMES
    try:
        data = Path(spec.path).read_bytes()
    except OSError as exc:
        raise TernaryDataError(f"cannot read text file {spec.path} (source {spec.name!r}): "
                               f"{exc.strerror or exc}") from None
    classes = byte_classes(np.frombuffer(data, dtype=np.uint8)).astype("int64")
    return data, torch.from_numpy(classes), BYTE_CLASS_LABELS


def encode_windows(text: bytes, width: int, encoding: str) -> Tensor:
    """Non-overlapping byte windows, each encoded and cut to `width` trits: int8 [B, W]."""
    encode, trits_per_byte = ENCODERS[encoding]
    window = math.ceil(width / trits_per_byte)
    count = len(text) // window
    trits = encode(text[:count * window])
    return trits.reshape(count, window * trits_per_byte)[:, :width].contiguous()


def window_classes(class_of_byte: Tensor, width: int, encoding: str, num_classes: int
                   ) -> Tensor:
    """Class histogram of each window of `encode_windows`: float [B, J] byte counts."""
    window = math.ceil(width / ENCODERS[encoding][1])
    count = len(class_of_byte) // window
    ids_BT = class_of_byte[:count * window].reshape(count, window)
    hist_BJ = torch.zeros(count, num_classes)
    return hist_BJ.scatter_add_(1, ids_BT, torch.ones(ids_BT.shape))


def fit_samples(samples: list[Tensor], width: int) -> Tensor:
    """Trit-file samples truncated or zero-padded to `width`: int8 [B, W]."""
    out = torch.zeros(len(samples), width, dtype=torch.int8)
    for i, sample in enumerate(samples):
        n = min(width, sample.numel())
        out[i, :n] = sample[:n]
    return out


@dataclass(frozen=True)
class SourceSpec:
    """One data source of a run: `data.source` itself, or one `[[data.sources]]` entry."""

    name: str
    source: str  # grammar | text | trits
    path: str = ""
    weight: float = 1.0
    grammar_seed: int = 0
    grammar_sentences: int = 20000


def source_specs(profile: Profile) -> list[SourceSpec]:
    """The run's sources: the `[[data.sources]]` mix, or `data.source` alone (named by it)."""
    d = profile.data
    if not d.sources:
        return [SourceSpec(d.source, d.source, d.path, 1.0, d.grammar_seed, d.grammar_sentences)]
    return [SourceSpec(str(s["name"]), str(s.get("source", "grammar")), str(s.get("path", "")),
                       float(s.get("weight", 1.0)), int(s.get("grammar_seed", d.grammar_seed)),
                       int(s.get("grammar_sentences", d.grammar_sentences)))
            for s in d.sources]


def run_symbols(profile: Profile) -> Symbols:
    """The symbols negatives work on: bytes of the encoding, single trits if any source is
    a trit file (whose symbols moedesk cannot know)."""
    kinds = {spec.source for spec in source_specs(profile)}
    return symbols_of(profile.ternary.encoding, "trits" if "trits" in kinds else "text")


@dataclass
class TernaryData:
    """Every source's samples, concatenated, with the source (and class) of each."""

    names: tuple[str, ...]
    weights: tuple[float, ...]
    train_BW: Tensor
    train_source_B: Tensor  # int64, index into names
    train_length_B: Tensor  # int64, trits before padding or truncation
    held_out_BW: Tensor
    held_out_source_B: Tensor
    held_out_classes_BJ: Tensor  # float byte counts per class (zeros where unknown)
    class_names: tuple[str, ...]


def _load_source(spec: SourceSpec, profile: Profile
                 ) -> tuple[Tensor, Tensor, Tensor | None, tuple[str, ...]]:
    """(samples, lengths, class id per byte or None, class names) of one source."""
    width = sample_width(profile.ternary)
    if spec.source == "trits":
        try:
            raw = read_trit_samples(spec.path)
        except TritFileError as exc:
            raise TernaryDataError(str(exc)) from None
        lengths = torch.tensor([len(r) for r in raw], dtype=torch.int64)
        return fit_samples(raw, width), lengths, None, ()
    text, class_of_byte, names = _window_bytes(spec)
    samples = encode_windows(text, width, profile.ternary.encoding)
    return samples, torch.full((len(samples),), width, dtype=torch.int64), class_of_byte, names


def _whole_windows(class_of_byte: Tensor, width: int, profile: Profile) -> int:
    """Bytes of a text that `encode_windows` turns into whole windows."""
    window = math.ceil(width / ENCODERS[profile.ternary.encoding][1])
    return len(class_of_byte) // window * window


def load_data(profile: Profile) -> TernaryData:
    """Load every source, hold out the tail of each, and check each can fill a batch."""
    specs, width = source_specs(profile), sample_width(profile.ternary)
    loaded = [_load_source(spec, profile) for spec in specs]
    class_names: list[str] = []
    for *_, names in loaded:
        class_names += [n for n in names if n not in class_names]
    parts: dict[str, list[Tensor]] = {k: [] for k in ("train", "tsrc", "tlen", "val", "vsrc",
                                                      "vcls")}
    for index, (spec, (samples, lengths, class_of_byte, names)) in enumerate(
            zip(specs, loaded, strict=True)):
        if profile.data.val_path:
            # a separate held-out file (seed 000's test_data.bin) of the source's own kind:
            # every sample of the source trains, and the file's samples are held out
            # (grammar: the file is text, whose byte classes are not the grammar's words)
            kind = "text" if spec.source == "grammar" else spec.source
            val_samples, val_lengths, val_classes, _ = _load_source(
                SourceSpec(spec.name, kind, profile.data.val_path), profile)
            held = len(val_samples)
            class_of_byte = None if class_of_byte is None or kind != spec.source else \
                torch.cat([class_of_byte[:_whole_windows(class_of_byte, width, profile)],
                           val_classes])
            samples = torch.cat([samples, val_samples])
            lengths = torch.cat([lengths, val_lengths])
            if held == 0:
                raise TernaryDataError(f"data.val_path {profile.data.val_path} gives no "
                                       f"samples of {width} trits")
        held = held if profile.data.val_path else \
            max(1, math.floor(len(samples) * profile.data.val_fraction))
        train = samples[:-held]
        label = (f"source {spec.name!r}" if profile.data.sources
                 else f"data.source = {spec.source!r}")
        if len(train) < profile.train.batch_size:
            raise TernaryDataError(f"{len(train)} training samples of {width} trits from "
                                   f"{label}; need at least train.batch_size = "
                                   f"{profile.train.batch_size}")
        classes = torch.zeros(held, len(class_names))
        if class_of_byte is not None:
            local = window_classes(class_of_byte, width, profile.ternary.encoding, len(names))
            where = torch.tensor([class_names.index(n) for n in names])
            classes[:, where] = local[len(samples) - held:len(samples)]
        parts["train"].append(train)
        parts["tsrc"].append(torch.full((len(train),), index, dtype=torch.int64))
        parts["tlen"].append(lengths[:-held])
        parts["val"].append(samples[-held:])
        parts["vsrc"].append(torch.full((held,), index, dtype=torch.int64))
        parts["vcls"].append(classes)
    return TernaryData(tuple(s.name for s in specs), tuple(s.weight for s in specs),
                       torch.cat(parts["train"]), torch.cat(parts["tsrc"]),
                       torch.cat(parts["tlen"]), torch.cat(parts["val"]),
                       torch.cat(parts["vsrc"]), torch.cat(parts["vcls"]), tuple(class_names))


def load_samples(profile: Profile) -> tuple[Tensor, Tensor]:
    """(train, held-out) samples of every source, int8 [B, W] each."""
    data = load_data(profile)
    return data.train_BW, data.held_out_BW


@dataclass
class EvalSet:
    """The held-out (positive, negative) pairs every evaluation scores."""

    pos_BW: Tensor
    neg_BW: Tensor
    source_B: Tensor  # int64, index into TernaryData.names
    classes_BJ: Tensor


def eval_set(profile: Profile, data: TernaryData, pair_seed: int = 0) -> EvalSet:
    """The first eval_batches x batch_size held-out samples of each source and their
    negatives (made within the source), drawn from a fixed seed (`pair_seed`, 0 in
    training) so every run over the same data sees the same pairs."""
    t, per_source = profile.ternary, profile.train.eval_batches * profile.train.batch_size
    generator = torch.Generator().manual_seed(derived_seed(pair_seed, 3))
    symbols = run_symbols(profile)
    pos, neg, src, cls = [], [], [], []
    for index, name in enumerate(data.names):
        rows = torch.nonzero(data.held_out_source_B == index).flatten()[:per_source]
        x_BW = data.held_out_BW[rows]
        if t.negatives == "hybrid" and len(x_BW) < 2:
            raise TernaryDataError(f"{len(x_BW)} held-out sample in source {name!r}; hybrid "
                                   "negatives need 2 (raise data.val_fraction)")
        pos.append(x_BW)
        neg.append(make_negatives(x_BW, t.negatives, symbols, t.input_dim, t.corruption,
                                  generator))
        src.append(data.held_out_source_B[rows])
        cls.append(data.held_out_classes_BJ[rows])
    return EvalSet(torch.cat(pos), torch.cat(neg), torch.cat(src), torch.cat(cls))
