"""The dense LM: shapes, causality, GQA, RoPE, init, the FFN seam, optimizer groups."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from moedesk.profiles.schema import ModelSection, TrainSection
from moedesk.train.model import LM, Attention, RMSNorm, SwiGLU, apply_rope, rope_tables
from moedesk.train.optim import param_groups


def small_cfg(**overrides) -> ModelSection:
    values = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16)
    values.update(overrides)
    return ModelSection(**values)


@pytest.mark.slow
def test_forward_shapes_and_loss():
    torch.manual_seed(0)
    model = LM(small_cfg())
    idx, targets = torch.randint(0, 256, (3, 10)), torch.randint(0, 256, (3, 10))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 10, 256)
    assert loss.shape == ()
    # a fresh model with small init predicts roughly uniformly over 256 bytes
    assert abs(loss.item() - math.log(256)) < 0.2
    logits_only, no_loss = model(idx)
    assert no_loss is None and torch.equal(logits_only, logits)


def test_ffn_hidden_default_rounds_8_3_dim_up_to_32():
    def width(cfg) -> int:  # the built model's FFN width (sizing.dense_ffn_hidden decides it)
        return LM(cfg).blocks[0].ffn.w1.weight.shape[0]

    assert width(small_cfg(dim=64)) == 192      # 170.7 -> 192
    assert width(small_cfg(dim=96)) == 256      # exactly 256
    assert width(small_cfg(ffn_hidden=100)) == 100


@pytest.mark.slow
def test_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    model = LM(small_cfg()).eval()
    idx = torch.randint(0, 256, (2, 12))
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 256
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-6)
    assert not torch.allclose(a[:, 7:], b[:, 7:], atol=1e-3)


def reference_attention(attn: Attention, x_BTD, cos_TH, sin_TH):
    """Textbook per-head attention: query head h reads kv head h // (n_heads / n_kv_heads)."""
    B, T, _ = x_BTD.shape
    hd, group = attn.head_dim, attn.n_heads // attn.n_kv_heads
    q = attn.wq(x_BTD).view(B, T, attn.n_heads, hd).transpose(1, 2)
    k = attn.wk(x_BTD).view(B, T, attn.n_kv_heads, hd).transpose(1, 2)
    v = attn.wv(x_BTD).view(B, T, attn.n_kv_heads, hd).transpose(1, 2)
    q, k = apply_rope(q, cos_TH, sin_TH), apply_rope(k, cos_TH, sin_TH)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    heads = []
    for h in range(attn.n_heads):
        scores = q[:, h] @ k[:, h // group].transpose(-1, -2) / math.sqrt(hd)
        weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        heads.append(weights @ v[:, h // group])
    return attn.wo(torch.stack(heads, 1).transpose(1, 2).reshape(B, T, -1))


@pytest.mark.slow
@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_grouped_query_attention_matches_per_head_reference(n_kv_heads):
    torch.manual_seed(1)
    cfg = small_cfg(n_kv_heads=n_kv_heads)
    attn = Attention(cfg)
    attn.init_weights(0.2, 0.2)
    cos, sin = rope_tables(attn.head_dim, 16, 10000.0)
    x = torch.randn(2, 9, cfg.dim)
    with torch.no_grad():
        got = attn(x, cos[:9], sin[:9])
        want = reference_attention(attn, x, cos[:9], sin[:9])
    assert torch.allclose(got, want, atol=1e-5)


def test_gqa_equals_full_attention_with_repeated_kv_heads():
    torch.manual_seed(2)
    gqa = Attention(small_cfg(n_kv_heads=2))
    gqa.init_weights(0.2, 0.2)
    full = Attention(small_cfg(n_kv_heads=4))
    hd = gqa.head_dim
    with torch.no_grad():
        full.wq.weight.copy_(gqa.wq.weight)
        full.wo.weight.copy_(gqa.wo.weight)
        # kv head j of the GQA layer serves query heads 2j and 2j+1
        for name in ("wk", "wv"):
            rows = getattr(gqa, name).weight.view(2, hd, -1)
            getattr(full, name).weight.copy_(rows.repeat_interleave(2, dim=0).reshape(4 * hd, -1))
        cos, sin = rope_tables(hd, 16, 10000.0)
        x = torch.randn(2, 11, 32)
        assert torch.allclose(gqa(x, cos[:11], sin[:11]), full(x, cos[:11], sin[:11]), atol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(3)
    head_dim = 16
    cos, sin = rope_tables(head_dim, 64, 10000.0)
    q, k = torch.randn(head_dim), torch.randn(head_dim)

    def score(m: int, n: int) -> float:
        q_rot = apply_rope(q.view(1, 1, 1, -1), cos[m], sin[m]).flatten()
        k_rot = apply_rope(k.view(1, 1, 1, -1), cos[n], sin[n]).flatten()
        return float(q_rot @ k_rot)

    assert score(5, 2) == pytest.approx(score(40, 37), abs=1e-4)
    assert score(9, 0) == pytest.approx(score(30, 21), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)
    # a rotation keeps the norm; position 0 is the identity
    rotated = apply_rope(q.view(1, 1, 1, -1), cos[17], sin[17]).flatten()
    assert rotated.norm() == pytest.approx(q.norm().item(), rel=1e-5)
    assert torch.allclose(apply_rope(q.view(1, 1, 1, -1), cos[0], sin[0]).flatten(), q)


def test_init_scales_residual_projections_and_ties_embeddings():
    torch.manual_seed(4)
    cfg = small_cfg(dim=128, n_layers=8, n_heads=4, n_kv_heads=4, init_std=0.02)
    model = LM(cfg)
    assert model.output.weight is model.tok_embeddings.weight
    residual = torch.cat([torch.cat([b.attn.wo.weight.flatten(), b.ffn.w2.weight.flatten()])
                          for b in model.blocks])
    assert residual.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert model.blocks[0].attn.wq.weight.std().item() == pytest.approx(0.02, rel=0.05)
    untied = LM(small_cfg(tie_embeddings=False))
    assert untied.output.weight is not untied.tok_embeddings.weight
    tied = LM(small_cfg())
    assert untied.num_params() - tied.num_params() == 256 * 32
    assert tied.num_active_params() == tied.num_params()


@pytest.mark.slow
def test_make_ffn_seam_accepts_another_ffn_module():
    calls = []

    class ScaledFFN(nn.Module):
        def __init__(self, dim: int):
            super().__init__()
            self.proj = nn.Linear(dim, dim, bias=False)

        def init_weights(self, std: float, residual_std: float) -> None:
            calls.append(residual_std)
            nn.init.zeros_(self.proj.weight)

        def forward(self, x):
            return self.proj(x)

    class HybridLM(LM):
        def make_ffn(self, layer_idx: int) -> nn.Module:
            return ScaledFFN(self.cfg.dim) if layer_idx == 1 else super().make_ffn(layer_idx)

    model = HybridLM(small_cfg())
    assert isinstance(model.blocks[0].ffn, SwiGLU) and isinstance(model.blocks[1].ffn, ScaledFFN)
    assert calls == [pytest.approx(0.02 / 2)]
    assert torch.count_nonzero(model.blocks[1].ffn.proj.weight) == 0
    logits, loss = model(torch.randint(0, 256, (2, 8)), torch.randint(0, 256, (2, 8)))
    loss.backward()
    assert model.blocks[1].ffn.proj.weight.grad is not None


def test_weight_decay_skips_norms_and_embeddings():
    model = LM(small_cfg())
    decay, no_decay = param_groups(model, TrainSection().weight_decay)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert id(model.tok_embeddings.weight) in no_decay_ids
    assert id(model.norm.weight) in no_decay_ids
    assert id(model.blocks[0].attn.wq.weight) not in no_decay_ids
    counted = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert counted == model.num_params()


@pytest.mark.slow
def test_bf16_autocast_forward_is_close_to_fp32():
    torch.manual_seed(5)
    model = LM(small_cfg())
    idx = torch.randint(0, 256, (2, 8))
    _, loss32 = model(idx, idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss16 = model(idx, idx)
    assert loss16.dtype == torch.float32
    assert loss16.item() == pytest.approx(loss32.item(), rel=0.02)
    assert F.mse_loss(loss16, loss32).item() < 1e-2


def test_attention_runs_in_fp32_under_cpu_bf16_autocast(monkeypatch):
    # SDPA's bf16 CPU kernel is ~3x slower than fp32 (docs/benchmarks.md): under CPU
    # autocast the attention core must see fp32 queries, keys and values, with autocast off
    torch.manual_seed(3)
    cfg = small_cfg()
    attn = Attention(cfg)
    cos, sin = rope_tables(cfg.dim // cfg.n_heads, 8, cfg.rope_theta)
    x = torch.randn(2, 8, cfg.dim)
    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((q.dtype, k.dtype, v.dtype, torch.is_autocast_enabled("cpu")))
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attn(x, cos, sin)
    assert seen == [(torch.float32, torch.float32, torch.float32, False)]
    assert y.dtype == torch.bfloat16  # wo still runs under autocast
    y.float().sum().backward()  # and the backward goes through
    assert attn.wq.weight.grad is not None and torch.isfinite(attn.wq.weight.grad).all()
    seen.clear()
    attn(x, cos, sin)  # without autocast nothing changes: fp32 in, autocast untouched
    assert seen == [(torch.float32, torch.float32, torch.float32, False)]


def test_rmsnorm_gradients_equal_autograd_over_its_formula():
    # float64 through the written-out backward, against autograd of y = x / rms(x) * w
    norm = RMSNorm(7, eps=1e-5).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(3, 5, 7, dtype=torch.float64)
    norm(x).backward(grad)
    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = norm.weight.detach().clone().requires_grad_(True)
    y_ref = x_ref * torch.rsqrt(x_ref.square().mean(-1, keepdim=True) + 1e-5) * w_ref
    y_ref.backward(grad)
    torch.testing.assert_close(norm(x), y_ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(norm.weight.grad, w_ref.grad, atol=1e-12, rtol=1e-12)


def test_rmsnorm_normalises_bf16_in_fp32_and_keeps_the_dtypes():
    norm = RMSNorm(16, eps=1e-5)
    x = (torch.randn(4, 16) * 1e-3).bfloat16().requires_grad_(True)  # small-variance rows
    y = norm(x)
    expected = (x.detach().float() * torch.rsqrt(x.detach().float().square().mean(-1, True)
                                                 + 1e-5)).bfloat16().float()
    assert y.dtype == torch.float32  # the bf16 normalised x times the fp32 weight
    torch.testing.assert_close(y, expected, atol=0, rtol=0)
    y.sum().backward()
    assert x.grad.dtype == torch.bfloat16 and norm.weight.grad.dtype == torch.float32
