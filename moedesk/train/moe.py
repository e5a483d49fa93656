"""The top-k MoE FFN and its balancing, and the MoE language model built on the dense LM.

Shape letters (model.py's legend, plus):
  T tokens, the batch flattened (B*T)   E experts   K experts chosen per token (top-k)
  F expert hidden width   S slots: the T*K (token, choice) pairs, flattened (the sorted
  dispatch reorders them by expert)   n rows of one expert's group

`MoEFFN` replaces a block's SwiGLU FFN (research/moe.md section 8):
  - router (`TopKRouter`): weight_ED in fp32 outside autocast; p = softmax over all E
    experts (`expert_softmax`); top-k on p (+ the balancing bias b); gate weights = the
    chosen p renormalised to sum 1 (b only decides *which* experts, never how much they
    weigh)
  - experts: stacked SwiGLU tensors w1_EFD, w3_EFD and w2_EDF (experts.py, with the
    grouped matmul and the gather-only row movers)
  - dispatch "sorted": one stable argsort of the T*K expert ids, then the experts on
    contiguous groups (`SwiGLUExperts.forward_grouped`). Dropless
    (the default) the sort is a permutation, so tokens go out and come back by gathers
    only (`_RepeatRows`, `_CombineSlots`: deterministic, no scatter-add) and each token's
    K outputs are summed with fp32 gates in a fixed order. With a capacity limit, expert
    dropout or CPU bf16 (groups padded to 32 rows so oneDNN reuses its kernels) the gather
    / gate multiply / index_add_ path runs (in bf16 under CPU bf16, like the dense FFN's
    output); "eager": a per-expert mask loop kept as the numerical reference. Activation
    checkpointing recomputes the experts only.
  - losses: Switch aux alpha*E*sum_i f_i*P_i (alpha when balanced) and router z-loss
    beta*mean(logsumexp^2), both already weighted; `MoELM.extra_loss` averages them over
    MoE layers
  - aux-loss-free balancing: b (`expert_bias_E`, persistent) += u*sign(mean(c) - c),
    mean-centred, once per optimizer step from the counts c in `tokens_per_expert_E`
    (not saved), which only training forwards add to (torchtitan's names)
Nothing else lives in the layer: it keeps its last forward's losses and dropped-slot count,
and observers attach with forward hooks on the layer and on its `router` module, never by
patching it: the telemetry window (moe_telemetry.py) and the evaluation's routing capture
(analysis.py). With more than one rank the layer calls its `dispatcher`
(expert_parallel.py: experts on other ranks, the aux loss's global counts); with one
process it has none. `MoELM` subclasses `LM` through `make_ffn`, `extra_loss` and
`after_optimizer_step`. Checkpoints written before the shape-suffixed names still load
(`LEGACY_NAMES`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from moedesk.profiles.schema import ModelSection, MoESection
from moedesk.profiles.sizing import expert_hidden, moe_layer_indices
from moedesk.train import matmul
from moedesk.train.experts import (
    SwiGLUExperts,
    _RepeatRows,
    combine_permuted,
    combine_slots,
    pad_groups,
    slot_ranks,
)
from moedesk.train.model import LM

# expert groups are padded to this many rows where oneDNN multiplies them on a CPU (bf16
# autocast, or fp32 on oneDNN: see row_multiple)
CPU_ROW_MULTIPLE = 32

# state_dict names (under each MoE layer) before they carried their shapes -> now
LEGACY_NAMES = {"router.weight": "router.weight_ED", "expert_bias": "expert_bias_E",
                "experts.w1": "experts.w1_EFD", "experts.w3": "experts.w3_EFD",
                "experts.w2": "experts.w2_EDF"}


def expert_softmax(logits_TE: Tensor) -> Tensor:
    """softmax over the E experts of each token. On CPU it runs over the transposed view:
    the kernel vectorizes along the softmax dimension, which is only E = 8 wide, and over
    dim 0 it vectorizes across the T tokens instead (2048x8: 26 vs 223 us forward, 69 vs
    311 us forward + backward, 1 thread). The same values to within float rounding."""
    if logits_TE.device.type == "cpu":
        return logits_TE.t().softmax(dim=0).t()
    return logits_TE.softmax(dim=-1)


class TopKRouter(nn.Module):
    """Scores E experts per token and picks K of them (a module, so observers can hook it)."""

    def __init__(self, dim: int, cfg: MoESection):
        super().__init__()
        self.cfg, self.top_k = cfg, cfg.top_k
        self.weight_ED = nn.Parameter(torch.empty(cfg.num_experts, dim))
        # nn.Linear's default init, so a router is usable before `init_weights`; it also
        # draws from the RNG exactly as the nn.Linear it replaced, so a seed still builds
        # the same model
        nn.init.kaiming_uniform_(self.weight_ED, a=math.sqrt(5))

    def forward(self, x_TD: Tensor, expert_bias_E: Tensor
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(ids_TK, gates_TK fp32, probs_TE, logits_TE)."""
        # the router stays fp32 under bf16 autocast: top-k on near-tied bf16 scores flips
        with torch.autocast(device_type=x_TD.device.type, enabled=False):
            logits_TE = matmul.linear(x_TD.float(), self.weight_ED.float())
        noisy_TE = logits_TE
        if self.training and self.cfg.router_noise_std > 0:
            noisy_TE = logits_TE + torch.randn_like(logits_TE) * self.cfg.router_noise_std
        probs_TE = expert_softmax(noisy_TE)
        scores_TE = probs_TE + expert_bias_E if self.cfg.bias_balancing else probs_TE
        ids_TK = scores_TE.topk(self.top_k, dim=-1).indices
        gates_TK = probs_TE.gather(-1, ids_TK)
        gates_TK = gates_TK / gates_TK.sum(-1, keepdim=True)
        return ids_TK, gates_TK, probs_TE, logits_TE


