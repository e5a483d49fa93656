"""The ternary router: fixed trit specializations, dot-product scores, flat or 2-level top-K.

Each expert owns a specialization vector of `specialization_dim` random trits, drawn
once from the profile seed and never trained (as in the reference). A sample's score
for an expert is the integer dot product of its first `specialization_dim` trits with
that vector, computed for the whole batch as one `X @ S.T`.

Hierarchical routing groups experts into clusters of `cluster_size` consecutive ids.
A cluster's centroid is the sign of its members' sum (a per-dimension majority vote);
the reference divides the sum by the member count with truncation, which leaves every
full cluster's centroid at zero and turns cluster choice into a tie-break.

Load-aware routing subtracts `load_balance_alpha * score_std * (load - 1)` from every
score, where load is an expert's (or cluster's) decayed selection count over its fair
share and score_std = sqrt(2/3 * specialization_dim) is the spread of a dot product with
random trits, so alpha is unit-free. Counters halve every `rebalance_interval` batches.
All ties break towards the lower expert (or cluster) id (`top_k_stable`).

Shape letters: B samples, W trits per sample, R trits the router reads
(specialization_dim), E experts, K experts chosen per sample, C clusters, A clusters
chosen per sample, Y the candidates of one top-k (experts or clusters; in the one-sample
path every expert, a sentinel, then every cluster). A `_t` suffix
marks a transposed copy (`spec_t_RE` is `spec_ER` transposed, kept for the matmul).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from moedesk.profiles.schema import TernarySection


def random_trits(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Uniform i.i.d. trits from a seeded generator."""
    return (torch.randint(0, 3, shape, generator=generator) - 1).to(torch.int8)


def majority_centroids(spec_ER: Tensor, cluster_of_E: Tensor, num_clusters: int) -> Tensor:
    """Per-dimension sign of the members' sum: +1 / -1 where the cluster leans, 0 on a tie."""
    sums_CR = torch.zeros(num_clusters, spec_ER.shape[1], dtype=torch.int32)
    sums_CR.index_add_(0, cluster_of_E, spec_ER.to(torch.int32))
    return torch.sign(sums_CR).to(torch.int8)


SCORE_GRID = 1024  # penalized scores are compared at 1/1024 of a dot-product unit


def top_k_stable(scores_BY: Tensor, k: int, allowed_BY: Tensor | None = None) -> Tensor:
    """Indices of the k highest scores per row, best first; equal scores go to the lower
    index, entries not `allowed` never win. Each score becomes a unique float64 key (the
    score on a 1/1024 grid, times Y, plus Y-1-index; exact below 2^53), so `topk` order is
    fully determined: a stable sort gives the same answer at about three times the cost."""
    n = scores_BY.shape[1]
    keys_BY = torch.round(scores_BY.double() * SCORE_GRID).mul_(n).add_(_tiebreak(n))
    if allowed_BY is not None:
        keys_BY.masked_fill_(~allowed_BY, -math.inf)
    return torch.topk(keys_BY, k, dim=1).indices


_TIEBREAKS: dict[int, Tensor] = {}


def _tiebreak(n: int) -> Tensor:
    """float64 [n]: n-1 ... 0, so the lower index wins a tie."""
    if n not in _TIEBREAKS:
        _TIEBREAKS[n] = torch.arange(n - 1, -1, -1, dtype=torch.float64)
    return _TIEBREAKS[n]


