"""kernel_floor.py records exactly a step's heavy kernels (matmuls forward and backward, the
attention kernels, the experts' grouped matmuls) and nothing else, the recording step is a
real step, and the replay calls the same kernels again."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from moedesk.profiles.schema import MoESection
from moedesk.train import matmul
from moedesk.train.kernel_floor import KINDS, kernel_kind, record
from moedesk.train.moe import MoEFFN


def test_kinds_of_aten_ops():
    aten = torch.ops.aten
    assert kernel_kind(aten.mm.default) == "matmul"
    assert kernel_kind(aten.addmm.default) == "matmul"
    assert kernel_kind(aten.bmm.default) == "matmul"
    assert kernel_kind(aten._grouped_mm.default) == "grouped matmul"
    assert kernel_kind(aten._scaled_dot_product_flash_attention_for_cpu.default) == "attention"
    for elementwise in (aten.mul.Tensor, aten.silu.default, aten._softmax.default,
                        aten.index_select.default):
        assert kernel_kind(elementwise) is None


def two_layer_step():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(16, 32, bias=False), nn.SiLU(), nn.Linear(32, 8, bias=False))
    opt = torch.optim.SGD(mlp.parameters(), lr=0.1)
    x_TD = torch.randn(64, 16)

    def step():
        loss = mlp(x_TD).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return mlp, step


def test_records_forward_and_backward_matmuls_only():
    mlp, step = two_layer_step()
    before = mlp[0].weight.detach().clone()
    floor = record(step)
    # forward: 2; backward: the last layer's weight and input gradients, the first layer's
    # weight gradient only (its input needs none); silu, the loss and SGD are not kernels
    assert floor.counts() == {"matmul": 5}
    assert not torch.equal(before, mlp[0].weight), "the recorded step is a real step"
    shapes = sorted(tuple(a.shape for a in args[:2]) for _, _, args, _ in floor.calls)
    assert ((64, 16), (16, 32)) in shapes  # the first layer's forward, x @ w^T


def test_replay_runs_the_recorded_kernels_again():
    _, step = two_layer_step()
    floor = record(step)
    seconds = floor.replay()
    assert seconds > 0
    again = record(floor.replay)
    assert again.counts() == floor.counts()
    assert [f for _, f, *_ in again.calls] == [f for _, f, *_ in floor.calls]
    assert record(lambda: floor.replay(kinds=("attention",))).counts() == {}


def test_attention_kernels_forward_and_backward():
    q_BNTH = torch.randn(2, 4, 16, 8, requires_grad=True)
    k_BNTH, v_BNTH = torch.randn(2, 4, 16, 8), torch.randn(2, 4, 16, 8)

    def step():
        F.scaled_dot_product_attention(q_BNTH, k_BNTH, v_BNTH, is_causal=True).sum().backward()
    floor = record(step)
    assert floor.counts()["attention"] == 2  # the fused kernel and its backward
    assert set(floor.counts()) <= set(KINDS)


@pytest.mark.parametrize("kernel", ["blas", "onednn"])
def test_moe_layer_records_router_and_expert_matmuls(kernel):
    if kernel == "onednn" and not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    torch.manual_seed(0)
    moe = MoEFFN(32, 16, MoESection(num_experts=4, top_k=2))
    moe.init_weights(0.02, 0.01)
    x_BTD = torch.randn(2, 16, 32, requires_grad=True)
    with matmul.using(kernel):
        floor = record(lambda: moe(x_BTD).square().mean().backward())
    counts = floor.counts()
    # the router's linear: forward, input and weight gradients
    if kernel == "blas":
        # the experts' three grouped matmuls forward, each with two in backward
        assert counts == {"matmul": 3, "grouped matmul": 9}
    else:
        # oneDNN has no grouped matmul: the same three per expert that has rows (all 4 of
        # 64 slots' experts here), each with two in backward
        assert counts == {"matmul": 3 + 9 * 4}
