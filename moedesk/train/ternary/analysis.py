"""The ternary routing analysis: where each source, class and kind of window is routed.

At every evaluation the trainer already routes the held-out positives and scores every
routed expert on each (positive, negative) pair; `routing_payload` turns that into one
`analysis` event named `routing/L0` (the kind has one routing layer), in the shape of the
LM kinds' payload (`moedesk.train.analysis`) so the same views read it, plus what only
this kind has:
  - histogram / first_choice: (window, slot) assignments and first choices per expert
  - by_class: per expert and class, the bytes of that class in the windows routed to it
    (grammar word classes, or letter/digit/space/punct/other for a text file; empty for
    trit files); class_tokens: bytes per class over the windows, so sum_e by_class[e][c]
    = top_k * class_tokens[c] as for the LM kinds
  - by_frequency: per expert and typicality quarter of the window (a quarter of the
    windows each by the per-position frequency score, most typical first), the
    counterpart of the LM kinds' token-frequency quarters
  - by_source / source_samples: per expert and data source ([[data.sources]])
  - cluster_histogram, by_source_cluster, by_class_cluster: the same by chosen cluster
    (level 1 of hierarchical routing; absent for flat routing)
  - goodness_pos / goodness_neg / expert_accuracy: seed 000's evaluation per routed
    expert: mean goodness of each expert over the held-out pairs routed to it, and the
    share of those pairs it ranks right (ties half; null where none was routed)
  - test_goodness: seed 000's average test goodness (goodness summed over a window's
    routed experts, averaged over the windows)
"unit" is "window": `tokens` counts held-out windows.

Shape letters: B held-out windows, K experts chosen per window, A clusters chosen per
window, E experts, J classes, Y rows of a count table (experts or clusters).
"""

from __future__ import annotations

import torch
from torch import Tensor

TYPICALITY_BUCKETS = ("q1_most_typical", "q2", "q3", "q4_least_typical")


def typicality_buckets(score_B: Tensor) -> Tensor:
    """Quarter of each window by score (higher = more typical), a quarter each: int64 [B]."""
    order = torch.argsort(score_B, descending=True, stable=True)
    bucket_B = torch.empty(len(score_B), dtype=torch.int64)
    bucket_B[order] = torch.arange(len(score_B)) * len(TYPICALITY_BUCKETS) // max(len(score_B), 1)
    return bucket_B


def _counts_by(ids_BK: Tensor, group_B: Tensor, rows: int, groups: int) -> list[list[int]]:
    """[rows][groups]: (window, slot) assignments per row id and window group."""
    group_BK = group_B.unsqueeze(1).expand_as(ids_BK)
    flat = torch.bincount((ids_BK * groups + group_BK).flatten(), minlength=rows * groups)
    return flat.view(rows, groups).tolist()


def _weighted_by(ids_BK: Tensor, weight_BJ: Tensor, rows: int) -> list[list[int]]:
    """[rows][J]: sum over the (window, slot) assignments of each window's (integer)
    weights, e.g. its bytes of each class."""
    out_YJ = torch.zeros(rows, weight_BJ.shape[1], dtype=torch.int64)
    k = ids_BK.shape[1]
    out_YJ.index_add_(0, ids_BK.reshape(-1), weight_BJ.long().repeat_interleave(k, 0))
    return out_YJ.tolist()


def routing_payload(*, experts_BK: Tensor, clusters_BA: Tensor | None, goodness_pos_BK: Tensor,
                    goodness_neg_BK: Tensor, source_B: Tensor, source_names: tuple[str, ...],
                    classes_BJ: Tensor, class_names: tuple[str, ...], typicality_B: Tensor,
                    num_experts: int, num_clusters: int) -> dict:
    """The `routing/L0` payload of one evaluation (see the module docstring)."""
    windows, top_k = experts_BK.shape
    sources = len(source_names)
    experts_flat = experts_BK.reshape(-1)
    pairs_E = torch.bincount(experts_flat, minlength=num_experts).double()
    good_pos_E = torch.zeros(num_experts, dtype=torch.float64).index_add_(
        0, experts_flat, goodness_pos_BK.reshape(-1).double())
    good_neg_E = torch.zeros(num_experts, dtype=torch.float64).index_add_(
        0, experts_flat, goodness_neg_BK.reshape(-1).double())
    right_BK = (goodness_pos_BK > goodness_neg_BK).double() + 0.5 * (
        goodness_pos_BK == goodness_neg_BK).double()
    right_E = torch.zeros(num_experts, dtype=torch.float64).index_add_(
        0, experts_flat, right_BK.reshape(-1))

    def per_expert(total_E: Tensor) -> list[float | None]:
        return [round(float(t / n), 4) if n else None
                for t, n in zip(total_E.tolist(), pairs_E.tolist(), strict=True)]

    payload = {
        "layer": 0, "split": "val", "unit": "window", "windows": windows, "tokens": windows,
        "num_experts": num_experts, "top_k": top_k,
        "histogram": pairs_E.long().tolist(),
        "first_choice": torch.bincount(experts_BK[:, 0], minlength=num_experts).tolist(),
        "classes": list(class_names),
        "class_tokens": classes_BJ.long().sum(0).tolist(),
        "by_class": _weighted_by(experts_BK, classes_BJ, num_experts),
        "frequency_buckets": list(TYPICALITY_BUCKETS),
        "bucket_tokens": torch.bincount(typicality_B, minlength=len(TYPICALITY_BUCKETS)).tolist(),
        "by_frequency": _counts_by(experts_BK, typicality_B, num_experts,
                                   len(TYPICALITY_BUCKETS)),
        "sources": list(source_names),
        "source_samples": torch.bincount(source_B, minlength=sources).tolist(),
        "by_source": _counts_by(experts_BK, source_B, num_experts, sources),
        "goodness_pos": per_expert(good_pos_E),
        "goodness_neg": per_expert(good_neg_E),
        "expert_accuracy": per_expert(right_E),
        "test_goodness": round(float(goodness_pos_BK.sum(1).double().mean()), 4),
    }
    if clusters_BA is not None:
        payload.update({
            "num_clusters": num_clusters, "active_clusters": clusters_BA.shape[1],
            "cluster_histogram": torch.bincount(clusters_BA.reshape(-1),
                                                minlength=num_clusters).tolist(),
            "by_source_cluster": _counts_by(clusters_BA, source_B, num_clusters, sources),
            "by_class_cluster": _weighted_by(clusters_BA, classes_BJ, num_clusters),
        })
    return payload
