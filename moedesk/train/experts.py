"""The experts of a top-k MoE layer and the kernels that move rows to them.

Shape letters (model.py's and moe.py's legends): T tokens (B*T flattened), D model width,
E experts, K experts per token, F expert hidden width, G = 2F (w1 and w3 side by side),
S slots (the T*K (token, choice) pairs, in expert order), n rows of one expert's group.

- `SwiGLUExperts`: E SwiGLU FFNs as three stacked tensors; `forward_grouped` runs them on
  contiguous groups of rows: one `F.grouped_mm` over all experts where it runs
  (`use_grouped_mm`: CPU; CUDA bf16 on compute capability 9.0+), else F.linear per
  expert, w1 and w3 as one [2F, D] matmul.
- `_PermuteRows`, `_RepeatRows`: the dropless dispatch's gathers, whose backward gathers
  too (deterministic, no scatter-add).
- `silu_gate_product`: silu(gate) * up over the fused w1/w3 output, on contiguous halves.
- `pad_groups`: each expert's group rounded up to a row multiple (CPU bf16: oneDNN reuses
  its kernels), padding rows with gate 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pad_groups(token_S: Tensor, gates_S: Tensor, counts: list[int], multiple: int
               ) -> tuple[Tensor, Tensor, list[int]]:
    """Round each expert's group of sorted slots up to a multiple of `multiple` rows.

    Padding rows repeat token 0 with gate 0, so they add exactly zero to the output and
    to every gradient; they only cost their (small) share of compute.
    """
    padded = [-(-c // multiple) * multiple for c in counts]
    shifts, shift = [], 0
    for c, p in zip(counts, padded, strict=True):
        shifts.append(shift)
        shift += p - c
    device = token_S.device
    shift_S = torch.repeat_interleave(torch.tensor(shifts, device=device),
                                      torch.tensor(counts, device=device))
    dest_S = torch.arange(token_S.numel(), device=device) + shift_S
    n_rows = sum(padded)
    token_pad = token_S.new_zeros(n_rows).index_copy_(0, dest_S, token_S)
    gates_pad = gates_S.new_zeros(n_rows).index_copy(0, dest_S, gates_S)
    return token_pad, gates_pad, padded


def use_grouped_mm(x_SD: Tensor, w2_EDF: Tensor) -> bool:
    """Whether `F.grouped_mm` runs the experts: on CPU (torch >= 2.10) it beats the
    per-expert loop by ~13% (fwd+bwd, top2's shapes, 1 thread); on CUDA its kernels need
    bf16 and compute capability 9.0+. Rows must be 16-byte aligned (D and F multiples of
    4 in fp32). Elsewhere the loop runs."""
    if not hasattr(F, "grouped_mm") or x_SD.shape[0] == 0:
        return False
    if torch.compiler.is_compiling():  # its fp32 form cannot be traced (torch 2.13)
        return False
    if any(n * x_SD.element_size() % 16 for n in w2_EDF.shape[1:]):
        return False
    if x_SD.device.type == "cpu":
        return True
    return (x_SD.device.type == "cuda" and x_SD.dtype == torch.bfloat16
            and torch.cuda.get_device_capability(x_SD.device) >= (9, 0))


class _PermuteRows(torch.autograd.Function):
    """rows = x[index] for a permutation `index` (inverse: `inverse`); the backward is the
    inverse gather, not index_select's scatter-add into a zeroed copy."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


class _RepeatRows(torch.autograd.Function):
    """x_SD = x_TD[order_S // K]: every token copied to its K slots in expert order. The
    backward gathers each token's K slot gradients (`rank_S`) and sums them in a fixed
    order, instead of index_select's serial scatter-add."""

    @staticmethod
    def forward(ctx, x_TD: Tensor, token_S: Tensor, rank_S: Tensor, top_k: int) -> Tensor:
        ctx.save_for_backward(rank_S)
        ctx.top_k = top_k
        return x_TD.index_select(0, token_S)

    @staticmethod
    def backward(ctx, grad_SD: Tensor):
        (rank_S,) = ctx.saved_tensors
        grad_TKD = grad_SD.index_select(0, rank_S).unflatten(0, (-1, ctx.top_k))
        return grad_TKD.sum(1), None, None, None


class _SiluGateProduct(torch.autograd.Function):
    """h_SF = silu(gate_SF) * up_SF for gate_up_SG = [gate | up], the fused w1/w3 matmul's
    output. Its halves are strided views, and on CPU silu, the product, silu's backward and
    the halves' gradient cat run 3-10x slower over strided views than over contiguous
    tensors (2048 tokens x dim 128, top2's shapes: 13 of the layer's 40 ms). So both halves
    are copied once, and the backward builds one contiguous [S, 2F] gradient. The formulas
    are autograd's for the unfused expression; fp32 results can differ in silu's last bit
    (its vectorized kernel rounds differently from its strided loop)."""

    @staticmethod
    def forward(ctx, gate_up_SG: Tensor) -> Tensor:
        gate_SF, up_SF = (half.contiguous() for half in gate_up_SG.chunk(2, dim=-1))
        silu_SF = F.silu(gate_SF)
        ctx.save_for_backward(gate_SF, up_SF, silu_SF)
        return silu_SF * up_SF

    @staticmethod
    def backward(ctx, grad_SF: Tensor) -> Tensor:
        gate_SF, up_SF, silu_SF = ctx.saved_tensors
        grad_SF = grad_SF.contiguous()
        grad_gate_SF = torch.ops.aten.silu_backward(grad_SF * up_SF, gate_SF)
        return torch.cat((grad_gate_SF, grad_SF * silu_SF), dim=-1)


def silu_gate_product(gate_up_SG: Tensor) -> Tensor:
    """silu(gate) * up of a fused [.., 2F] w1/w3 output (see `_SiluGateProduct`)."""
    return _SiluGateProduct.apply(gate_up_SG)


class SwiGLUExperts(nn.Module):
    """E SwiGLU FFNs stored as three stacked tensors."""

    def __init__(self, num_experts: int, dim: int, hidden: int):
        super().__init__()
        self.w1_EFD = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.w3_EFD = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.w2_EDF = nn.Parameter(torch.empty(num_experts, dim, hidden))

    def init_weights(self, std: float, residual_std: float) -> None:
        nn.init.normal_(self.w1_EFD, std=std)
        nn.init.normal_(self.w3_EFD, std=std)
        nn.init.normal_(self.w2_EDF, std=residual_std)

    def forward_grouped(self, x_SD: Tensor, counts: list[int]) -> Tensor:
        """x_SD holds counts[0] rows for expert 0, then counts[1] for expert 1, ..."""
        # w1 and w3 side by side: one [2F, D] matmul per expert instead of two [F, D] ones
        w13_EGD, w2_EDF = torch.cat((self.w1_EFD, self.w3_EFD), dim=1), self.w2_EDF
        device_type = x_SD.device.type
        if torch.is_autocast_enabled(device_type):
            # cast once here: autocast would cast every per-expert slice (and x twice per
            # expert) on its own, which costs more than the bf16 matmuls save
            dtype = torch.get_autocast_dtype(device_type)
            x_SD, w13_EGD, w2_EDF = (t.to(dtype) for t in (x_SD, w13_EGD, w2_EDF))
        if use_grouped_mm(x_SD, w2_EDF):
            # one grouped matmul over all experts (exactly the per-expert loop's numbers)
            offs_E = torch.tensor(counts, device=x_SD.device).cumsum(0).to(torch.int32)
            h_SF = silu_gate_product(F.grouped_mm(x_SD, w13_EGD.transpose(1, 2), offs=offs_E))
            return F.grouped_mm(h_SF, w2_EDF.transpose(1, 2), offs=offs_E)
        w13s_GD, w2s_DF = w13_EGD.unbind(0), w2_EDF.unbind(0)
        outs = []
        # split, not slicing: the backward of E slices would zero-fill E full-size gradients
        for e, x_nD in enumerate(x_SD.split(counts)):
            if x_nD.shape[0]:
                outs.append(F.linear(silu_gate_product(F.linear(x_nD, w13s_GD[e])), w2s_DF[e]))
        return torch.cat(outs) if outs else x_SD.new_zeros(0, self.w2_EDF.shape[1])

    def forward_one(self, e: int, x_nD: Tensor) -> Tensor:
        h_nF = F.silu(F.linear(x_nD, self.w1_EFD[e])) * F.linear(x_nD, self.w3_EFD[e])
        return F.linear(h_nF, self.w2_EDF[e])
