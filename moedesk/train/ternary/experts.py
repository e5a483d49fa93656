"""The expert bank: every expert's ternary layers, the grouped forward pass and Hebbian rules.

Each expert is a stack of ternary linear layers (input_dim -> hidden_dim ... ->
output_dim), weights int8 trits stored as one [E, fan_in, fan_out] tensor per layer.
A layer's output is the ternary sign of its integer pre-activation with a dead zone:
y = sign(pre) where |pre| > threshold, else 0 (threshold 0 is the reference's plain
sign). Goodness is the number of non-zero output trits of the last layer.

Routing produces (sample, expert) pairs. `group_pairs` sorts them by expert into a
padded [U, C] layout (U experts in use, C = the busiest one's pair count) so that one
batched matmul per layer serves every active expert, positives and negatives together;
padding slots carry zero inputs, produce zero outputs and add nothing to any update.

Learning rules (per layer, mini-batch semantics: activations and deltas come from the
weights at the start of the step):
- reference: the documented rule. For every pair with delta = g(pos) - g(neg) > 0,
  W_ij <- W_ij (+) x_i for every j, x the positive's input to that layer, in GF(3);
  several pairs on one expert sum in GF(3), exactly as applying them one by one.
- contrastive: the Forward-Forward goodness rule in trits. H = sum over pairs of
  x_pos (x) y_pos - x_neg (x) y_neg (strengthen the positive's active units, weaken the
  negative's); the `update_fraction` of weights with the largest |H| take one GF(3)
  step towards sign(H), except steps that would wrap (+1 -> -1 or -1 -> +1), which
  would erase what was learnt. Only pairs not yet separated by `margin` contribute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from moedesk.train.ternary.router import random_trits
from moedesk.train.ternary.trits import gf3_add, gf3_reduce


@dataclass
class PairGroups:
    """(sample, expert) pairs sorted by expert into a padded [U, C] layout."""

    experts_U: Tensor  # int64 [U], the experts in use, ascending
    group_P: Tensor  # int64 [P], each pair's row in U
    slot_P: Tensor  # int64 [P], each pair's column in C
    capacity: int  # C: pairs of the busiest expert

    @property
    def num_groups(self) -> int:
        return int(self.experts_U.numel())


def group_pairs(expert_P: Tensor, num_experts: int) -> PairGroups:
    counts_E = torch.bincount(expert_P, minlength=num_experts)
    experts_U = torch.nonzero(counts_E).squeeze(1)
    row_of_E = torch.full((num_experts,), -1, dtype=torch.int64)
    row_of_E[experts_U] = torch.arange(experts_U.numel())
    order_P = torch.argsort(expert_P, stable=True)
    starts_E = torch.cumsum(counts_E, 0) - counts_E
    slot_P = torch.empty_like(expert_P)
    slot_P[order_P] = torch.arange(expert_P.numel()) - starts_E[expert_P[order_P]]
    return PairGroups(experts_U, row_of_E[expert_P], slot_P, int(counts_E.max()))


def layer_dims(input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> list[int]:
    """Widths of the activations: [input, hidden x (num_layers - 1), output]."""
    return [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]


def layer_thresholds(dims: list[int], threshold: float) -> list[float]:
    """Dead zone per layer: `threshold` x the spread of a random trit dot product."""
    return [threshold * math.sqrt(4.0 / 9.0 * fan_in) for fan_in in dims[:-1]]


def ternary_activation(pre: Tensor, threshold: float) -> Tensor:
    return torch.where(pre.abs() > threshold, torch.sign(pre), torch.zeros_like(pre))


@dataclass
class PairForward:
    """What one grouped forward pass over positives and negatives produced."""

    groups: PairGroups
    inputs: list[Tensor]  # per layer, float [U, 2, C, fan_in]: [:, 0] positives, [:, 1] negatives
    outputs: list[Tensor]  # per layer, float [U, 2, C, fan_out]
    goodness_pos_P: Tensor  # int64 [P]
    goodness_neg_P: Tensor  # int64 [P]

    @property
    def delta_P(self) -> Tensor:
        return self.goodness_pos_P - self.goodness_neg_P


class ExpertBank:
    def __init__(self, num_experts: int, dims: list[int], threshold: float, seed: int):
        self.num_experts = num_experts
        self.dims = dims
        self.thresholds = [torch.full((num_experts, fan_out), t) for t, fan_out in
                           zip(layer_thresholds(dims, threshold), dims[1:], strict=True)]
        generator = torch.Generator().manual_seed(seed)
        self.weights = [random_trits((num_experts, fan_in, fan_out), generator)
                        for fan_in, fan_out in zip(dims[:-1], dims[1:], strict=True)]

    @property
    def weights_per_expert(self) -> int:
        return sum(w.shape[1] * w.shape[2] for w in self.weights)

    def forward_pairs(self, x_pos_PD: Tensor, x_neg_PD: Tensor, expert_P: Tensor
                      ) -> PairForward:
        """Run each pair's expert on its positive and its negative, all pairs at once."""
        groups = group_pairs(expert_P, self.num_experts)
        num_u, cap, fan_in = groups.num_groups, groups.capacity, self.dims[0]
        x_U2CD = torch.zeros(num_u, 2, cap, fan_in)
        x_U2CD[groups.group_P, 0, groups.slot_P] = x_pos_PD[:, :fan_in].float()
        x_U2CD[groups.group_P, 1, groups.slot_P] = x_neg_PD[:, :fan_in].float()
        inputs, outputs = [], []
        for weight, threshold in zip(self.weights, self.thresholds, strict=True):
            w_UIO = weight[groups.experts_U].float()
            pre = torch.bmm(x_U2CD.reshape(num_u, 2 * cap, -1), w_UIO)
            y_U2CO = ternary_activation(pre, threshold[groups.experts_U].unsqueeze(1)
                                        ).reshape(num_u, 2, cap, -1)
            inputs.append(x_U2CD)
            outputs.append(y_U2CO)
            x_U2CD = y_U2CO
        goodness_U2C = (x_U2CD != 0).sum(-1)
        return PairForward(groups, inputs, outputs,
                           goodness_U2C[groups.group_P, 0, groups.slot_P],
                           goodness_U2C[groups.group_P, 1, groups.slot_P])

    def goodness(self, x_PD: Tensor, expert_P: Tensor) -> Tensor:
        """Goodness of each (sample, expert) pair, int64 [P] (evaluation)."""
        return self.forward_pairs(x_PD, x_PD, expert_P).goodness_pos_P

    def _pair_mask(self, fwd: PairForward, active_P: Tensor) -> Tensor:
        """float [U, C, 1]: 1 where a pair takes part in the update."""
        g = fwd.groups
        mask_UC = torch.zeros(g.num_groups, g.capacity)
        mask_UC[g.group_P, g.slot_P] = active_P.float()
        return mask_UC.unsqueeze(-1)

    def update_reference(self, fwd: PairForward) -> int:
        """The documented rule; returns how many weight trits changed."""
        mask_UC1 = self._pair_mask(fwd, fwd.delta_P > 0)
        experts_U, changed = fwd.groups.experts_U, 0
        for layer, weight in enumerate(self.weights):
            x_pos_UCI = fwd.inputs[layer][:, 0]
            step_UI = gf3_reduce((x_pos_UCI * mask_UC1).sum(1))
            old_UIO = weight[experts_U]
            new_UIO = gf3_add(old_UIO, step_UI.unsqueeze(-1).expand_as(old_UIO))
            changed += int((new_UIO != old_UIO).sum())
            weight[experts_U] = new_UIO
        return changed

    def update_contrastive(self, fwd: PairForward, update_fraction: float, margin: int,
                           generator: torch.Generator) -> int:
        """The default rule; returns how many weight trits changed."""
        mask_UC1 = self._pair_mask(fwd, fwd.delta_P <= margin)
        experts_U, changed = fwd.groups.experts_U, 0
        for layer, weight in enumerate(self.weights):
            x_U2CI, y_U2CO = fwd.inputs[layer], fwd.outputs[layer]
            hebb_UIO = torch.bmm((x_U2CI[:, 0] * mask_UC1).transpose(1, 2), y_U2CO[:, 0])
            hebb_UIO -= torch.bmm((x_U2CI[:, 1] * mask_UC1).transpose(1, 2), y_U2CO[:, 1])
            old_UIO = weight[experts_U]
            step_UIO = torch.sign(hebb_UIO).to(torch.int8)
            # a step onto a weight already at the target would wrap it to the opposite sign
            eligible = (step_UIO != 0) & (old_UIO != step_UIO)
            # strongest evidence first; random jitter < 1 breaks ties between equal |H|
            key_UN = (hebb_UIO.abs() + 0.5 * torch.rand(hebb_UIO.shape, generator=generator))
            key_UN = key_UN.masked_fill(~eligible, -1.0).reshape(len(experts_U), -1)
            budget = max(1, round(update_fraction * key_UN.shape[1]))
            keys, picked = torch.topk(key_UN, budget, dim=1)
            chosen_UN = torch.zeros_like(key_UN, dtype=torch.bool)
            chosen_UN.scatter_(1, picked, keys > 0)
            chosen_UIO = chosen_UN.reshape(old_UIO.shape)
            new_UIO = torch.where(chosen_UIO, gf3_add(old_UIO, step_UIO), old_UIO)
            changed += int(chosen_UIO.sum())
            weight[experts_U] = new_UIO
        return changed

    def adapt_thresholds(self, fwd: PairForward, target: float) -> None:
        """Homeostasis: move each used unit's dead zone one step towards `target` activity."""
        g = fwd.groups
        real_UC1 = self._pair_mask(fwd, torch.ones_like(fwd.delta_P, dtype=torch.bool))
        n_U1 = real_UC1.sum(1)
        for layer, thr in enumerate(self.thresholds):
            active_UO = ((fwd.outputs[layer][:, 0] != 0).float() * real_UC1).sum(1) / n_U1
            thr[g.experts_U] = (thr[g.experts_U] + torch.sign(active_UO - target)).clamp_(min=0)

    def state_dict(self) -> dict:
        return {"weights": [w.clone() for w in self.weights]}

    def load_state_dict(self, state: dict) -> None:
        weights = state["weights"]
        shapes = [tuple(w.shape) for w in self.weights]
        got = [tuple(w.shape) for w in weights]
        if got != shapes:
            raise ValueError(f"expert weights have shapes {got}, the profile needs {shapes}")
        self.weights = [w.to(torch.int8).clone() for w in weights]
