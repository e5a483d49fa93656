"""Reading a routing analysis (`routing/L{i}` payloads): shares, lifts and specialization.

Do experts specialize on word classes, or on something arbitrary like token frequency
(seed 002, Block D)? Measured as the share of the routing's entropy that a token
property explains: U(X) = I(expert; X) / H(expert), from the (token, slot) assignment
counts, with the Miller-Madow bias (R-1)(C-1)/(2N) nats subtracted from I so that a
property with many categories does not look informative by chance. U = 0: routing
ignores X; U = 1: X decides the expert. The experts' shares are `load.load_stats`'s (the
one definition); the usage statistics of a histogram are `load_stats`'s too. Pure Python,
used by the compare report, the CLI and the TUI's routing screen.
"""

from __future__ import annotations

import math

from moedesk.stats.load import load_stats

# U at or above this: the property explains a real part of the routing
SPECIALIZATION_THRESHOLD = 0.10
# classes smaller than this share of the tokens are not ranked by lift (too few to tell)
MIN_CLASS_SHARE = 0.01


def entropy(counts: list[float]) -> float:
    total = sum(counts)
    if total <= 0:
        return 0.0
    return -sum(c / total * math.log(c / total) for c in counts if c > 0)


def mutual_information(matrix: list[list[float]]) -> tuple[float, float]:
    """(I(row; column) in nats, its Miller-Madow bias) of a contingency table of counts."""
    total = sum(sum(row) for row in matrix)
    if total <= 0:
        return 0.0, 0.0
    row_sums = [sum(row) for row in matrix]
    col_sums = [sum(col) for col in zip(*matrix, strict=True)]
    info = 0.0
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            if count > 0:
                info += count / total * math.log(count * total / (row_sums[i] * col_sums[j]))
    used_rows = sum(1 for s in row_sums if s > 0)
    used_cols = sum(1 for s in col_sums if s > 0)
    bias = (used_rows - 1) * (used_cols - 1) / (2 * total)
    return max(info, 0.0), bias


def explained_share(matrix: list[list[float]]) -> dict:
    """U = bias-corrected I(expert; X) / H(expert) for an experts x categories table."""
    info, bias = mutual_information(matrix)
    h_expert = entropy([sum(row) for row in matrix])
    corrected = max(info - bias, 0.0)
    return {"mi_nats": info, "bias_nats": bias, "h_expert_nats": h_expert,
            "u": corrected / h_expert if h_expert > 0 else 0.0,
            "categories": sum(1 for col in zip(*matrix, strict=True) if sum(col) > 0)}


def class_expert_shares(payload: dict) -> list[list[float]]:
    """[class][expert]: the share of a class's (token, slot) assignments each expert got
    (rows sum to 1; uniform routing gives 1/E everywhere). Empty classes give zeros."""
    top_k, by_class = payload["top_k"], payload["by_class"]
    out = []
    for c, n_tokens in enumerate(payload["class_tokens"]):
        slots = n_tokens * top_k
        out.append([by_class[e][c] / slots if slots else 0.0 for e in range(len(by_class))])
    return out


def specialization(payload: dict) -> dict:
    """Everything the report says about one layer's routing analysis, computed."""
    histogram = [float(c) for c in payload["histogram"]]
    num_experts = len(histogram)
    shares = load_stats(histogram, payload["top_k"])["shares"]
    by_class = payload["by_class"]
    class_tokens = payload["class_tokens"]
    n_tokens = sum(class_tokens)
    per_expert = []
    for e in range(num_experts):
        best = None
        for c, name in enumerate(payload["classes"]):
            if not n_tokens or class_tokens[c] < MIN_CLASS_SHARE * n_tokens or not shares[e]:
                continue
            # lift = P(expert | class) / P(expert): > 1 when the expert favours the class
            lift = by_class[e][c] / (class_tokens[c] * payload["top_k"]) / shares[e]
            if best is None or lift > best[1]:
                best = (name, lift, by_class[e][c] / histogram[e] if histogram[e] else 0.0)
        per_expert.append({"expert": e, "share": shares[e],
                           "top_class": best[0] if best else None,
                           "top_class_lift": best[1] if best else None,
                           "top_class_part": best[2] if best else None})
    by_class_u = explained_share(by_class)
    by_frequency_u = explained_share(payload["by_frequency"])
    if max(by_class_u["u"], by_frequency_u["u"]) < SPECIALIZATION_THRESHOLD:
        pattern = "none"
    elif by_class_u["u"] >= by_frequency_u["u"]:
        pattern = "word class"
    else:
        pattern = "token frequency"
    return {"layer": payload["layer"], "tokens": payload["tokens"], "shares": shares,
            "class": by_class_u, "frequency": by_frequency_u, "pattern": pattern,
            "per_expert": per_expert}


def _add(a, b):
    return [_add(x, y) for x, y in zip(a, b, strict=True)] if isinstance(a, list) else a + b


def pool_payloads(payloads: list[dict]) -> dict:
    """One layer's routing analyses of several runs (e.g. every seed of a comparison) as
    one: the counts added up. They must share the layout (experts, top-k, classes)."""
    if not payloads:
        raise ValueError("pool_payloads needs at least one payload")
    first = payloads[0]
    layout = ("layer", "num_experts", "top_k", "classes", "frequency_buckets")
    for other in payloads[1:]:
        if any(other[key] != first[key] for key in layout):
            raise ValueError("routing analyses with different layouts cannot be pooled")
    pooled = dict(first)
    for key in ("tokens", "windows", "histogram", "first_choice", "class_tokens", "by_class",
                "bucket_tokens", "by_frequency"):
        for other in payloads[1:]:
            pooled[key] = _add(pooled[key], other[key])
    pooled["runs"] = len(payloads)
    return pooled
