"""The experts of a top-k MoE layer and the kernels that move rows to them.

Shape letters (model.py's and moe.py's legends): T tokens (B*T flattened), D model width,
E experts, K experts per token, F expert hidden width,
S slots (the T*K (token, choice) pairs, in expert order), n rows of one expert's group.

- `SwiGLUExperts`: E SwiGLU FFNs as three stacked tensors; `forward_grouped` runs them on
  contiguous groups of rows: `_SwiGLUGroups` (oneDNN, group by group, its own backward)
  for fp32 on a CPU where oneDNN is the chosen kernel (matmul.py), else `F.grouped_mm`
  over all experts where it runs (`use_grouped_mm`: CPU; CUDA bf16 on compute capability
  9.0+), else F.linear per expert; w1 and w3 are two matmuls every way (not one over
  their cat).
- `_RepeatRows`, `_CombineSlots`: the dropless dispatch's way out to the slots and back
  (gate-weighted), gathers forward and backward (deterministic, no scatter-add).
- `pad_groups`: each expert's group rounded up to a row multiple (wherever oneDNN runs the
  experts on a CPU, bf16 or fp32: it reuses its kernels), padding rows with gate 0.
- `combine_permuted` (every slot kept) and `combine_slots` (some dropped or padded): the
  slots' outputs, gate-weighted, summed back into their tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moedesk.train.matmul import linear, onednn_applies, onednn_linear, weight_grad


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


def combine_slots(y_SD: Tensor, gates_S: Tensor, token_S: Tensor, n_tokens: int) -> Tensor:
    """out_TD[t] = sum of gates_S[s] * y_SD[s] over the slots s of token t (index_add_ in
    slot order, deterministic on CPU).

    In fp32 (fp32 gates promote the product), except bf16 rows on CPU, which combine in
    bf16 like the dense FFN's output: CPU's mixed bf16 x fp32 multiply runs several times
    slower than either dtype alone, and an fp32 copy of every slot's row (and of its
    gradient) cost 4-8% of the bf16 layer (bench/moe_layer.py sizes, side by side).
    """
    dtype = torch.float32
    if y_SD.device.type == "cpu" and y_SD.dtype == torch.bfloat16:
        dtype = torch.bfloat16
    y_SD = y_SD.to(dtype) * gates_S.to(dtype).unsqueeze(1)
    out_TD = torch.zeros(n_tokens, y_SD.shape[1], dtype=dtype, device=y_SD.device)
    return out_TD.index_add_(0, token_S, y_SD)


def slot_ranks(order_S: Tensor) -> Tensor:
    """rank_S[s] = the row of slot s in expert order: the inverse of the permutation order_S."""
    rank_S = torch.empty_like(order_S)
    rank_S[order_S] = torch.arange(order_S.numel(), device=order_S.device)
    return rank_S


def combine_permuted(y_SD: Tensor, order_S: Tensor, gates_TK: Tensor,
                     rank_S: Tensor | None = None) -> Tensor:
    """out_TD[t] = sum over k of gates_TK[t, k] * (slot (t, k)'s row of y_SD), when y_SD holds
    every slot in expert order (row i is slot order_S[i]): `_CombineSlots`, in the gates'
    dtype (the router's fp32: bf16 rows are cast up first)."""
    if rank_S is None:
        rank_S = slot_ranks(order_S)
    return _CombineSlots.apply(y_SD.to(gates_TK.dtype), gates_TK, rank_S, order_S)


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


class _CombineSlots(torch.autograd.Function):
    """out_TD[t] = sum over k of gates_TK[t, k] * y_SD[rank_S[t*K + k]]: each token's K
    expert outputs, gathered back from expert order and gate-weighted, in one pass.

    `embedding_bag` (mode "sum" with per-sample weights) does the gather, the weighting and
    the sum over K in one kernel, in the K slots' fixed order. Its autograd would
    scatter-add, so the backward here gathers instead: the output gradient goes to the
    slots in expert order (`order_S // K`), times each slot's gate, and a gate's gradient is
    the row-wise dot of its slot's output and that gradient. Against autograd over
    gather, multiply and sum(1) (a reduction over a middle dimension of size K): 2048
    tokens x 2 x 128, fp32, 1 thread, forward 1.43 -> 0.36 ms in isolation.
    """

    @staticmethod
    def forward(ctx, y_SD: Tensor, gates_TK: Tensor, rank_S: Tensor, order_S: Tensor
                ) -> Tensor:
        ctx.save_for_backward(y_SD, gates_TK, rank_S, order_S)
        return F.embedding_bag(rank_S.view(gates_TK.shape), y_SD, mode="sum",
                               per_sample_weights=gates_TK)

    @staticmethod
    def backward(ctx, grad_TD: Tensor):
        y_SD, gates_TK, rank_S, order_S = ctx.saved_tensors
        top_k = gates_TK.shape[1]
        grad_SD = grad_TD.index_select(0, order_S // top_k)  # each slot's token's gradient
        gates_S = gates_TK.flatten().index_select(0, order_S)
        grad_y = grad_gates = None
        if ctx.needs_input_grad[0]:
            grad_y = grad_SD * gates_S.unsqueeze(1)
        if ctx.needs_input_grad[1]:
            dot_S = torch.linalg.vecdot(y_SD, grad_SD)
            grad_gates = dot_S.index_select(0, rank_S).view(gates_TK.shape)
        return grad_y, grad_gates, None, None


class _RepeatRows(torch.autograd.Function):
    """x_SD = x_TD[order_S // K]: every token copied to its K slots in expert order. The
    backward sums each token's K slot gradients (`rank_S`) in a fixed order with one
    `embedding_bag`, instead of index_select's serial scatter-add (or a gather and a
    sum(1), 4x slower)."""

    @staticmethod
    def forward(ctx, x_TD: Tensor, token_S: Tensor, rank_S: Tensor, top_k: int) -> Tensor:
        ctx.save_for_backward(rank_S)
        ctx.top_k = top_k
        return x_TD.index_select(0, token_S)

    @staticmethod
    def backward(ctx, grad_SD: Tensor):
        (rank_S,) = ctx.saved_tensors
        return F.embedding_bag(rank_S.view(-1, ctx.top_k), grad_SD, mode="sum"), None, None, None


class _SwiGLUGroups(torch.autograd.Function):
    """Every expert's SwiGLU on its group of rows, on oneDNN, forward and backward in one
    function: y_nD = (silu(x_nD w1^T) * (x_nD w3^T)) w2^T per group of n rows.

    Group by group, so each group's hidden activations are still in cache for the next op
    and its three matmuls' gradients meet without autograd's full-size accumulations;
    only each group's two pre-activations are kept (h is recomputed, one multiply), and
    the row gradient of w1 and w3 add in place. Bit-identical to autograd over the same
    calls; 0.90-0.97x of their time (fwd+bwd, 1,024-4,096 slots, width 128-256, 1 thread,
    Zen 5). An expert without rows gets zero weight gradients.
    """

    @staticmethod
    def forward(ctx, x_SD: Tensor, w1_EFD: Tensor, w3_EFD: Tensor, w2_EDF: Tensor,
                counts: list[int]) -> Tensor:
        ys, kept = [], []
        for e, x_nD in enumerate(x_SD.split(counts)):
            if x_nD.shape[0]:
                gate_nF, up_nF = onednn_linear(x_nD, w1_EFD[e]), onednn_linear(x_nD, w3_EFD[e])
                ys.append(onednn_linear(F.silu(gate_nF).mul_(up_nF), w2_EDF[e]))
                kept += [gate_nF, up_nF]
        ctx.save_for_backward(x_SD, w1_EFD, w3_EFD, w2_EDF, *kept)
        ctx.counts = counts
        return torch.cat(ys) if ys else x_SD.new_zeros(0, w2_EDF.shape[1])

    @staticmethod
    def backward(ctx, grad_SD: Tensor):
        x_SD, w1_EFD, w3_EFD, w2_EDF, *kept = ctx.saved_tensors
        counts = ctx.counts
        new = torch.empty_like if all(counts) else torch.zeros_like
        grad_w1, grad_w3, grad_w2 = new(w1_EFD), new(w3_EFD), new(w2_EDF)
        grad_xs, pre = [], iter(kept)
        for e, (x_nD, grad_nD) in enumerate(zip(x_SD.split(counts), grad_SD.split(counts),
                                                strict=True)):
            if not x_nD.shape[0]:
                continue
            gate_nF, up_nF = next(pre), next(pre)
            silu_nF = F.silu(gate_nF)
            grad_w2[e] = weight_grad(grad_nD, silu_nF * up_nF)
            grad_h_nF = onednn_linear(grad_nD, w2_EDF[e].t())
            grad_up_nF = grad_h_nF * silu_nF
            grad_gate_nF = torch.ops.aten.silu_backward(grad_h_nF.mul_(up_nF), gate_nF)
            grad_x_nD = onednn_linear(grad_gate_nF, w1_EFD[e].t())
            grad_xs.append(grad_x_nD.add_(onednn_linear(grad_up_nF, w3_EFD[e].t())))
            grad_w1[e] = weight_grad(grad_gate_nF, x_nD)
            grad_w3[e] = weight_grad(grad_up_nF, x_nD)
        grad_x = torch.cat(grad_xs) if grad_xs else torch.zeros_like(x_SD)
        return grad_x, grad_w1, grad_w3, grad_w2, None


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
        w1_EFD, w3_EFD, w2_EDF = self.w1_EFD, self.w3_EFD, self.w2_EDF
        device_type = x_SD.device.type
        if torch.is_autocast_enabled(device_type):
            # cast once here: autocast would cast every per-expert slice (and x twice per
            # expert) on its own, which costs more than the bf16 matmuls save
            dtype = torch.get_autocast_dtype(device_type)
            x_SD, w1_EFD, w3_EFD, w2_EDF = (t.to(dtype) for t in (x_SD, w1_EFD, w3_EFD, w2_EDF))
        # w1 and w3 as two matmuls, not one over their cat (as the dense SwiGLU): the cat
        # copies the weights every forward, and silu, the product and their gradients run
        # 3-6x slower over the fused output's strided halves than over contiguous tensors.
        # MoE layer / dense FFN, fp32, 1 thread: fused 1.17-1.66x, two matmuls 1.06-1.25x
        if onednn_applies(x_SD, w2_EDF):
            # fp32 on a CPU where oneDNN's matmul beats MKL's (matmul.py)
            return _SwiGLUGroups.apply(x_SD, w1_EFD, w3_EFD, w2_EDF, counts)
        if use_grouped_mm(x_SD, w2_EDF):
            # grouped matmuls over all experts (exactly the per-expert loop's numbers)
            offs_E = torch.tensor(counts, device=x_SD.device).cumsum(0).to(torch.int32)
            gate_SF = F.grouped_mm(x_SD, w1_EFD.transpose(1, 2), offs=offs_E)
            up_SF = F.grouped_mm(x_SD, w3_EFD.transpose(1, 2), offs=offs_E)
            return F.grouped_mm(F.silu(gate_SF) * up_SF, w2_EDF.transpose(1, 2), offs=offs_E)
        w1s_FD, w3s_FD, w2s_DF = w1_EFD.unbind(0), w3_EFD.unbind(0), w2_EDF.unbind(0)
        outs = []
        # split, not slicing: the backward of E slices would zero-fill E full-size gradients
        for e, x_nD in enumerate(x_SD.split(counts)):
            if x_nD.shape[0]:
                h_nF = F.silu(F.linear(x_nD, w1s_FD[e])) * F.linear(x_nD, w3s_FD[e])
                outs.append(F.linear(h_nF, w2s_DF[e]))
        return torch.cat(outs) if outs else x_SD.new_zeros(0, self.w2_EDF.shape[1])

    def forward_one(self, e: int, x_nD: Tensor) -> Tensor:
        h_nF = F.silu(linear(x_nD, self.w1_EFD[e])) * linear(x_nD, self.w3_EFD[e])
        return linear(h_nF, self.w2_EDF[e])