class TernaryRouter:
    def __init__(self, cfg: TernarySection, seed: int):
        self.num_experts = cfg.num_experts
        self.top_k = cfg.active_experts
        self.dim = cfg.specialization_dim
        self.hierarchical = cfg.topology == "hierarchical"
        self.cluster_size = cfg.cluster_size
        self.active_clusters = cfg.active_clusters
        self.alpha = cfg.load_balance_alpha
        self.rebalance_interval = cfg.rebalance_interval
        self.score_std = math.sqrt(2.0 / 3.0 * self.dim)
        generator = torch.Generator().manual_seed(seed)
        self.spec_ER = random_trits((self.num_experts, self.dim), generator)
        self.num_clusters = math.ceil(self.num_experts / self.cluster_size)
        self.cluster_of_E = torch.arange(self.num_experts) // self.cluster_size
        num_e, num_c = self.num_experts, self.num_clusters
        cluster_of_E = self.cluster_of_E.numpy()
        members_C = np.bincount(cluster_of_E, minlength=num_c)
        # loads_Z: the counters (E), the sentinel's +inf, each cluster's mean count (C) and
        # the total; counts_E is a view of it, so the counters have one home
        self._loads_Z = np.zeros(num_e + 1 + num_c + 1)
        self._loads_Z[num_e] = np.inf
        self._counts_np = self._loads_Z[:num_e]
        self.counts_E = torch.from_numpy(self._counts_np)  # decayed selection counts (float)
        # one product with the counters gives every cluster's mean count and the total
        self._mean_EZ = np.zeros((num_e, num_c + 1))
        self._mean_EZ[np.arange(num_e), cluster_of_E] = 1.0 / members_C[cluster_of_E]
        self._mean_EZ[:, num_c] = 1.0
        # the tie-break of each key column: -(n-1-id)/n, n = E for experts, C for clusters
        self._tiebreak_Y = np.concatenate([-_tiebreak(num_e).numpy() / num_e, [0.0],
                                           -_tiebreak(num_c).numpy() / num_c])
        # each cluster's members, the short last cluster padded with the sentinel column E
        self._members_CY = np.full((num_c, self.cluster_size), num_e, dtype=np.int64)
        self._members_CY.reshape(-1)[:num_e] = np.arange(num_e)
        self._grid_Y = np.zeros(num_e + 1 + num_c)
        self._offset_Y = np.zeros(num_e + 1 + num_c)
        self.batches_since_decay = 0
        self._counts_version = 0  # bumped whenever counts_E changes: the offsets' cache key
        self._offsets_version = -1  # the counters' version _offset_Y was computed for
        self._sync_views()

    def _sync_views(self) -> None:
        """The key matrices, from the specializations: float32 [R, Y] whose product with a
        sample gives -1024 x every expert's, the sentinel's and every cluster's integer dot
        product (Y = E + 1 + C columns; exact in float32), and its torch blocks."""
        self.spec_t_RE = self.spec_ER.t().float().contiguous()
        self.centroid_CR = majority_centroids(self.spec_ER, self.cluster_of_E, self.num_clusters)
        self.centroid_t_RC = self.centroid_CR.t().float().contiguous()
        self._neg_t_RE = self.spec_t_RE * -SCORE_GRID
        self._neg_t_RC = self.centroid_t_RC * -SCORE_GRID
        self._neg_both_RY = np.ascontiguousarray(np.concatenate(
            [self._neg_t_RE.numpy(), np.zeros((self.dim, 1), dtype=np.float32),
             self._neg_t_RC.numpy()], axis=1))
        self._counts_version += 1

    # ---- scoring -------------------------------------------------------------------------
    def _inputs(self, x_BW: Tensor) -> Tensor:
        """The first `dim` trits of each sample as float (zero-padded if shorter)."""
        x = x_BW[:, :self.dim].float()
        if x.shape[1] < self.dim:
            x = torch.nn.functional.pad(x, (0, self.dim - x.shape[1]))
        return x

    def _offsets(self) -> np.ndarray:
        """The routing keys' offsets, float64 [E + 1 + C] (experts, the one-sample path's
        sentinel, clusters). A sample's negated key for a column is -1024 x dot + offset,
        offset = grid - (n-1-id)/n, grid = alpha * score_std * (load - 1) x 1024 rounded to
        an integer (a cluster's load is its members' mean load; zeros before any routing):
        the penalized score on `top_k_stable`'s 1/1024 grid with its tie-break, divided by
        n (n = E for experts, C for clusters). The integer part is exact in float64 and
        the tie-break fraction stays resolved (1/(2n) is far above the ulp below 2^40), so
        the order is exactly `top_k_stable`'s. +inf for the sentinel. Cached until the
        counters change."""
        if self._offsets_version == self._counts_version:
            return self._offset_Y
        num_e, loads_Z, grid_Y = self.num_experts, self._loads_Z, self._grid_Y
        np.dot(self._counts_np, self._mean_EZ, out=loads_Z[num_e + 1:])
        total = loads_Z[-1]
        if self.alpha > 0 and total > 0:
            scale = self.alpha * self.score_std * SCORE_GRID
            np.multiply(loads_Z[:-1], scale * num_e / total, out=grid_Y)
            grid_Y -= scale
            np.rint(grid_Y, out=grid_Y)  # the sentinel's +inf stays +inf
        else:
            grid_Y.fill(0.0)
            grid_Y[num_e] = np.inf
        np.add(grid_Y, self._tiebreak_Y, out=self._offset_Y)
        self._offsets_version = self._counts_version
        return self._offset_Y

    def _offset_tensors(self) -> tuple[Tensor, Tensor]:
        """torch views of the experts' and the clusters' offsets (the batched path)."""
        offset_Y, num_e = self._offsets(), self.num_experts
        return torch.from_numpy(offset_Y[:num_e]), torch.from_numpy(offset_Y[num_e + 1:])

    def _neg_keys(self, x_BR: Tensor, neg_t_RY: Tensor, offset_Y: Tensor) -> Tensor:
        """The negated routing keys, float64 [B, Y]: the smallest is the best choice."""
        return (x_BR @ neg_t_RY).double().add_(offset_Y)

    def load_penalty_E(self) -> Tensor:
        """The experts' load penalty, float64 [E] (on the score grid)."""
        self._offsets()
        return torch.from_numpy(self._grid_Y[:self.num_experts] / SCORE_GRID)

    def scores(self, x_BW: Tensor) -> Tensor:
        """Integer dot products with every specialization, as float32 [B, E] (exact)."""
        return self._inputs(x_BW) @ self.spec_t_RE

    def route(self, x_BW: Tensor, update: bool = True) -> Tensor:
        """The K experts for each sample, int64 [B, K] in descending (penalized) score order.

        `update` adds the selections to the load counters (training); evaluation routes
        with the counters frozen. One sample takes `_route_one` (the same choices).
        """
        if x_BW.shape[0] == 1:
            return self._route_one(x_BW, update)
        return self._route_batch(x_BW, update)

    def _route_batch(self, x_BW: Tensor, update: bool) -> Tensor:
        x_BR = self._inputs(x_BW)
        neg_BE = self._neg_keys(x_BR, self._neg_t_RE, self._offset_tensors()[0])
        if self.hierarchical:
            neg_BE.masked_fill_(~self._chosen_cluster_mask(x_BR), math.inf)
        experts_BK = torch.topk(neg_BE, self.top_k, dim=1, largest=False).indices
        if update:
            self.record(experts_BK)
        return experts_BK

    def _route_one(self, x_BW: Tensor, update: bool) -> Tensor:
        """One sample in numpy: a single routing call (what seed 000's < 100 us is about)
        would otherwise be a couple of dozen torch dispatches. One matvec and one add give
        every negated key (experts, sentinel, clusters), so the choices and their order
        are the batched path's."""
        x_R = x_BW.numpy()[0, :self.dim]  # int8; the matvec converts it
        if x_R.shape[0] < self.dim:
            x_R = np.pad(x_R, (0, self.dim - x_R.shape[0]))
        neg_Y = np.add(x_R @ self._neg_both_RY, self._offsets())  # float32 + float64
        if self.hierarchical:
            num_e, a = self.num_experts, self.active_clusters
            clusters_A = np.argpartition(neg_Y[num_e + 1:], a - 1)[:a]
            ids_Y = self._members_CY[clusters_A].reshape(-1)  # may hold the sentinel E
            experts_K = ids_Y[np.argsort(neg_Y[ids_Y])[:self.top_k]]
        else:  # one sort of 243 keys beats a partition plus a sort here
            experts_K = np.argsort(neg_Y[:self.num_experts])[:self.top_k]
        if update:
            self._counts_np[experts_K] += 1.0  # K distinct experts: no repeated index
            self._after_batch()
        return torch.from_numpy(experts_K[None])

    def chosen_clusters(self, x_BW: Tensor) -> Tensor:
        """Level 1 alone: the `active_clusters` clusters of each sample, int64 [B, A]."""
        return self._clusters(self._inputs(x_BW))

    def _clusters(self, x_BR: Tensor) -> Tensor:
        neg_BC = self._neg_keys(x_BR, self._neg_t_RC, self._offset_tensors()[1])
        return torch.topk(neg_BC, self.active_clusters, dim=1, largest=False).indices

    def _chosen_cluster_mask(self, x_BR: Tensor) -> Tensor:
        """bool [B, E]: the members of each sample's chosen clusters.

        At 243 experts one GEMM over every expert is cheaper than gathering the
        candidates' vectors; masking the others gives the same choice as scoring only
        the candidates."""
        clusters_BA = self._clusters(x_BR)
        chosen_BC = torch.zeros(x_BR.shape[0], self.num_clusters, dtype=torch.bool)
        chosen_BC.scatter_(1, clusters_BA, True)
        return chosen_BC[:, self.cluster_of_E]

    # ---- learned specializations (competitive Hebbian) ------------------------------------
    def set_specializations(self, spec_ER: Tensor) -> None:
        self.spec_ER = spec_ER.to(torch.int8).clone()
        self._sync_views()

    def learn(self, x_BW: Tensor, experts_BK: Tensor, fraction: float,
              generator: torch.Generator) -> int:
        """Move each routed expert's specialization one trit step towards the sign of its
        samples' centred sum, on a random `fraction` of its positions; returns the moves."""
        x_BR = self._inputs(x_BW)
        centred_BR = x_BR - x_BR.mean(0, keepdim=True)
        sums_ER = torch.zeros(self.num_experts, self.dim)
        flat_B = torch.arange(x_BR.shape[0]).repeat_interleave(experts_BK.shape[1])
        sums_ER.index_add_(0, experts_BK.reshape(-1), centred_BR[flat_B])
        target_ER = torch.sign(sums_ER)
        draw_ER = torch.rand(self.num_experts, self.dim, generator=generator) < fraction
        spec_ER = self.spec_ER.float()
        moves_ER = draw_ER & (target_ER != 0) & (target_ER != spec_ER)
        self.set_specializations(spec_ER + target_ER * moves_ER)
        return int(moves_ER.sum())

    # ---- load counters -------------------------------------------------------------------
    def record(self, experts_BK: Tensor) -> None:
        """Count one batch's selections; halve the counters every `rebalance_interval` batches."""
        flat = experts_BK.reshape(-1)
        self.counts_E.index_put_((flat,), torch.ones(flat.shape, dtype=torch.float64),
                                 accumulate=True)
        self._after_batch()

    def _after_batch(self) -> None:
        self._counts_version += 1
        self.batches_since_decay += 1
        if self.batches_since_decay >= self.rebalance_interval:
            self.counts_E *= 0.5
            self.batches_since_decay = 0

    def state_dict(self) -> dict:
        return {"spec_ER": self.spec_ER.clone(), "counts_E": self.counts_E.clone(),
                "batches_since_decay": self.batches_since_decay}

    def load_state_dict(self, state: dict) -> None:
        spec = state["spec_ER"] if "spec_ER" in state else state["spec_ED"]  # older name
        if tuple(spec.shape) != (self.num_experts, self.dim):
            raise ValueError(f"specializations have shape {tuple(spec.shape)}, the profile "
                             f"needs ({self.num_experts}, {self.dim})")
        self.set_specializations(spec)
        self.counts_E.copy_(state["counts_E"].to(torch.float64))  # into the one buffer
        self.batches_since_decay = int(state["batches_since_decay"])
