"""The fp32 CPU matmul kernel (moedesk/train/matmul.py): oneDNN's linear and grouped linear
against F.linear, values and gradients; which kernel "auto" picks; the profile key."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moedesk.profiles import ProfileError, validate_data
from moedesk.profiles.schema import ModelSection, MoESection
from moedesk.train import matmul
from moedesk.train.experts import SwiGLUExperts
from moedesk.train.model import LM
from moedesk.train.moe import MoELM

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                  reason="this torch has no oneDNN")


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_()


@needs_onednn
@pytest.mark.parametrize("shape", [(3, 17, 24), (40, 24)])
def test_onednn_linear_equals_f_linear_with_gradients(shape):
    torch.manual_seed(0)
    x, w = torch.randn(*shape), torch.randn(56, 24) * 0.2
    x1, w1, x2, w2 = _leaf(x), _leaf(w), _leaf(x), _leaf(w)
    with matmul.using("onednn"):
        assert matmul.onednn_applies(x1, w1)
        y1 = matmul.linear(x1, w1)
    y2 = F.linear(x2, w2)
    grad = torch.randn_like(y2)
    y1.backward(grad)
    y2.backward(grad)
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-5, atol=1e-5)
    assert w1.grad.is_contiguous() and w1.grad.shape == w.shape


@needs_onednn
def test_onednn_weight_gradient_both_ways_round():
    # the weight gradient puts the smaller of O and I first: both branches are checked
    torch.manual_seed(1)
    for out_features, in_features in ((8, 32), (48, 16)):
        x, w = _leaf(torch.randn(64, in_features)), _leaf(torch.randn(out_features, in_features))
        with matmul.using("onednn"):
            matmul.linear(x, w).square().sum().backward()
        expected = 2 * (x.detach() @ w.detach().t()).t() @ x.detach()
        torch.testing.assert_close(w.grad, expected, rtol=1e-5, atol=1e-4)


@needs_onednn
@pytest.mark.parametrize("counts", [[10, 0, 25, 15], [0, 0, 0, 0]])
def test_experts_on_onednn_equal_the_per_expert_loop_with_empty_groups(counts):
    torch.manual_seed(2)
    experts = SwiGLUExperts(4, 24, 16)
    experts.init_weights(0.2, 0.1)
    x = torch.randn(sum(counts), 24)
    x1, x2 = _leaf(x), _leaf(x)
    with matmul.using("onednn"):
        y1 = experts.forward_grouped(x1, counts)
        grad = torch.randn_like(y1)
        y1.backward(grad)
        grads1 = {n: p.grad.clone() for n, p in experts.named_parameters()}
    experts.zero_grad()
    with matmul.using("blas"):  # autograd over one F.linear per expert: the reference
        parts = [experts.forward_one(e, part) for e, part in enumerate(x2.split(counts))
                 if len(part)]
        y2 = torch.cat(parts) if parts else x2.new_zeros(0, 24)
        if parts:
            y2.backward(grad)
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
    if not parts:
        assert y1.shape == (0, 24) and all(torch.count_nonzero(g) == 0 for g in grads1.values())
        return
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-5)
    for name, param in experts.named_parameters():
        torch.testing.assert_close(grads1[name], param.grad, rtol=1e-5, atol=1e-5, msg=name)
    for w_grad in grads1.values():
        assert torch.count_nonzero(w_grad[1]) == 0  # the expert without rows


def test_blas_bf16_autocast_and_float64_keep_f_linear():
    x, w = torch.randn(8, 4), torch.randn(3, 4)
    with matmul.using("blas"):
        assert not matmul.onednn_applies(x, w)
        assert torch.equal(matmul.linear(x, w), F.linear(x, w))
    with matmul.using("onednn"):
        assert not matmul.onednn_applies(x.double(), w.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not matmul.onednn_applies(x, w)
            assert matmul.linear(x, w).dtype == torch.bfloat16  # autocast's F.linear


def test_auto_picks_onednn_on_amd_with_avx512_only(monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    for vendor, capability, expected in (("AuthenticAMD", "AVX512", "onednn"),
                                         ("AuthenticAMD", "AVX2", "blas"),
                                         ("GenuineIntel", "AVX512", "blas"),
                                         ("", "AVX512", "blas")):
        monkeypatch.setattr(matmul, "cpu_vendor", lambda v=vendor: v)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert matmul.resolve("auto") == expected, (vendor, capability)
        assert matmul.resolve("blas") == "blas" and matmul.resolve("onednn") == "onednn"
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert matmul.resolve("onednn") == "blas"  # nothing else to run on
    with pytest.raises(ValueError, match="auto, blas, onednn"):
        matmul.resolve("fast")


def test_using_restores_the_kernel_before_it():
    before = matmul.kernel()
    with matmul.using("blas"):
        assert matmul.kernel() == "blas"
        assert matmul.describe(torch.device("cpu")) == ""
    assert matmul.kernel() == before


@needs_onednn
@pytest.mark.parametrize("kind", ["dense", "topk"])
def test_a_training_step_on_either_kernel_gives_the_same_loss_and_gradients(kind):
    cfg = ModelSection(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                       max_seq_len=16)
    torch.manual_seed(3)
    model = LM(cfg) if kind == "dense" else MoELM(cfg, MoESection(num_experts=4, top_k=2))
    idx_BT = torch.randint(0, 64, (4, 16))
    results = {}
    for kernel in ("blas", "onednn"):
        model.zero_grad()
        with matmul.using(kernel):
            _, loss = model(idx_BT[:, :-1], idx_BT[:, 1:])
            loss.backward()
        results[kernel] = (loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()
                                         if p.grad is not None})
    (loss_blas, grads_blas), (loss_onednn, grads_onednn) = results["blas"], results["onednn"]
    assert abs(loss_blas - loss_onednn) < 1e-5
    assert grads_blas.keys() == grads_onednn.keys() and len(grads_blas) > 10
    for name, grad in grads_blas.items():
        torch.testing.assert_close(grads_onednn[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_the_projections_keep_nn_linear_names():
    keys = LM(ModelSection(vocab_size=64, dim=32, n_layers=1, n_heads=4, n_kv_heads=2,
                           max_seq_len=16, tie_embeddings=False)).state_dict().keys()
    for name in ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "ffn.w1", "ffn.w2", "ffn.w3"):
        assert f"blocks.0.{name}.weight" in keys and f"blocks.0.{name}.bias" not in keys
    assert "output.weight" in keys


def test_the_profile_key_names_its_choices():
    assert validate_data({"name": "x", "kind": "dense", "seed": 0}).train.cpu_matmul == "auto"
    with pytest.raises(ProfileError, match=r"train\.cpu_matmul.*auto.*blas.*onednn"):
        validate_data({"name": "x", "kind": "dense", "seed": 0, "train": {"cpu_matmul": "fast"}})


@needs_onednn
@pytest.mark.slow
def test_compiled_linear_runs_the_opaque_onednn_op_with_gradients():
    torch.manual_seed(4)
    x, w = torch.randn(2, 8, 24), torch.randn(40, 24) * 0.2
    x1, w1, x2, w2 = _leaf(x), _leaf(w), _leaf(x), _leaf(w)

    def block(x_, w_):
        return torch.nn.functional.silu(matmul.linear(x_, w_)).square().sum()

    with matmul.using("onednn"):
        compiled = torch.compile(block, dynamic=False, fullgraph=True)
        compiled(x1, w1).backward()
        block(x2, w2).backward()
        # the traced graph holds our op: inductor's own oneDNN lowering would refuse the
        # weights (not frozen), and its plain matmul is MKL's
        graph = torch._dynamo.explain(block)(x, w)
    assert graph.graph_break_count == 0
    assert any("onednn_linear" in str(node.target) for g in graph.graphs for node in g.graph.nodes)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-5, atol=1e-5)
