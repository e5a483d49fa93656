"""The expert bank: grouped forward = per-pair forward, and what each Hebbian rule does."""

from __future__ import annotations

import torch

from moedesk.train.ternary.experts import (
    ExpertBank,
    group_pairs,
    initial_threshold,
    layer_dims,
    ternary_activation,
)
from moedesk.train.ternary.router import random_trits
from moedesk.train.ternary.trits import gf3_add


def _trits(*shape, seed=0):
    return random_trits(shape, torch.Generator().manual_seed(seed))


def _bank(num_experts=5, dims=(12, 10, 8), threshold=0.5, seed=0) -> ExpertBank:
    return ExpertBank(num_experts, list(dims), threshold, seed)


def _naive_forward(bank: ExpertBank, x: torch.Tensor, expert: int) -> list[torch.Tensor]:
    """One sample through one expert, layer by layer (the reference's per-sample loop)."""
    acts = [x[:bank.dims[0]].float()]
    for weight, threshold in zip(bank.weights_EIO, bank.thresholds_EO, strict=True):
        pre = acts[-1] @ weight[expert]
        acts.append(ternary_activation(pre, threshold[expert]))
    return acts


def test_group_pairs_places_each_pair_in_its_expert_row():
    experts = torch.tensor([3, 1, 3, 3, 0, 1])
    groups = group_pairs(experts, num_experts=5)
    assert groups.capacity == 3
    assert groups.counts_E.tolist() == [1, 2, 0, 3, 0]
    assert groups.slot_P.tolist() == [0, 0, 1, 2, 0, 1]  # stable: order within an expert kept


def test_grouped_forward_matches_the_per_pair_loop():
    bank = _bank()
    bank.thresholds_EO[1][2] = 0.0  # one expert with a plain-sign last layer
    x_pos, x_neg = _trits(7, 12, seed=1), _trits(7, 12, seed=2)
    experts = torch.tensor([2, 0, 2, 4, 2, 0, 1])
    fwd = bank.forward_pairs(x_pos, x_neg, experts)
    for p, e in enumerate(experts.tolist()):
        pos, neg = _naive_forward(bank, x_pos[p], e), _naive_forward(bank, x_neg[p], e)
        assert int(fwd.goodness_pos_P[p]) == int((pos[-1] != 0).sum())
        assert int(fwd.goodness_neg_P[p]) == int((neg[-1] != 0).sum())
        slot = int(fwd.groups.slot_P[p])
        for layer in range(2):
            assert torch.equal(fwd.inputs_E2MI[layer][e, 0, slot], pos[layer])
            assert torch.equal(fwd.outputs_E2MO[layer][e, 1, slot], neg[layer + 1])
    assert torch.equal(fwd.delta_P, fwd.goodness_pos_P - fwd.goodness_neg_P)


def test_activation_has_a_dead_zone_and_plain_sign_at_zero():
    pre = torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.0])
    assert ternary_activation(pre, 1.0).tolist() == [-1, 0, 0, 0, 1]
    assert ternary_activation(pre, 0.0).tolist() == [-1, -1, 0, 1, 1]
    assert initial_threshold(36, 1.0) == 4.0  # sqrt(4/9 * 36)
    assert layer_dims(64, 128, 64, 3) == [64, 128, 128, 64]


def test_reference_rule_adds_the_positive_input_to_every_column_in_gf3():
    bank = _bank(threshold=0.0)
    x_pos, x_neg = _trits(3, 12, seed=3), torch.zeros(3, 12, dtype=torch.int8)
    experts = torch.tensor([1, 1, 3])
    before = [w.clone() for w in bank.weights_EIO]
    fwd = bank.forward_pairs(x_pos, x_neg, experts)
    gated = fwd.delta_P > 0  # a zero negative has goodness 0: delta > 0 unless pos is silent
    assert bool(gated.any())
    changed = bank.update_reference(fwd)
    assert changed > 0
    for e in range(5):
        # the documented rule, applied pair by pair: W_ij <- W_ij (+) x_i for every j
        want = [w[e].to(torch.int8) for w in before]
        for p in range(3):
            if experts[p] == e and gated[p]:
                acts = fwd.inputs_E2MI[0][e, 0, int(fwd.groups.slot_P[p])], \
                    fwd.inputs_E2MI[1][e, 0, int(fwd.groups.slot_P[p])]
                for layer in range(2):
                    step = acts[layer].to(torch.int8).unsqueeze(1).expand_as(want[layer])
                    want[layer] = gf3_add(want[layer], step)
        for layer in range(2):
            assert torch.equal(bank.weights_EIO[layer][e].to(torch.int8), want[layer]), (e, layer)
    untouched = [e for e in range(5) if e not in experts.tolist()]
    assert all(torch.equal(bank.weights_EIO[0][e], before[0][e]) for e in untouched)


