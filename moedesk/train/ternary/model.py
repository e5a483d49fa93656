"""The ternary MoE as one object: router + expert bank + the training step and evaluation.

`train_step` routes a batch, makes its negatives, runs every routed expert on both in
one grouped pass, applies the profile's Hebbian rule and (optionally) moves the dead
zones. `evaluate` is the held-out Forward-Forward accuracy: the share of (positive,
negative) pairs whose positive has the higher total goodness over the positive's K
routed experts, ties counting half (so an expert bank that cannot tell them apart
scores exactly 0.5). Routing during evaluation uses the load counters as they are and
does not change them.

Shape letters: B samples (a batch, or the held-out set), W trits per sample, E experts,
K experts chosen per sample, P (sample, expert) pairs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from moedesk.profiles.schema import Profile
from moedesk.train.ternary.data import derived_seed
from moedesk.train.ternary.experts import ExpertBank, layer_dims
from moedesk.train.ternary.negatives import make_negatives, symbols_of
from moedesk.train.ternary.router import TernaryRouter


@dataclass
class StepStats:
    goodness_pos: float  # sums over the step's (sample, expert) pairs
    goodness_neg: float
    pairs: int
    weights_changed: int
    route_seconds: float
    counts_E: Tensor  # int64 [E], selections this step


@dataclass
class EvalStats:
    accuracy: float
    tie_rate: float
    goodness_pos: float  # mean per (sample, expert) pair
    goodness_neg: float


class TernaryMoE:
    def __init__(self, profile: Profile):
        cfg = profile.ternary
        self.cfg = cfg
        self.symbols = symbols_of(cfg.encoding, profile.data.source)
        self.router = TernaryRouter(cfg, derived_seed(profile.seed, 0))
        dims = layer_dims(cfg.input_dim, cfg.hidden_dim, cfg.output_dim, cfg.expert_layers)
        self.bank = ExpertBank(cfg.num_experts, dims, cfg.activation_threshold,
                               derived_seed(profile.seed, 1), cfg.goodness)
        # negatives and the contrastive rule's random positions
        self.generator = torch.Generator().manual_seed(derived_seed(profile.seed, 2))

    @property
    def total_params(self) -> int:
        """Weight trits of every expert plus every specialization trit."""
        return self.cfg.num_experts * (self.bank.weights_per_expert + self.cfg.specialization_dim)

    @property
    def active_params(self) -> int:
        """Trits one sample reads: its K experts' weights and the specializations it scores."""
        return (self.cfg.active_experts * self.bank.weights_per_expert
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

    def train_step(self, x_BW: Tensor) -> StepStats:
        cfg = self.cfg
        # 1. route the positives (this counts towards the load counters)
        t0 = time.perf_counter()
        experts_BK = self.router.route(x_BW, update=True)
        route_seconds = time.perf_counter() - t0
        if cfg.specialization_learning > 0:
            self.router.learn(x_BW, experts_BK, cfg.specialization_learning, self.generator)
        # 2. negatives, then every routed expert on both, in one grouped pass
        x_neg_BW = self.negatives(x_BW)
        fwd = self.bank.forward_pairs(*self._pairs(x_BW, x_neg_BW, experts_BK))
        # 3. learn, then move the dead zones towards the target activity
        if cfg.hebbian_rule == "reference":
            changed = self.bank.update_reference(fwd)
        else:
            changed = self.bank.update_contrastive(fwd, cfg.update_fraction, cfg.margin,
                                                   self.generator)
        if cfg.target_activity > 0:
            self.bank.adapt_thresholds(fwd, cfg.target_activity)
        return StepStats(float(fwd.goodness_pos_P.sum()), float(fwd.goodness_neg_P.sum()),
                         int(fwd.delta_P.numel()), changed, route_seconds,
                         torch.bincount(experts_BK.reshape(-1), minlength=cfg.num_experts))

    @torch.no_grad()
    def evaluate(self, x_BW: Tensor, x_neg_BW: Tensor, batch_size: int) -> EvalStats:
        wins = ties = g_pos = g_neg = 0.0
        pairs = 0
        for start in range(0, len(x_BW), batch_size):
            x, x_neg = x_BW[start:start + batch_size], x_neg_BW[start:start + batch_size]
            experts_BK = self.router.route(x, update=False)
            fwd = self.bank.forward_pairs(*self._pairs(x, x_neg, experts_BK))
            k = experts_BK.shape[1]
            total_pos_B = fwd.goodness_pos_P.reshape(-1, k).sum(1)
            total_neg_B = fwd.goodness_neg_P.reshape(-1, k).sum(1)
            wins += float((total_pos_B > total_neg_B).sum())
            ties += float((total_pos_B == total_neg_B).sum())
            g_pos += float(total_pos_B.sum())
            g_neg += float(total_neg_B.sum())
            pairs += fwd.delta_P.numel()
        n = len(x_BW)
        return EvalStats((wins + 0.5 * ties) / n, ties / n, g_pos / pairs, g_neg / pairs)

    def state_dict(self) -> dict:
        return {"router": self.router.state_dict(), "experts": self.bank.state_dict(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.router.load_state_dict(state["router"])
        self.bank.load_state_dict(state["experts"])
        self.generator.set_state(state["generator"])