def _rename_legacy(module: nn.Module, state_dict: dict, prefix: str, *_) -> None:
    # a load_state_dict pre-hook: old names in, current names out, before torch matches keys
    for old, new in LEGACY_NAMES.items():
        if prefix + old in state_dict and prefix + new not in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)


class MoEFFN(nn.Module):
    """Top-k routed SwiGLU experts; maps x_BTD -> y_BTD like the dense FFN."""

    def __init__(self, dim: int, hidden: int, cfg: MoESection, layer_idx: int = 0,
                 dropout: float = 0.0):
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        self.num_experts, self.top_k = cfg.num_experts, cfg.top_k
        self.router = TopKRouter(dim, cfg)
        self.experts = SwiGLUExperts(cfg.num_experts, dim, hidden)
        self.dropout = nn.Dropout(dropout)
        # b is part of the model (checkpointed); the counts start over every optimizer step
        self.register_buffer("expert_bias_E", torch.zeros(cfg.num_experts), persistent=True)
        self.register_buffer("tokens_per_expert_E", torch.zeros(cfg.num_experts),
                             persistent=False)
        # the last forward's results: the loss adds them, the telemetry reads them
        self.aux_loss: Tensor = torch.zeros(())  # weighted
        self.z_loss: Tensor = torch.zeros(())
        self.dropped_slots = 0  # (token, choice) slots the capacity limit dropped
        # several ranks: an ExpertDispatcher (expert_parallel.py) runs the experts and sums
        # the aux loss's counts over the ranks; None in one process
        self.dispatcher = None
        self.register_load_state_dict_pre_hook(_rename_legacy)
        # activation checkpointing recomputes the experts only: routing counts, losses and
        # the observers' hooks must see each forward once
        self.recomputes_inside, self.recompute = True, False

    def init_weights(self, std: float, residual_std: float) -> None:
        nn.init.normal_(self.router.weight_ED, std=self.cfg.router_init_std)
        self.experts.init_weights(std, residual_std)

    # ---- routing ---------------------------------------------------------------------------
    def route(self, x_TD: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(expert ids [T,K], gate weights [T,K] fp32, probabilities [T,E], logits [T,E])."""
        return self.router(x_TD, self.expert_bias_E)

    def balance_losses(self, probs_TE: Tensor, logits_TE: Tensor, ids_TK: Tensor
                       ) -> tuple[Tensor, Tensor]:
        """Weighted Switch aux loss and router z-loss of one forward."""
        aux = z = probs_TE.new_zeros(())
        n_tokens = probs_TE.shape[0]
        if self.cfg.aux_loss_weight > 0 and n_tokens:
            # f from the router's own top-k (Megatron): the bias is not the router's preference
            chosen_TK = probs_TE.topk(self.top_k, dim=-1).indices if self.cfg.bias_balancing \
                else ids_TK
            f_E = torch.bincount(chosen_TK.flatten(), minlength=self.num_experts).float()
            n_slots = n_tokens * self.top_k
            if self.dispatcher is not None and self.training:
                # the shares of the whole global micro-batch (all ranks), not this rank's
                f_E, n_slots = self.dispatcher.global_demand(f_E, n_slots)
            f_E = f_E / n_slots
            aux = self.cfg.aux_loss_weight * self.num_experts * (f_E * probs_TE.mean(0)).sum()
        if self.cfg.z_loss_weight > 0 and n_tokens:
            z = self.cfg.z_loss_weight * torch.logsumexp(logits_TE, dim=-1).square().mean()
        return aux, z

    # ---- forward ---------------------------------------------------------------------------
    def forward(self, x_BTD: Tensor) -> Tensor:
        B, T, D = x_BTD.shape
        x_TD = x_BTD.reshape(B * T, D)
        ids_TK, gates_TK, probs_TE, logits_TE = self.route(x_TD)
        self.aux_loss, self.z_loss = self.balance_losses(probs_TE, logits_TE, ids_TK)
        if self.training and torch.is_grad_enabled():
            # the demand, counted in training forwards only: evaluation never moves b
            with torch.no_grad():
                self.tokens_per_expert_E += torch.bincount(ids_TK.flatten(),
                                                           minlength=self.num_experts)
        dispatch_ids_S, gates_TK = self._dispatch_ids(ids_TK, gates_TK)
        if self.dispatcher is not None:
            y_TD, self.dropped_slots = self.dispatcher.experts(self, x_TD, dispatch_ids_S,
                                                               gates_TK)
        else:
            y_TD, self.dropped_slots = self.local_experts(x_TD, dispatch_ids_S, gates_TK)
        return self.dropout(y_TD.to(x_BTD.dtype).view(B, T, D))

    def local_experts(self, x_TD: Tensor, dispatch_ids_S: Tensor, gates_TK: Tensor
                      ) -> tuple[Tensor, int]:
        """(y_TD, dropped slots) with every expert on this rank: y_TD fp32, bf16 under CPU
        bf16 autocast (`_experts_sorted`)."""
        if self.cfg.dispatch == "eager":
            return self._experts_eager(x_TD, dispatch_ids_S, gates_TK)
        return self._experts_sorted(x_TD, dispatch_ids_S, gates_TK)

    def _dispatch_ids(self, ids_TK: Tensor, gates_TK: Tensor) -> tuple[Tensor, Tensor]:
        """Expert id per slot (token, choice); E marks a slot that expert dropout removed."""
        ids_S = ids_TK.flatten()
        p = self.cfg.expert_dropout
        if not (self.training and p > 0):
            return ids_S, gates_TK
        keep_TK = torch.rand(gates_TK.shape, device=gates_TK.device) >= p
        keep_TK[:, 0] |= ~keep_TK.any(-1)  # a token keeps at least its first choice
        gates_TK = gates_TK * keep_TK
        gates_TK = gates_TK / gates_TK.sum(-1, keepdim=True)
        return torch.where(keep_TK.flatten(), ids_S, self.num_experts), gates_TK

    def capacity(self, n_tokens: int) -> int | None:
        """Slots each expert takes, C = ceil(cf*T*K/E); None when dropless."""
        if self.cfg.capacity_factor <= 0:
            return None
        return math.ceil(self.cfg.capacity_factor * n_tokens * self.top_k / self.num_experts)

    def sorted_slots(self, x_TD: Tensor, dispatch_ids_S: Tensor) -> tuple[Tensor, list[int], int]:
        """(slot order grouped by expert, rows per expert, dropped slots): the sorted
        dispatch's slot selection, capacity applied (expert parallelism shares it)."""
        n_slots = dispatch_ids_S.numel()
        order_S = torch.argsort(dispatch_ids_S, stable=True)
        counts = torch.bincount(dispatch_ids_S, minlength=self.num_experts + 1)
        capacity = self.capacity(x_TD.shape[0])
        dropped = 0
        if capacity is None:
            counts_list = counts[:self.num_experts].tolist()
            order_S = order_S[:sum(counts_list)]  # removed slots (id E) sort last
        else:
            # stable sort keeps token order inside an expert: the earliest C slots stay
            sorted_ids_S = dispatch_ids_S[order_S]
            starts = counts.cumsum(0) - counts
            rank_S = torch.arange(n_slots, device=order_S.device) - starts[sorted_ids_S]
            order_S = order_S[(rank_S < capacity) & (sorted_ids_S < self.num_experts)]
            demand = counts[:self.num_experts].tolist()
            counts_list = [min(c, capacity) for c in demand]
            dropped = sum(demand) - sum(counts_list)
        return order_S, counts_list, dropped

    # under `[train] compile` the dispatch runs eagerly: its per-expert counts are host
    # integers that change every step, and traced they would recompile the graph each step
    @torch.compiler.disable
    def _experts_sorted(self, x_TD: Tensor, dispatch_ids_S: Tensor, gates_TK: Tensor
                        ) -> tuple[Tensor, int]:
        n_slots = dispatch_ids_S.numel()
        order_S, counts_list, dropped = self.sorted_slots(x_TD, dispatch_ids_S)
        multiple = self.row_multiple(x_TD)
        if self.gathers_back(x_TD, order_S, n_slots):
            return self._experts_permuted(x_TD, order_S, gates_TK, counts_list), 0
        token_S, gates_S = order_S // self.top_k, gates_TK.flatten()[order_S]
        if multiple > 1:
            token_S, gates_S, counts_list = pad_groups(token_S, gates_S, counts_list, multiple)
        if torch.is_autocast_enabled(x_TD.device.type):
            # cast the T tokens before gathering T*K copies of them
            x_TD = x_TD.to(torch.get_autocast_dtype(x_TD.device.type))
        y_SD = self._run_experts(x_TD.index_select(0, token_S), counts_list)
        return combine_slots(y_SD, gates_S, token_S, x_TD.shape[0]), dropped

    def _run_experts(self, x_SD: Tensor, counts: list[int]) -> Tensor:
        if self.recompute and torch.is_grad_enabled():
            return checkpoint(self.experts.forward_grouped, x_SD, counts, use_reentrant=False)
        return self.experts.forward_grouped(x_SD, counts)

    def _experts_permuted(self, x_TD: Tensor, order_S: Tensor, gates_TK: Tensor,
                          counts: list[int]) -> Tensor:
        """The dropless path: every slot kept, so sorting is a permutation and both the
        dispatch and the combine are gathers (forward and backward), never scatter-adds.

        Each token's K expert outputs come back to its K slots and are summed, weighted by
        the fp32 gates, in a fixed order (deterministic on every device).
        """
        rank_S = slot_ranks(order_S)
        if torch.is_autocast_enabled(x_TD.device.type):
            # cast the T tokens before gathering T*K copies of them
            x_TD = x_TD.to(torch.get_autocast_dtype(x_TD.device.type))
        x_SD = _RepeatRows.apply(x_TD, order_S // self.top_k, rank_S, self.top_k)
        return combine_permuted(self._run_experts(x_SD, counts), order_S, gates_TK, rank_S)

    def gathers_back(self, x_TD: Tensor, order_S: Tensor, n_slots: int) -> bool:
        """Whether the experts' rows come back by `combine_permuted`: every slot kept (no
        capacity drop, no expert dropout) and no padded groups (CPU bf16). Else
        `combine_slots` adds them up. Expert parallelism decides the same way."""
        return len(order_S) == n_slots and self.row_multiple(x_TD) == 1

    def row_multiple(self, x_TD: Tensor) -> int:
        """Rows each expert group is padded to a multiple of (1 = no padding).

        oneDNN builds a kernel for every new matmul shape, and per-expert token counts
        change every step: rounding them up to 32 rows keeps the shapes few and cached.
        bf16: about 4x faster per matmul on CPU. fp32 on oneDNN (matmul.py), the experts'
        two grouped matmuls fwd+bwd at 4096 rows with sizes that change every step, Zen 5:
        53 -> 32 ms at 1 thread, 39 -> 21 ms at 2 (MKL's grouped_mm: 52 and 29).
        fp32 on MKL and CUDA need no padding.
        """
        if x_TD.device.type == "cpu" and (torch.is_autocast_enabled("cpu") or
                                          matmul.onednn_applies(x_TD, self.experts.w2_EDF)):
            return CPU_ROW_MULTIPLE
        return 1

    @torch.compiler.disable
    def _experts_eager(self, x_TD: Tensor, dispatch_ids_S: Tensor, gates_TK: Tensor
                       ) -> tuple[Tensor, int]:
        """Reference: one boolean mask per expert; same drop policy as the sorted path."""
        out_TD = torch.zeros(x_TD.shape, dtype=torch.float32, device=x_TD.device)
        capacity, dropped = self.capacity(x_TD.shape[0]), 0
        gates_S = gates_TK.flatten()  # in (token, choice) order, like dispatch_ids_S
        for e in range(self.num_experts):
            slots_n = torch.nonzero(dispatch_ids_S == e).squeeze(1)
            if capacity is not None and slots_n.numel() > capacity:
                dropped += slots_n.numel() - capacity
                slots_n = slots_n[:capacity]
            if slots_n.numel() == 0:
                continue
            tokens_n = slots_n // self.top_k
            y_nD = self.experts.forward_one(e, x_TD[tokens_n])
            out_TD.index_add_(0, tokens_n, y_nD.float() * gates_S[slots_n].unsqueeze(1))
        return out_TD, dropped

    # ---- balancing ---------------------------------------------------------------------------
    @torch.no_grad()
    def update_bias(self) -> None:
        """Once per optimizer step: nudge b toward balance, keep sum(b) = 0, zero the counts."""
        counts_E = self.tokens_per_expert_E
        if self.cfg.bias_balancing and counts_E.sum() > 0:
            delta_E = self.cfg.bias_update_speed * torch.sign(counts_E.mean() - counts_E)
            self.expert_bias_E += delta_E - delta_E.mean()
        counts_E.zero_()


class MoELM(LM):
    """The dense LM with `MoEFFN` in the blocks `moe_layer_indices` names."""

    def __init__(self, cfg: ModelSection, moe_cfg: MoESection):
        # make_ffn runs inside LM.__init__, so the MoE settings must exist first
        self.moe_cfg = moe_cfg
        self.moe_indices = set(moe_layer_indices(cfg, moe_cfg))
        super().__init__(cfg)

    def make_ffn(self, layer_idx: int) -> nn.Module:
        if layer_idx not in self.moe_indices:
            return super().make_ffn(layer_idx)
        return MoEFFN(self.cfg.dim, expert_hidden(self.cfg, self.moe_cfg), self.moe_cfg,
                      layer_idx, self.cfg.dropout)

    def moe_ffns(self) -> list[MoEFFN]:
        return [b.ffn for b in self.blocks if isinstance(b.ffn, MoEFFN)]

    def num_active_params(self) -> int:
        inactive = 0
        for ffn in self.moe_ffns():
            per_expert = sum(p[0].numel() for p in ffn.experts.parameters())
            inactive += (ffn.num_experts - ffn.top_k) * per_expert
        return self.num_params() - inactive

    # ---- the training loop's two calls -----------------------------------------------------
    def extra_loss(self) -> Tensor | None:
        ffns = self.moe_ffns()
        return sum(f.aux_loss + f.z_loss for f in ffns) / len(ffns)

    def after_optimizer_step(self) -> None:
        for ffn in self.moe_ffns():
            ffn.update_bias()