def test_reference_rule_ignores_pairs_without_positive_delta():
    bank = _bank(threshold=0.0)
    x = _trits(4, 12, seed=4)
    fwd = bank.forward_pairs(x, x, torch.tensor([0, 1, 2, 3]))  # negative == positive
    before = [w.clone() for w in bank.weights_EIO]
    assert bank.update_reference(fwd) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, bank.weights_EIO, strict=True))


def _alignment(bank: ExpertBank, fwd, expert: int) -> float:
    """sum_ij H_ij W_ij over every layer: how strongly the weights favour the positives."""
    total = 0.0
    for layer, weight in enumerate(bank.weights_EIO):
        x, y = fwd.inputs_E2MI[layer][expert], fwd.outputs_E2MO[layer][expert]
        hebb = x[0].t() @ y[0] - x[1].t() @ y[1]
        total += float((hebb * weight[expert]).sum())
    return total


def test_contrastive_rule_steps_towards_the_hebbian_sign_without_wrapping():
    bank = _bank(num_experts=2, dims=(24, 16, 16), threshold=0.3)
    x_pos = _trits(6, 24, seed=5)
    x_neg = _trits(6, 24, seed=6)
    experts = torch.tensor([0, 0, 0, 1, 1, 1])
    fwd = bank.forward_pairs(x_pos, x_neg, experts)
    before = [w.clone() for w in bank.weights_EIO]
    align_before = [_alignment(bank, fwd, e) for e in range(2)]
    changed = bank.update_contrastive(fwd, 0.5, margin=64, generator=torch.Generator())
    assert changed > 0
    moved_total = 0
    for layer, (old, new) in enumerate(zip(before, bank.weights_EIO, strict=True)):
        diff = new - old
        moved = diff != 0
        moved_total += int(moved.sum())
        assert set(diff.unique().tolist()) <= {-1.0, 0.0, 1.0}  # one step, never a wrap
        assert bool(((new >= -1) & (new <= 1)).all())
        for e in range(2):
            x, y = fwd.inputs_E2MI[layer][e], fwd.outputs_E2MO[layer][e]
            hebb = x[0].t() @ y[0] - x[1].t() @ y[1]
            assert torch.equal(torch.sign(hebb)[moved[e]], diff[e][moved[e]])
            # at most update_fraction of the positions are even considered
            assert int(moved[e].sum()) <= round(0.5 * old[e].numel())
    assert moved_total == changed
    # every move increases sum H*W: positives' active units grow, negatives' shrink
    assert all(_alignment(bank, fwd, e) > align_before[e] for e in range(2))


def test_contrastive_rule_skips_pairs_above_the_margin():
    bank = _bank(threshold=0.3)
    x_pos, x_neg = _trits(4, 12, seed=7), _trits(4, 12, seed=8)
    fwd = bank.forward_pairs(x_pos, x_neg, torch.tensor([0, 1, 2, 3]))
    margin = int(fwd.delta_P.min()) - 1  # every pair is already above it
    before = [w.clone() for w in bank.weights_EIO]
    assert bank.update_contrastive(fwd, 0.5, margin, torch.Generator()) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, bank.weights_EIO, strict=True))


def test_thresholds_move_one_step_towards_the_target_activity():
    bank = _bank(threshold=1.0)
    x = _trits(8, 12, seed=9)
    fwd = bank.forward_pairs(x, x, torch.tensor([0, 0, 0, 0, 2, 2, 2, 2]))
    before = [t.clone() for t in bank.thresholds_EO]
    bank.adapt_thresholds(fwd, target=0.5)
    for layer in range(2):
        rate = (fwd.outputs_E2MO[layer][0, 0, :4] != 0).float().mean(0)
        step = bank.thresholds_EO[layer][0] - before[layer][0]
        want = torch.sign(rate - 0.5)
        lower_bound = (before[layer][0] + want).clamp(min=0) - before[layer][0]
        assert torch.equal(step, lower_bound)
        assert torch.equal(bank.thresholds_EO[layer][1], before[layer][1])  # unused: unchanged


def test_state_round_trip_stores_int8_trits():
    bank = _bank()
    state = bank.state_dict()
    assert all(w.dtype == torch.int8 for w in state["weights"])
    other = _bank(seed=5)
    other.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(bank.weights_EIO, other.weights_EIO, strict=True))
