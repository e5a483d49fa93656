"""Routing analysis computed in the trainer, and the batch fingerprint of the data stream.

`RoutingAnalysis` watches which experts each validation token is sent to while the loop
evaluates (no extra forward pass: a forward hook on each MoE layer's `router` module
records its choices for the duration of the evaluation, then is removed) and turns that
into one `analysis` event payload per MoE layer, named `routing/L{layer}`:
  - histogram: (token, slot) assignments per expert, and first choices per expert
  - by_class: assignments per expert and token class (the grammar corpus's word classes;
    letter/digit/space/punct/other for plain text)
  - by_frequency: assignments per expert and token-frequency quarter (a quarter of the
    training-token mass each, most frequent token types first), the "arbitrary"
    alternative to linguistic specialization that seed 002 asks about
For the dense kind it records nothing and returns no payloads. `expert_statistics` turns
the payloads into seed 003's "Expert Statistics" block for the human log.

Shape letters (model.py's legend): T validation tokens (all windows, flattened), K experts
per token, E experts, V vocabulary, W token classes (word classes of the grammar corpus),
Q token-frequency quarters.

`batch_fingerprint` is a cheap on-device checksum of the token ids of a batch; the loop
logs it as `data/batch_hash`, which lets a test (and a sceptical user) assert that two
runs saw exactly the same batches in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
from torch import Tensor, nn

from moedesk.stats.load import aggregate, load_stats
from moedesk.train.data import LMData
from moedesk.train.moe import MoEFFN

# 2^31 - 1: every product below stays inside int64 and the result is exact in a float64
HASH_MODULUS = 2_147_483_647
HASH_MIX = 1_000_003
FREQUENCY_BUCKETS = ("q1_most_frequent", "q2", "q3", "q4_least_frequent")


def batch_fingerprint(tokens: Tensor, previous: Tensor | None = None, offset: int = 0) -> Tensor:
    """A position-sensitive checksum of `tokens`, chained onto `previous` (int64 scalar).

    Stays on the tokens' device (no host sync); equal fingerprints mean equal batches
    with overwhelming probability, and any reordering changes it. `offset` is where the
    tokens start in a larger batch: the checksum is linear, so the sum of the ranks'
    checksums of their slices (mod HASH_MODULUS) is the checksum of the whole batch.
    """
    flat = tokens.reshape(-1).long()
    positions = torch.arange(offset + 1, offset + flat.numel() + 1, device=flat.device,
                             dtype=torch.long)
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


def _record(store: list[Tensor], _router: nn.Module, _args: tuple, out: tuple) -> None:
    # a forward hook on a router: out = (ids_TK, gates_TK, probs_TE, logits_TE)
    store.append(out[0].detach().to("cpu", copy=True))


class RoutingAnalysis:
    """Routing of the fixed validation windows, recorded during evaluation."""

    def __init__(self, model: nn.Module, data: LMData, n_windows: int, vocab_size: int):
        self.layers = [m for m in model.modules() if isinstance(m, MoEFFN)]
        self._recorded: dict[int, list[Tensor]] = {}
        if not self.layers:
            return
        # the same windows, in the same order, as data.val_batches(n_windows / batch_size)
        starts = data.val_starts(n_windows)
        inputs_BT, _ = data.windows("val", starts)
        self.tokens_T = inputs_BT.reshape(-1).cpu()
        self.labels_T = data.window_labels("val", starts).reshape(-1).long()
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
        handles = [m.router.register_forward_hook(partial(_record, self._recorded[m.layer_idx]))
                   for m in self.layers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def payloads(self) -> dict[str, dict]:
        """{"routing/L{i}": payload} for what the last `recording` saw; {} when it saw
        anything other than the fixed validation windows (nothing is guessed)."""
        out: dict[str, dict] = {}
        for module in self.layers:
            chunks = self._recorded.get(module.layer_idx) or []
            if not chunks:
                continue
            ids_TK = torch.cat(chunks)
            if ids_TK.shape[0] != self.tokens_T.numel():
                continue
            out[f"routing/L{module.layer_idx}"] = self._payload(module, ids_TK)
        self._recorded = {}
        return out

    def _payload(self, module: MoEFFN, ids_TK: Tensor) -> dict:
        num_experts, top_k = int(module.num_experts), ids_TK.shape[1]
        num_classes, num_buckets = len(self.label_names), len(FREQUENCY_BUCKETS)
        ids_TK = ids_TK.long()
        classes_TK = self.labels_T.unsqueeze(1).expand_as(ids_TK)
        buckets_TK = self.bucket_of_token[self.tokens_T].unsqueeze(1).expand_as(ids_TK)
        by_class_EW = torch.bincount((ids_TK * num_classes + classes_TK).flatten(),
                                     minlength=num_experts * num_classes)
        by_freq_EQ = torch.bincount((ids_TK * num_buckets + buckets_TK).flatten(),
                                    minlength=num_experts * num_buckets)
        return {
            "layer": int(module.layer_idx),
            "split": "val",
            "windows": self.n_windows,
            "tokens": int(ids_TK.shape[0]),
            "num_experts": num_experts,
            "top_k": int(top_k),
            "histogram": torch.bincount(ids_TK.flatten(), minlength=num_experts).tolist(),
            "first_choice": torch.bincount(ids_TK[:, 0], minlength=num_experts).tolist(),
            "classes": list(self.label_names),
            "class_tokens": torch.bincount(self.labels_T, minlength=num_classes).tolist(),
            "by_class": by_class_EW.view(num_experts, num_classes).tolist(),
            "frequency_buckets": list(FREQUENCY_BUCKETS),
            "bucket_tokens": torch.bincount(self.bucket_of_token[self.tokens_T],
                                            minlength=num_buckets).tolist(),
            "by_frequency": by_freq_EQ.view(num_experts, num_buckets).tolist(),
        }


def expert_statistics(payloads: dict[str, dict]) -> str:
    """Seed 003's "Expert Statistics" block of one evaluation's routing: the shares of
    (token, slot) assignments per expert (mean, std, min, max) and their entropy in nats
    (ln E when balanced), each the mean over MoE layers; "" without payloads."""
    per_layer = {}
    for payload in payloads.values():
        stats = load_stats(payload["histogram"], payload["top_k"])
        num_experts = len(payload["histogram"])
        per_layer[payload["layer"]] = {
            "mean": sum(stats["shares"]) / num_experts, "std": stats["usage_std"],
            "min": stats["min_share"], "max": stats["max_share"],
            "entropy": stats["entropy_norm"] * math.log(num_experts)}
    if not per_layer:
        return ""
    overall = aggregate(per_layer)
    where = (f"layer {next(iter(per_layer))}" if len(per_layer) == 1
             else f"mean of {len(per_layer)} MoE layers")
    return "\n".join([
        f"Expert Statistics (validation routing, {where}):",
        f"  expert_usage_mean: {overall['mean']:.4f}",
        f"  expert_usage_std: {overall['std']:.4f}",
        f"  expert_usage_min: {overall['min']:.4f}",
        f"  expert_usage_max: {overall['max']:.4f}",
        f"  expert_entropy: {overall['entropy']:.4f}"])
