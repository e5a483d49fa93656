"""Routing analysis computed in the trainer, and the batch fingerprint of the data stream.

`RoutingAnalysis` watches which experts each validation token is sent to while the loop
evaluates (no extra forward pass: it wraps each MoE layer's `route` for the duration of
the evaluation) and turns that into one `analysis` event payload per MoE layer, named
`routing/L{layer}`:
  - histogram: (token, slot) assignments per expert, and first choices per expert
  - by_class: assignments per expert and token class (the grammar corpus's word classes;
    letter/digit/space/punct/other for plain text)
  - by_frequency: assignments per expert and token-frequency quarter (a quarter of the
    training-token mass each, most frequent token types first), the "arbitrary"
    alternative to linguistic specialization that seed 002 asks about
For the dense kind it records nothing and returns no payloads.

`batch_fingerprint` is a cheap on-device checksum of the token ids of a batch; the loop
logs it as `data/batch_hash`, which lets a test (and a sceptical user) assert that two
runs saw exactly the same batches in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from moedesk.train.data import LMData

# 2^31 - 1: every product below stays inside int64 and the result is exact in a float64
HASH_MODULUS = 2_147_483_647
HASH_MIX = 1_000_003
FREQUENCY_BUCKETS = ("q1_most_frequent", "q2", "q3", "q4_least_frequent")


def batch_fingerprint(tokens: Tensor, previous: Tensor | None = None) -> Tensor:
    """A position-sensitive checksum of `tokens`, chained onto `previous` (int64 scalar).

    Stays on the tokens' device (no host sync); equal fingerprints mean equal batches
    with overwhelming probability, and any reordering changes it.
    """
    flat = tokens.reshape(-1).long()
    positions = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.long)
    weights = (positions * 40_503 + 12_345) % HASH_MODULUS
    digest = (((flat + 1) * weights) % HASH_MODULUS).sum() % HASH_MODULUS
    if previous is None:
        return digest
    return (previous * HASH_MIX + digest) % HASH_MODULUS


def frequency_buckets(train_tokens: Tensor, vocab_size: int,
                      n_buckets: int = len(FREQUENCY_BUCKETS)) -> Tensor:
    """Bucket id [vocab_size] of every token type: types sorted most frequent first, cut
    into `n_buckets` slices of about equal training-token mass (unseen types go last)."""
    counts_V = torch.bincount(train_tokens.flatten(), minlength=vocab_size).double()
    order = torch.argsort(counts_V, descending=True, stable=True)
    mass_before = (counts_V[order].cumsum(0) - counts_V[order]) / counts_V.sum()
    bucket_sorted = (mass_before * n_buckets).floor().long().clamp(max=n_buckets - 1)
    bucket_V = torch.empty(vocab_size, dtype=torch.long)
    bucket_V[order] = bucket_sorted
    bucket_V[counts_V == 0] = n_buckets - 1
    return bucket_V


def _routed_modules(model: nn.Module) -> list[nn.Module]:
    # duck-typed so the dense kind never imports the MoE module
    return [m for m in model.modules()
            if hasattr(m, "route") and hasattr(m, "num_experts") and hasattr(m, "layer_idx")]


class RoutingAnalysis:
    """Routing of the fixed validation windows, recorded during evaluation."""

    def __init__(self, model: nn.Module, data: LMData, n_windows: int, vocab_size: int):
        self.layers = _routed_modules(model)
        self._recorded: dict[int, list[Tensor]] = {}
        if not self.layers:
            return
        # the same windows, in the same order, as data.val_batches(n_windows / batch_size)
        starts = data.val_starts(n_windows)
        inputs_NT, _ = data.windows("val", starts)
        self.tokens_S = inputs_NT.reshape(-1).cpu()
        self.labels_S = data.window_labels("val", starts).reshape(-1).long()
        self.label_names = tuple(data.label_names)
        self.n_windows = n_windows
        self.bucket_of_token = frequency_buckets(data.splits["train"], vocab_size)

    @property
    def active(self) -> bool:
        return bool(self.layers)

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Record every MoE layer's expert choices for the forwards run inside the block."""
        self._recorded = {m.layer_idx: [] for m in self.layers}
        for module in self.layers:
            original = module.route
            store = self._recorded[module.layer_idx]

            def recorded(x_TD, _original=original, _store=store):
                out = _original(x_TD)
                _store.append(out[0].detach().to("cpu", copy=True))
                return out

            # an instance attribute shadows the method only while we record
            module.route = recorded
        try:
            yield
        finally:
            for module in self.layers:
                del module.route

    def payloads(self) -> dict[str, dict]:
        """{"routing/L{i}": payload} for what the last `recording` saw; {} when it saw
        anything other than the fixed validation windows (nothing is guessed)."""
        out: dict[str, dict] = {}
        for module in self.layers:
            chunks = self._recorded.get(module.layer_idx) or []
            if not chunks:
                continue
            ids_SK = torch.cat(chunks)
            if ids_SK.shape[0] != self.tokens_S.numel():
                continue
            out[f"routing/L{module.layer_idx}"] = self._payload(module, ids_SK)
        self._recorded = {}
        return out

    def _payload(self, module: nn.Module, ids_SK: Tensor) -> dict:
        num_experts, top_k = int(module.num_experts), ids_SK.shape[1]
        num_classes, num_buckets = len(self.label_names), len(FREQUENCY_BUCKETS)
        ids_SK = ids_SK.long()
        classes_SK = self.labels_S.unsqueeze(1).expand_as(ids_SK)
        buckets_SK = self.bucket_of_token[self.tokens_S].unsqueeze(1).expand_as(ids_SK)
        by_class_EC = torch.bincount((ids_SK * num_classes + classes_SK).flatten(),
                                     minlength=num_experts * num_classes)
        by_freq_EQ = torch.bincount((ids_SK * num_buckets + buckets_SK).flatten(),
                                    minlength=num_experts * num_buckets)
        return {
            "layer": int(module.layer_idx),
            "split": "val",
            "windows": self.n_windows,
            "tokens": int(ids_SK.shape[0]),
            "num_experts": num_experts,
            "top_k": int(top_k),
            "histogram": torch.bincount(ids_SK.flatten(), minlength=num_experts).tolist(),
            "first_choice": torch.bincount(ids_SK[:, 0], minlength=num_experts).tolist(),
            "classes": list(self.label_names),
            "class_tokens": torch.bincount(self.labels_S, minlength=num_classes).tolist(),
            "by_class": by_class_EC.view(num_experts, num_classes).tolist(),
            "frequency_buckets": list(FREQUENCY_BUCKETS),
            "bucket_tokens": torch.bincount(self.bucket_of_token[self.tokens_S],
                                            minlength=num_buckets).tolist(),
            "by_frequency": by_freq_EQ.view(num_experts, num_buckets).tolist(),
        }
