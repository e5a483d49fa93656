"""The ternary MoE as one object: router + expert bank + the training step and evaluation.

`train_step` routes a batch (and, with `specialization_learning`, moves the routed
experts' specializations towards it), noises the positives (`augment_noise`), makes
`negative_samples_per_positive` negatives each, runs every routed expert on both in one
grouped pass, applies the profile's Hebbian rule to the pairs `expert_dropout` keeps and
moves their dead zones. `evaluate` is the held-out Forward-Forward accuracy: the share of
(positive, negative) pairs whose positive has the higher total goodness over the
positive's K routed experts, ties counting half (so an expert bank that cannot tell them
apart scores exactly 0.5); it also returns each pair's routing and goodness for the
per-source accuracies and the routing analysis. Routing during evaluation uses the load
counters as they are and does not change them.

Shape letters: B samples (a batch, or the held-out set), W trits per sample, E experts,
K experts chosen per sample, A clusters chosen per sample, P (sample, expert) pairs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from moedesk.profiles.schema import Profile
from moedesk.train.ternary.data import derived_seed, run_symbols
from moedesk.train.ternary.experts import ExpertBank, layer_dims
from moedesk.train.ternary.negatives import make_negatives
from moedesk.train.ternary.router import TernaryRouter, random_trits


@dataclass
class StepStats:
    goodness_pos: float  # sums over the step's (sample, expert) pairs
    goodness_neg: float
    pairs: int
    weights_changed: int
    route_seconds: float
    counts_E: Tensor  # int64 [E], selections this step
    pairs_updated: int  # pairs expert dropout kept


@dataclass
class EvalStats:
    accuracy: float
    tie_rate: float
    goodness_pos: float  # mean per (sample, expert) pair
    goodness_neg: float
    win_B: Tensor  # float64: 1 positive higher, 0.5 tie, 0 lower
    total_pos_B: Tensor  # int64: goodness summed over the K routed experts (seed 000's)
    total_neg_B: Tensor
    experts_BK: Tensor  # int64, the routing of the positives
    clusters_BA: Tensor | None  # int64, level 1 of hierarchical routing
    goodness_pos_BK: Tensor  # int64, per routed expert
    goodness_neg_BK: Tensor


class TernaryMoE:
    def __init__(self, profile: Profile):
        cfg = profile.ternary
        self.cfg = cfg
        self.symbols = run_symbols(profile)
        self.router = TernaryRouter(cfg, derived_seed(profile.seed, 0))
        dims = layer_dims(cfg.input_dim, cfg.hidden_dim, cfg.output_dim, cfg.expert_layers)
        self.bank = ExpertBank(cfg.num_experts, dims, cfg.activation_threshold,
                               derived_seed(profile.seed, 1), cfg.goodness)
        # negatives, noise, dropout and the contrastive rule's random positions
        self.generator = torch.Generator().manual_seed(derived_seed(profile.seed, 2))

    @property
    def active_experts(self) -> int:
        return self.router.top_k

    def set_active_experts(self, k: int) -> None:
        """Progressive experts: route to k experts from now on (load counters carry over)."""
        self.router.top_k = k

    @property
    def total_params(self) -> int:
        """Weight trits of every expert plus every specialization trit."""
        return self.cfg.num_experts * (self.bank.weights_per_expert + self.cfg.specialization_dim)

    @property
    def active_params(self) -> int:
        """Trits one sample reads: its K experts' weights and the specializations it scores."""
        return (self.active_experts * self.bank.weights_per_expert
                + self.cfg.num_experts * self.cfg.specialization_dim)

    def _pairs(self, x_BW: Tensor, x_neg_BW: Tensor, experts_BK: Tensor):
        k = experts_BK.shape[1]
        return (x_BW.repeat_interleave(k, 0), x_neg_BW.repeat_interleave(k, 0),
                experts_BK.reshape(-1))

    def negatives(self, x_BW: Tensor) -> Tensor:
        """The profile's negatives for a batch, drawn from the model's generator."""
        cfg = self.cfg
        return make_negatives(x_BW, cfg.negatives, self.symbols, cfg.input_dim,
                              cfg.corruption, self.generator)

    def add_noise(self, x_BW: Tensor) -> Tensor:
        """Seed 000's AddNoise: each trit becomes a uniform random trit with augment_noise."""
        hit_BW = torch.rand(x_BW.shape, generator=self.generator) < self.cfg.augment_noise
        return torch.where(hit_BW, random_trits(tuple(x_BW.shape), self.generator), x_BW)

    def train_step(self, x_BW: Tensor) -> StepStats:
        cfg = self.cfg
        # 1. route the positives (this counts towards the load counters); learned
        #    specializations move towards what they were sent
        t0 = time.perf_counter()
        experts_BK = self.router.route(x_BW, update=True)
        route_seconds = time.perf_counter() - t0
        if cfg.specialization_learning > 0:
            self.router.learn(x_BW, experts_BK, cfg.specialization_learning, self.generator)
        # 2. noised positives, their negatives, then every routed expert on both at once
        if cfg.augment_noise > 0:
            x_BW = self.add_noise(x_BW)
        repeats = cfg.negative_samples_per_positive
        x_neg_BW = torch.cat([self.negatives(x_BW) for _ in range(repeats)])
        if repeats > 1:
            x_BW, experts_BK = x_BW.repeat(repeats, 1), experts_BK.repeat(repeats, 1)
        fwd = self.bank.forward_pairs(*self._pairs(x_BW, x_neg_BW, experts_BK))
        # 3. learn on the pairs expert dropout keeps, then move their dead zones
        keep_P = None
        if cfg.expert_dropout > 0:
            keep_P = torch.rand(fwd.delta_P.shape, generator=self.generator) >= cfg.expert_dropout
        if cfg.hebbian_rule == "reference":
            changed = self.bank.update_reference(fwd, keep_P)
        else:
            changed = self.bank.update_contrastive(fwd, cfg.update_fraction, cfg.margin,
                                                   self.generator, keep_P)
        if cfg.target_activity > 0:
            self.bank.adapt_thresholds(fwd, cfg.target_activity, keep_P)
        routed_BK = experts_BK[:len(experts_BK) // repeats]
        return StepStats(float(fwd.goodness_pos_P.sum()), float(fwd.goodness_neg_P.sum()),
                         int(fwd.delta_P.numel()), changed, route_seconds,
                         torch.bincount(routed_BK.reshape(-1), minlength=cfg.num_experts),
                         int(fwd.delta_P.numel() if keep_P is None else keep_P.sum()))

    @torch.no_grad()
    def evaluate(self, x_BW: Tensor, x_neg_BW: Tensor, batch_size: int) -> EvalStats:
        k = self.active_experts
        parts: dict[str, list[Tensor]] = {"experts": [], "clusters": [], "pos": [], "neg": []}
        for start in range(0, len(x_BW), batch_size):
            x, x_neg = x_BW[start:start + batch_size], x_neg_BW[start:start + batch_size]
            experts_BK = self.router.route(x, update=False)
            if self.router.hierarchical:
                parts["clusters"].append(self.router.chosen_clusters(x))
            fwd = self.bank.forward_pairs(*self._pairs(x, x_neg, experts_BK))
            parts["experts"].append(experts_BK)
            parts["pos"].append(fwd.goodness_pos_P.reshape(-1, k))
            parts["neg"].append(fwd.goodness_neg_P.reshape(-1, k))
        pos_BK, neg_BK = torch.cat(parts["pos"]), torch.cat(parts["neg"])
        total_pos_B, total_neg_B = pos_BK.sum(1), neg_BK.sum(1)
        win_B = (total_pos_B > total_neg_B).double() + 0.5 * (total_pos_B == total_neg_B).double()
        pairs = pos_BK.numel()
        return EvalStats(float(win_B.mean()), float((total_pos_B == total_neg_B).double().mean()),
                         float(total_pos_B.sum()) / pairs, float(total_neg_B.sum()) / pairs,
                         win_B, total_pos_B, total_neg_B, torch.cat(parts["experts"]),
                         torch.cat(parts["clusters"]) if parts["clusters"] else None,
                         pos_BK, neg_BK)

    def state_dict(self) -> dict:
        return {"router": self.router.state_dict(), "experts": self.bank.state_dict(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.router.load_state_dict(state["router"])
        self.bank.load_state_dict(state["experts"])
        self.generator.set_state(state["generator"])
