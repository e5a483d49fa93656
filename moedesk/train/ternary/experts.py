"""The expert bank: every expert's ternary layers, the grouped forward pass and Hebbian rules.

Each expert is a stack of ternary linear layers (input_dim -> hidden_dim ... ->
output_dim); one [E, fan_in, fan_out] tensor per layer holds every expert's weight trits
(float32 holding -1/0/+1, so batched matmuls run on them directly and stay exact; the
checkpoint stores int8). A layer's output is the ternary sign of its integer
pre-activation with a dead zone: y = sign(pre) where |pre| > threshold, else 0. With
`adaptive_threshold` each unit's threshold moves one step per batch towards the target
activity on positives (homeostasis); threshold 0 and no adaptation is the reference's
plain sign. Goodness is the number of non-zero output trits of the last layer, or with
`goodness = "layers"` of every layer (layer-local goodness: each layer's activity counts,
and the margin gate reads the sum).

Routing produces (sample, expert) pairs. `group_pairs` places them in a padded
[E, M] layout (row = expert, M = the busiest expert's pair count) so that one batched
matmul per layer serves every expert, positives and negatives together; padding slots
carry zero inputs, produce zero outputs and add nothing to any update.

Learning rules (per layer; mini-batch semantics: activations and deltas come from the
weights at the start of the step):
- reference: the documented rule. For every pair with delta = g(pos) - g(neg) > 0,
  W_ij <- W_ij (+) x_i for every j, x the positive's input to that layer, in GF(3);
  several pairs on one expert sum in GF(3), exactly as applying them one by one.
- contrastive: the Forward-Forward goodness rule in trits. H = sum over pairs of
  x_pos (x) y_pos - x_neg (x) y_neg (strengthen the positive's active units, weaken the
  negative's). Each step every expert draws `update_fraction` of its weight positions
  at random; there the weight takes one GF(3) step towards sign(H), except a step that
  would wrap (+1 -> -1 or -1 -> +1) and erase what was learnt. Only pairs with
  delta <= margin contribute. (Taking the strongest |H| first instead learnt more slowly,
  made all-or-nothing experts and needed a histogram over every weight; docs/ternary.md.)

Shape letters: E experts, P (sample, expert) pairs, W trits per sample, M pair slots per
expert (the padded layout's width), 2 the positive/negative phase, I / O a layer's
fan-in / fan-out units (`x_EI2M` has its (phase, slot) axes flattened), Q one expert's
weight positions in a layer (I x O), U positions drawn at random (for one update); a
trailing 1 is a broadcast axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from moedesk.train.ternary.router import random_trits


@dataclass
class PairGroups:
    """(sample, expert) pairs placed in a padded [E, M] layout."""

    expert_P: Tensor  # int64 [P], each pair's expert (its row)
    slot_P: Tensor  # int64 [P], each pair's column
    capacity: int  # M: pairs of the busiest expert
    counts_E: Tensor  # int64 [E], pairs per expert


def group_pairs(expert_P: Tensor, num_experts: int) -> PairGroups:
    counts_E = torch.bincount(expert_P, minlength=num_experts)
    order_P = torch.argsort(expert_P, stable=True)
    starts_E = torch.cumsum(counts_E, 0) - counts_E
    slot_P = torch.empty_like(expert_P)
    slot_P[order_P] = torch.arange(expert_P.numel()) - starts_E[expert_P[order_P]]
    return PairGroups(expert_P, slot_P, max(1, int(counts_E.max())), counts_E)


def layer_dims(input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> list[int]:
    """Widths of the activations: [input, hidden x (num_layers - 1), output]."""
    return [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]


def initial_threshold(fan_in: int, threshold: float) -> float:
    """`threshold` x the spread of a dot product of fan_in random trits with uniform trits."""
    return threshold * math.sqrt(4.0 / 9.0 * fan_in)


def ternary_activation(pre: Tensor, threshold: Tensor | float) -> Tensor:
    return torch.where(pre.abs() > threshold, torch.sign(pre), torch.zeros_like(pre))


@dataclass
class PairForward:
    """What one grouped forward pass over positives and negatives produced."""

    groups: PairGroups
    inputs_E2MI: list[Tensor]  # per layer, float: [:, 0] positives, [:, 1] negatives
    outputs_E2MO: list[Tensor]  # per layer, float
    goodness_pos_P: Tensor  # int64 [P]
    goodness_neg_P: Tensor  # int64 [P]

    @property
    def delta_P(self) -> Tensor:
        return self.goodness_pos_P - self.goodness_neg_P


class ExpertBank:
    def __init__(self, num_experts: int, dims: list[int], threshold: float, seed: int,
                 goodness: str = "last"):
        self.num_experts = num_experts
        self.dims = dims
        self.goodness = goodness
        generator = torch.Generator().manual_seed(seed)
        self.weights_EIO = [random_trits((num_experts, fan_in, fan_out), generator).float()
                        for fan_in, fan_out in zip(dims[:-1], dims[1:], strict=True)]
        self.thresholds_EO = [torch.full((num_experts, fan_out), initial_threshold(fan_in, threshold))
                           for fan_in, fan_out in zip(dims[:-1], dims[1:], strict=True)]

    @property
    def weights_per_expert(self) -> int:
        return sum(w.shape[1] * w.shape[2] for w in self.weights_EIO)

    def forward_pairs(self, x_pos_PW: Tensor, x_neg_PW: Tensor, expert_P: Tensor
                      ) -> PairForward:
        """Run each pair's expert on its positive and its negative, all pairs at once."""
        groups = group_pairs(expert_P, self.num_experts)
        num_e, cap, fan_in = self.num_experts, groups.capacity, self.dims[0]  # E, M, I
        x_E2MI = torch.zeros(num_e, 2, cap, fan_in)
        x_E2MI[expert_P, 0, groups.slot_P] = x_pos_PW[:, :fan_in].float()
        x_E2MI[expert_P, 1, groups.slot_P] = x_neg_PW[:, :fan_in].float()
        inputs_E2MI, outputs_E2MO = [], []
        for weight_EIO, threshold_EO in zip(self.weights_EIO, self.thresholds_EO, strict=True):
            pre = torch.bmm(x_E2MI.reshape(num_e, 2 * cap, -1), weight_EIO)
            y_E2MO = ternary_activation(pre, threshold_EO.unsqueeze(1)).reshape(num_e, 2, cap, -1)
            inputs_E2MI.append(x_E2MI)
            outputs_E2MO.append(y_E2MO)
            x_E2MI = y_E2MO
        if self.goodness == "layers":  # layer-local: every layer's active units count
            goodness_E2M = sum((y != 0).sum(-1) for y in outputs_E2MO)
        else:
            goodness_E2M = (x_E2MI != 0).sum(-1)
        return PairForward(groups, inputs_E2MI, outputs_E2MO, goodness_E2M[expert_P, 0, groups.slot_P],
                           goodness_E2M[expert_P, 1, groups.slot_P])

    def _pair_mask(self, groups: PairGroups, active_P: Tensor) -> Tensor:
        """float [E, M, 1]: 1 where a pair takes part in an update."""
        mask_EM = torch.zeros(self.num_experts, groups.capacity)
        mask_EM[groups.expert_P, groups.slot_P] = active_P.float()
        return mask_EM.unsqueeze(-1)

    @staticmethod
    def _kept(active_P: Tensor, keep_P: Tensor | None) -> Tensor:
        """Pairs that take part: `active_P`, minus those expert dropout skips."""
        return active_P if keep_P is None else active_P & keep_P

    def update_reference(self, fwd: PairForward, keep_P: Tensor | None = None) -> int:
        """The documented rule; returns how many weight trits changed."""
        mask_EM1 = self._pair_mask(fwd.groups, self._kept(fwd.delta_P > 0, keep_P))
        changed = 0
        for layer, weight_EIO in enumerate(self.weights_EIO):
            # GF(3) sum of the gated positives' inputs, as a balanced trit per input unit
            sum_EI = (fwd.inputs_E2MI[layer][:, 0] * mask_EM1).sum(1)
            step_EI1 = (torch.remainder(sum_EI + 1, 3) - 1).unsqueeze(-1)
            new_EIO = torch.remainder(weight_EIO + step_EI1 + 1, 3) - 1
            changed += int((new_EIO != weight_EIO).sum())
            weight_EIO.copy_(new_EIO)
        return changed

    def update_contrastive(self, fwd: PairForward, update_fraction: float, margin: int,
                           generator: torch.Generator, keep_P: Tensor | None = None) -> int:
        """The default rule; returns how many weight trits changed."""
        mask_EM1 = self._pair_mask(fwd.groups, self._kept(fwd.delta_P <= margin, keep_P))
        changed = 0
        for layer, weight_EIO in enumerate(self.weights_EIO):
            x_E2MI, y_E2MO = fwd.inputs_E2MI[layer], fwd.outputs_E2MO[layer]
            # one matmul for both phases: the negatives' inputs enter with a minus sign
            signed_E2M1 = mask_EM1.unsqueeze(1) * torch.tensor([1.0, -1.0]).view(1, 2, 1, 1)
            x_EI2M = (x_E2MI * signed_E2M1).flatten(1, 2).transpose(1, 2)
            hebb_EIO = torch.bmm(x_EI2M, y_E2MO.flatten(1, 2))
            # each expert considers a random `update_fraction` of its positions (with
            # replacement, so duplicates just repeat the same write)
            num_e, n = weight_EIO.shape[0], weight_EIO.shape[1] * weight_EIO.shape[2]
            budget = max(1, round(update_fraction * n))
            where_EU = torch.randint(n, (num_e, budget), generator=generator)
            weight_EQ = weight_EIO.view(num_e, n)
            current_EU = weight_EQ.gather(1, where_EU)
            step_EU = torch.sign(hebb_EIO.reshape(num_e, n).gather(1, where_EU))
            # a step onto a weight already at the target would wrap it to the opposite sign
            moves_EU = (step_EU != 0) & (step_EU != current_EU)
            weight_EQ.scatter_(1, where_EU, current_EU + step_EU * moves_EU)
            # a position drawn twice moved once: count positions, not draws
            moved_EQ = torch.zeros(weight_EQ.shape, dtype=torch.bool)
            changed += int(moved_EQ.scatter_(1, where_EU, moves_EU).sum())
        return changed

    def adapt_thresholds(self, fwd: PairForward, target: float,
                         keep_P: Tensor | None = None) -> None:
        """Homeostasis: move each used unit's dead zone one step towards `target` activity
        on the positives of the (kept) pairs."""
        real_EM1 = self._pair_mask(fwd.groups, self._kept(
            torch.ones_like(fwd.delta_P, dtype=torch.bool), keep_P))
        pairs_E1 = real_EM1.sum(1)
        used_E1 = pairs_E1 > 0
        for layer, threshold_EO in enumerate(self.thresholds_EO):
            active_EO = ((fwd.outputs_E2MO[layer][:, 0] != 0).float() * real_EM1).sum(1)
            rate_EO = active_EO / pairs_E1.clamp(min=1)
            step_EO = torch.sign(rate_EO - target) * used_E1
            threshold_EO.add_(step_EO).clamp_(min=0)

    def int8_weights(self) -> list[Tensor]:
        return [w.to(torch.int8) for w in self.weights_EIO]

    def state_dict(self) -> dict:
        return {"weights": self.int8_weights(), "thresholds": [t.clone() for t in self.thresholds_EO]}

    def load_state_dict(self, state: dict) -> None:
        weights, thresholds = state["weights"], state["thresholds"]
        want = [tuple(w.shape) for w in self.weights_EIO]
        got = [tuple(w.shape) for w in weights]
        if got != want or [tuple(t.shape) for t in thresholds] != [
                tuple(t.shape) for t in self.thresholds_EO]:
            raise ValueError(f"expert weights have shapes {got}, the profile needs {want}")
        self.weights_EIO = [w.float().clone() for w in weights]
        self.thresholds_EO = [t.float().clone() for t in thresholds]

