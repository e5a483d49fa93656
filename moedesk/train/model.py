"""The dense decoder-only language model (nanoGPT-like, Llama-style blocks).

Token embedding -> n_layers x [RMSNorm -> grouped-query attention with RoPE -> residual,
RMSNorm -> FFN -> residual] -> RMSNorm -> output head (optionally tied to the embedding).
The FFN width is `sizing.dense_ffn_hidden`, the one definition the size calculator uses.

Shape letters (shared with moe.py, moe_telemetry.py and analysis.py):
  B batch   T tokens (sequence positions)   D model width   V vocabulary
  N query heads   G key/value heads (each serves a group of N/G query heads)
  H head width    P rotary pairs per head (H/2)   F FFN hidden width

Seams for other model kinds (the top-k MoE LM subclasses `LM`):
  - `LM.make_ffn(layer_idx)` builds each block's FFN; any module mapping x_BTD -> y_BTD fits.
  - An FFN module may define `init_weights(std, residual_std)`; `LM` calls it instead of
    its own init, so routers and expert tensors keep the init they want.
  - `extra_loss()` and `after_optimizer_step()` are the training loop's two calls into
    the model (an auxiliary loss to add, a routing-bias update); the dense model has
    nothing to add. Persistent buffers (e.g. a routing bias) travel in `state_dict()`;
    telemetry lives beside the model (moe_telemetry.py), not in it.
  - `set_activation_checkpointing(on)`: blocks recompute in backward; an FFN whose forward
    has side effects sets `recomputes_inside = True` and recomputes only its pure part.
  - `forward(idx, cache=...)`: incremental decoding. The cache (generate.py's `KVCache`)
    holds every earlier position's keys and values; each block's attention appends its
    new ones and attends over all of them, and RoPE starts at the cached length. Without
    a cache (training, evaluation) nothing changes.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from moedesk.profiles.schema import ModelSection
from moedesk.profiles.sizing import dense_ffn_hidden
from moedesk.train.matmul import Linear, linear


def _at_least_fp32(t: Tensor) -> Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


class _RMSNormFn(torch.autograd.Function):
    """y = (x * r) * weight, r = 1 / sqrt(mean(x^2) + eps) over the last dimension, computed
    in float32 so bf16 autocast does not lose the small-variance tail (the normalised x is
    cast back to x's dtype before the weight multiplies it).

    The backward is written out: with x_hat = x * r and gw = grad * weight,
    grad_x = r * (gw - x_hat * mean(gw * x_hat)) and grad_weight = sum(grad * x_hat) over
    the tokens. Autograd over the composite form runs about twice as many full-size
    kernels (the pow, mean, rsqrt and multiplies each differentiated on its own): 16 x 128
    x 256, fp32, 1 thread, forward + backward 4.6 -> 3.6 ms on an AVX2 EPYC, 1.70 -> 1.10
    ms on a Zen 5. Besides the weight, only x and r are kept for the backward.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        x_fp32 = _at_least_fp32(x)
        r_fp32 = torch.rsqrt(x_fp32.square().mean(-1, keepdim=True).add_(eps))
        ctx.save_for_backward(x, r_fp32, weight)
        return (x_fp32 * r_fp32).to(x.dtype) * weight

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, r_fp32, weight = ctx.saved_tensors
        x_hat_fp32 = _at_least_fp32(x) * r_fp32
        grad_x = grad_weight = None
        if ctx.needs_input_grad[1]:
            tokens = tuple(range(grad.dim() - 1))
            grad_weight = (grad * x_hat_fp32.to(x.dtype)).sum(tokens).to(weight.dtype)
        if ctx.needs_input_grad[0]:
            gw_fp32 = _at_least_fp32(grad) * _at_least_fp32(weight)
            dot_fp32 = (gw_fp32 * x_hat_fp32).mean(-1, keepdim=True)
            # in place: grad_weight above has already read x_hat, and gw is a fresh tensor
            grad_x = gw_fp32.sub_(x_hat_fp32.mul_(dot_fp32)).mul_(r_fp32).to(x.dtype)
        return grad_x, grad_weight, None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return _RMSNormFn.apply(x, self.weight, self.eps)


def rope_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin tables [T = max_seq_len, P = head_dim/2] for rotary position embeddings."""
    inv_freq_P = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles_TP = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq_P)
    return angles_TP.cos().float(), angles_TP.sin().float()


def apply_rope(x: Tensor, cos_TP: Tensor, sin_TP: Tensor) -> Tensor:
    """Rotate each (even, odd) channel pair of x [B, heads, T, H] by its position's angle."""
    x_even, x_odd = x.float()[..., 0::2], x.float()[..., 1::2]
    rot_even = x_even * cos_TP - x_odd * sin_TP
    rot_odd = x_even * sin_TP + x_odd * cos_TP
    return torch.stack((rot_even, rot_odd), dim=-1).flatten(-2).type_as(x)


def apply_rope_pairs(x_BTnH: Tensor, cos_TP: Tensor, sin_TP: Tensor, fp32: bool = False
                     ) -> Tensor:
    """`apply_rope` for x [B, T, heads, H] (tokens before heads), as one complex multiply.

    The (even, odd) channel pairs are exactly the layout of complex numbers, so the
    rotation is x * (cos + i sin): one kernel forward and one backward, against the seven
    of the strided real-valued form (the training step's largest elementwise cost).
    The result has x's dtype, or float32 with `fp32` (it is computed in float32).
    """
    B, T, n, H = x_BTnH.shape
    out_dtype = torch.float32 if fp32 else x_BTnH.dtype
    if torch.compiler.is_compiling():
        # Inductor generates no code for complex numbers; the real form fuses into one kernel
        x_BTnP2 = x_BTnH.float().unflatten(-1, (H // 2, 2))
        cos_T1P, sin_T1P = cos_TP.unsqueeze(1), sin_TP.unsqueeze(1)
        x_even, x_odd = x_BTnP2[..., 0], x_BTnP2[..., 1]
        return torch.stack((x_even * cos_T1P - x_odd * sin_T1P, x_even * sin_T1P + x_odd * cos_T1P),
                           dim=-1).flatten(-2).to(out_dtype)
    x_BTnP = torch.view_as_complex(x_BTnH.float().reshape(B, T, n, H // 2, 2))
    rot_TP = torch.complex(cos_TP, sin_TP).unsqueeze(1)  # [T, 1, P]: broadcast over heads
    return torch.view_as_real(x_BTnP * rot_TP).flatten(-2).to(out_dtype)


class Attention(nn.Module):
    """Causal grouped-query attention: n_kv_heads key/value heads shared by n_heads queries."""

    def __init__(self, cfg: ModelSection):
        super().__init__()
        self.n_heads, self.n_kv_heads = cfg.n_heads, cfg.n_kv_heads
        self.head_dim = cfg.dim // cfg.n_heads
        self.wq = Linear(cfg.dim, cfg.n_heads * self.head_dim)
        self.wk = Linear(cfg.dim, cfg.n_kv_heads * self.head_dim)
        self.wv = Linear(cfg.dim, cfg.n_kv_heads * self.head_dim)
        self.wo = Linear(cfg.n_heads * self.head_dim, cfg.dim)
        self.dropout = cfg.dropout

    def init_weights(self, std: float, residual_std: float) -> None:
        for projection in (self.wq, self.wk, self.wv):
            nn.init.normal_(projection.weight, std=std)
        nn.init.normal_(self.wo.weight, std=residual_std)

    def forward(self, x_BTD: Tensor, cos_TP: Tensor, sin_TP: Tensor, cache=None) -> Tensor:
        """`cache` (one layer of generate.py's `KVCache`): keys and values of the S earlier
        positions; this call's T are appended and attended to as S + T keys."""
        B, T, _ = x_BTD.shape
        N, G, H = self.n_heads, self.n_kv_heads, self.head_dim
        # one matmul for q, k and v (the weights stay three parameters: names and
        # checkpoints unchanged; concatenating them costs far less than two more matmuls)
        w_QD = torch.cat((self.wq.weight, self.wk.weight, self.wv.weight))
        qkv_BTQ = linear(x_BTD, w_QD)
        # split, not slicing: the backward of a slice zero-fills a full-size gradient and
        # adds it up (aten::fill_ was 3x transformers'); split's backward is one cat
        qk_BTQ, v_BTQ = qkv_BTQ.split(((N + G) * H, G * H), dim=-1)
        # under CPU bf16 autocast the attention itself runs in fp32: SDPA's bf16 CPU kernel
        # takes 3x its fp32 time forward + backward (45 vs 15 ms at top2's shapes, AMD
        # EPYC with avx512_bf16), far more than the casts cost
        fp32_attention = (cache is None and x_BTD.device.type == "cpu"
                          and torch.is_autocast_enabled("cpu"))
        # RoPE on queries and keys together, in the [B, T, heads, H] layout the matmul wrote
        qk_BTnH = apply_rope_pairs(qk_BTQ.view(B, T, N + G, H), cos_TP, sin_TP, fp32_attention)
        q_BTNH, k_BTGH = qk_BTnH.split((N, G), dim=2)
        q_BNTH, k_BGTH = q_BTNH.transpose(1, 2), k_BTGH.transpose(1, 2)
        v_BGTH = v_BTQ.view(B, T, G, H).transpose(1, 2)
        mask = None
        if cache is not None:
            # T below stands for S + T from here on: the cached positions come first
            k_BGTH, v_BGTH, mask = cache.update(k_BGTH, v_BGTH)
        # each group of N/G query heads reads the same key/value head: SDPA's GQA mode does
        # it without materialising N/G copies of k and v (and their gradient sums)
        with torch.autocast("cpu", enabled=False) if fp32_attention else nullcontext():
            y_BNTH = F.scaled_dot_product_attention(
                q_BNTH, k_BGTH, v_BGTH.float() if fp32_attention else v_BGTH, attn_mask=mask,
                is_causal=cache is None, dropout_p=self.dropout if self.training else 0.0,
                enable_gqa=G != N)
        return self.wo(y_BNTH.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    """The dense FFN: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.w1 = Linear(dim, hidden)
        self.w3 = Linear(dim, hidden)
        self.w2 = Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def init_weights(self, std: float, residual_std: float) -> None:
        nn.init.normal_(self.w1.weight, std=std)
        nn.init.normal_(self.w3.weight, std=std)
        nn.init.normal_(self.w2.weight, std=residual_std)

    def forward(self, x_BTD: Tensor) -> Tensor:
        # two matmuls, not one over cat(w1, w3): the halves of a fused output are strided,
        # and silu and the product over them cost more than the matmul saves (measured)
        return self.dropout(self.w2(F.silu(self.w1(x_BTD)) * self.w3(x_BTD)))


class Block(nn.Module):
    def __init__(self, cfg: ModelSection, ffn: nn.Module):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = ffn
        # `[train] activation_checkpointing` (LM.set_activation_checkpointing): keep only the
        # block's input and recompute the rest in backward
        self.recompute = False

    def _attention(self, x_BTD: Tensor, cos_TP: Tensor, sin_TP: Tensor, cache=None) -> Tensor:
        return self.attn_dropout(self.attn(self.attn_norm(x_BTD), cos_TP, sin_TP, cache))

    def _ffn(self, x_BTD: Tensor) -> Tensor:
        return self.ffn(self.ffn_norm(x_BTD))

    def forward(self, x_BTD: Tensor, cos_TP: Tensor, sin_TP: Tensor, cache=None) -> Tensor:
        if not (self.recompute and cache is None and torch.is_grad_enabled()):
            x_BTD = x_BTD + self._attention(x_BTD, cos_TP, sin_TP, cache)
            return x_BTD + self._ffn(x_BTD)
        # the saved RNG state makes dropout's recomputed masks the same
        x_BTD = x_BTD + checkpoint(self._attention, x_BTD, cos_TP, sin_TP, use_reentrant=False)
        if getattr(self.ffn, "recomputes_inside", False):
            # an FFN with side effects in its forward (MoE routing counts, telemetry hooks)
            # recomputes only its side-effect-free part itself
            return x_BTD + self._ffn(x_BTD)
        return x_BTD + checkpoint(self._ffn, x_BTD, use_reentrant=False)


class LM(nn.Module):
    """Decoder-only LM over `cfg.vocab_size` tokens; `forward` returns (logits, loss)."""

    def __init__(self, cfg: ModelSection):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(
            Block(cfg, self.make_ffn(layer_idx)) for layer_idx in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = Linear(cfg.dim, cfg.vocab_size)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        cos_TP, sin_TP = rope_tables(cfg.dim // cfg.n_heads, cfg.max_seq_len, cfg.rope_theta)
        # derived from the config, so not saved: checkpoints stay small and exact
        self.register_buffer("rope_cos_TP", cos_TP, persistent=False)
        self.register_buffer("rope_sin_TP", sin_TP, persistent=False)
        self.init_weights()

    def set_activation_checkpointing(self, on: bool) -> None:
        """Recompute each block's activations in backward instead of keeping them (seed 003's
        fix for out-of-memory); an FFN with a `recompute` attribute gets the flag too."""
        for block in self.blocks:
            block.recompute = on
            if hasattr(block.ffn, "recompute"):
                block.ffn.recompute = on

    def make_ffn(self, layer_idx: int) -> nn.Module:
        """The FFN of block `layer_idx`; the MoE LM returns an MoE module for its MoE layers."""
        return SwiGLU(self.cfg.dim, dense_ffn_hidden(self.cfg), self.cfg.dropout)

    def init_weights(self) -> None:
        std = self.cfg.init_std
        # GPT-2: projections that write into the residual stream shrink with depth
        residual_std = std / math.sqrt(2 * self.cfg.n_layers)
        nn.init.normal_(self.tok_embeddings.weight, std=std)
        if not self.cfg.tie_embeddings:
            nn.init.normal_(self.output.weight, std=std)
        for block in self.blocks:
            block.attn.init_weights(std, residual_std)
            if hasattr(block.ffn, "init_weights"):
                block.ffn.init_weights(std, residual_std)

    def forward(self, idx_BT: Tensor, targets_BT: Tensor | None = None, cache=None
                ) -> tuple[Tensor, Tensor | None]:
        T = idx_BT.shape[1]
        start = 0 if cache is None else cache.length  # positions already in the cache
        cos_TP, sin_TP = self.rope_cos_TP[start:start + T], self.rope_sin_TP[start:start + T]
        x_BTD = self.tok_embeddings(idx_BT)
        for i, block in enumerate(self.blocks):
            x_BTD = block(x_BTD, cos_TP, sin_TP, None if cache is None else cache.layers[i])
        logits_BTV = self.output(self.norm(x_BTD))
        if targets_BT is None:
            return logits_BTV, None
        loss = F.cross_entropy(logits_BTV.float().flatten(0, 1), targets_BT.flatten())
        return logits_BTV, loss

    # ---- sizes -------------------------------------------------------------------------
    def num_params(self) -> int:
        """Every parameter, a tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())

    def num_active_params(self) -> int:
        """Parameters used per token; all of them in a dense model."""
        return self.num_params()

    # ---- the training loop's two calls (no-ops for the dense model) ----------------------
    def extra_loss(self) -> Tensor | None:
        """Auxiliary losses of the last forward, added to the LM loss for backward."""
        return None

    def after_optimizer_step(self) -> None:
        """Called once after each optimizer step (e.g. a routing-bias update)."""
