"""The top-k MoE FFN, its balancing, and the MoE language model built on the dense LM.

`MoEFFN` replaces a block's SwiGLU FFN (research/moe.md section 8):
  - router: Linear(D, E) in fp32 outside autocast; p = softmax over all E experts; top-k
    on p (+ the balancing bias b); gate weights = the chosen p renormalised to sum 1
    (b only decides *which* experts, never how much they weigh)
  - experts: stacked SwiGLU tensors w1, w3 [E, F, D] and w2 [E, D, F]
  - dispatch "sorted": one stable argsort of the T*K expert ids, one gather, F.linear per
    expert on contiguous slices, gate multiply in fp32, one index_add_ back (under CPU
    bf16 autocast each group is padded to 32 rows so oneDNN reuses its kernels);
    "eager": a per-expert mask loop kept as the numerical reference
  - losses: Switch aux alpha*E*sum_i f_i*P_i (alpha when balanced) and router z-loss
    beta*mean(logsumexp^2), both already weighted; `MoELM.extra_loss` averages them over
    MoE layers
  - aux-loss-free balancing: b += u*sign(mean(c) - c), mean-centred, once per optimizer
    step from counts c gathered in training forwards only
`MoELM` subclasses `LM` through its seams (`make_ffn` and the loop hooks) and turns the
counts into telemetry with `moedesk.loadstats`.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moedesk.profiles.schema import ModelSection, MoESection
from moedesk.sizing import expert_hidden, moe_layer_indices
from moedesk.stats.load import DeadExpertTracker, load_stats, metric_values
from moedesk.train.model import LM

# expert groups are padded to this many rows under CPU bf16 autocast (see row_multiple)
BF16_ROW_MULTIPLE = 32

# per-layer load statistics emitted as metrics (moe/<key> and moe/L<i>/<key>)
STAT_KEYS = ("imbalance", "cv", "max_vio", "entropy_norm", "usage_std", "min_share",
             "max_share", "max_token_fraction")


def pad_groups(token_idx: Tensor, gates_S: Tensor, counts: list[int], multiple: int
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
    device = token_idx.device
    shift_S = torch.repeat_interleave(torch.tensor(shifts, device=device),
                                      torch.tensor(counts, device=device))
    dest_S = torch.arange(token_idx.numel(), device=device) + shift_S
    n_rows = sum(padded)
    token_pad = token_idx.new_zeros(n_rows).index_copy_(0, dest_S, token_idx)
    gates_pad = gates_S.new_zeros(n_rows).index_copy(0, dest_S, gates_S)
    return token_pad, gates_pad, padded


class SwiGLUExperts(nn.Module):
    """E SwiGLU FFNs stored as three stacked tensors."""

    def __init__(self, num_experts: int, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.w3 = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.w2 = nn.Parameter(torch.empty(num_experts, dim, hidden))

    def init_weights(self, std: float, residual_std: float) -> None:
        nn.init.normal_(self.w1, std=std)
        nn.init.normal_(self.w3, std=std)
        nn.init.normal_(self.w2, std=residual_std)

    def forward_grouped(self, x_SD: Tensor, counts: list[int]) -> Tensor:
        """x_SD holds counts[0] rows for expert 0, then counts[1] for expert 1, ..."""
        w1, w3, w2 = self.w1, self.w3, self.w2
        device_type = x_SD.device.type
        if torch.is_autocast_enabled(device_type):
            # cast once here: autocast would cast every per-expert slice (and x twice per
            # expert) on its own, which costs more than the bf16 matmuls save
            dtype = torch.get_autocast_dtype(device_type)
            x_SD, w1, w3, w2 = (t.to(dtype) for t in (x_SD, w1, w3, w2))
        w1s, w3s, w2s = w1.unbind(0), w3.unbind(0), w2.unbind(0)
        outs = []
        # split, not slicing: the backward of E slices would zero-fill E full-size gradients
        for e, x_nD in enumerate(x_SD.split(counts)):
            if x_nD.shape[0]:
                h_nF = F.silu(F.linear(x_nD, w1s[e])) * F.linear(x_nD, w3s[e])
                outs.append(F.linear(h_nF, w2s[e]))
        return torch.cat(outs) if outs else x_SD.new_zeros(0, self.w2.shape[1])

    def forward_one(self, e: int, x_nD: Tensor) -> Tensor:
        return F.linear(F.silu(F.linear(x_nD, self.w1[e])) * F.linear(x_nD, self.w3[e]),
                        self.w2[e])


class MoEFFN(nn.Module):
    """Top-k routed SwiGLU experts; maps x_BTD -> y_BTD like the dense FFN."""

    def __init__(self, dim: int, hidden: int, cfg: MoESection, layer_idx: int = 0,
                 dropout: float = 0.0):
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        self.num_experts, self.top_k = cfg.num_experts, cfg.top_k
        self.router = nn.Linear(dim, cfg.num_experts, bias=False)
        self.experts = SwiGLUExperts(cfg.num_experts, dim, hidden)
        self.dropout = nn.Dropout(dropout)
        # b is part of the model (checkpointed); counts are rebuilt every step
        self.register_buffer("expert_bias", torch.zeros(cfg.num_experts), persistent=True)
        self.register_buffer("step_counts", torch.zeros(cfg.num_experts), persistent=False)
        self.register_buffer("log_counts", torch.zeros(cfg.num_experts), persistent=False)
        self.aux_loss: Tensor = torch.zeros(())  # weighted, from the last forward
        self.z_loss: Tensor = torch.zeros(())
        self.time_router = True  # MoELM re-arms it once per logged step
        self.reset_log()

    def reset_log(self) -> None:
        """Zero what telemetry accumulates between logged steps."""
        self.log_counts.zero_()
        self.log_forwards = 0
        self.log_aux = torch.zeros(())
        self.log_z = torch.zeros(())
        self.log_routed_slots = self.log_dropped_slots = 0
        self.router_seconds, self.router_tokens = 0.0, 0

    def init_weights(self, std: float, residual_std: float) -> None:
        nn.init.normal_(self.router.weight, std=self.cfg.router_init_std)
        self.experts.init_weights(std, residual_std)

    # ---- routing ---------------------------------------------------------------------------
    def route(self, x_TD: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(expert ids [T,K], gate weights [T,K] fp32, probabilities [T,E], logits [T,E])."""
        # the router stays fp32 under bf16 autocast: top-k on near-tied bf16 scores flips
        with torch.autocast(device_type=x_TD.device.type, enabled=False):
            logits_TE = F.linear(x_TD.float(), self.router.weight.float())
        noisy_TE = logits_TE
        if self.training and self.cfg.router_noise_std > 0:
            noisy_TE = logits_TE + torch.randn_like(logits_TE) * self.cfg.router_noise_std
        probs_TE = noisy_TE.softmax(dim=-1)
        scores_TE = probs_TE + self.expert_bias if self.cfg.bias_balancing else probs_TE
        ids_TK = scores_TE.topk(self.top_k, dim=-1).indices
        gates_TK = probs_TE.gather(-1, ids_TK)
        gates_TK = gates_TK / gates_TK.sum(-1, keepdim=True)
        return ids_TK, gates_TK, probs_TE, logits_TE

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
            f_E = f_E / (n_tokens * self.top_k)
            aux = self.cfg.aux_loss_weight * self.num_experts * (f_E * probs_TE.mean(0)).sum()
        if self.cfg.z_loss_weight > 0 and n_tokens:
            z = self.cfg.z_loss_weight * torch.logsumexp(logits_TE, dim=-1).square().mean()
        return aux, z

    # ---- forward ---------------------------------------------------------------------------
    def forward(self, x_BTD: Tensor) -> Tensor:
        B, T, D = x_BTD.shape
        x_TD = x_BTD.reshape(B * T, D)
        counting = self.training and torch.is_grad_enabled()
        timing = counting and self.time_router
        if timing:
            if x_TD.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
        ids_TK, gates_TK, probs_TE, logits_TE = self.route(x_TD)
        if timing:
            if x_TD.is_cuda:
                torch.cuda.synchronize()
            self.router_seconds += time.perf_counter() - start
            self.router_tokens += B * T
            self.time_router = False
        self.aux_loss, self.z_loss = self.balance_losses(probs_TE, logits_TE, ids_TK)
        if counting:
            with torch.no_grad():
                counts_E = torch.bincount(ids_TK.flatten(), minlength=self.num_experts)
                self.step_counts += counts_E
                self.log_counts += counts_E
                self.log_aux = self.log_aux + self.aux_loss.detach()
                self.log_z = self.log_z + self.z_loss.detach()
                self.log_forwards += 1
        dispatch_ids, gates_TK = self._dispatch_ids(ids_TK, gates_TK)
        if self.cfg.dispatch == "eager":
            y_TD, dropped = self._experts_eager(x_TD, dispatch_ids, gates_TK)
        else:
            y_TD, dropped = self._experts_sorted(x_TD, dispatch_ids, gates_TK)
        if counting:
            self.log_routed_slots += ids_TK.numel()
            self.log_dropped_slots += dropped
        return self.dropout(y_TD.to(x_BTD.dtype).view(B, T, D))

    def _dispatch_ids(self, ids_TK: Tensor, gates_TK: Tensor) -> tuple[Tensor, Tensor]:
        """Flat expert id per (token, slot); E marks a slot that expert dropout removed."""
        flat_ids = ids_TK.flatten()
        p = self.cfg.expert_dropout
        if not (self.training and p > 0):
            return flat_ids, gates_TK
        keep_TK = torch.rand(gates_TK.shape, device=gates_TK.device) >= p
        keep_TK[:, 0] |= ~keep_TK.any(-1)  # a token keeps at least its first choice
        gates_TK = gates_TK * keep_TK
        gates_TK = gates_TK / gates_TK.sum(-1, keepdim=True)
        return torch.where(keep_TK.flatten(), flat_ids, self.num_experts), gates_TK

    def capacity(self, n_tokens: int) -> int | None:
        """Slots each expert takes, C = ceil(cf*T*K/E); None when dropless."""
        if self.cfg.capacity_factor <= 0:
            return None
        return math.ceil(self.cfg.capacity_factor * n_tokens * self.top_k / self.num_experts)

    def _experts_sorted(self, x_TD: Tensor, dispatch_ids: Tensor, gates_TK: Tensor
                        ) -> tuple[Tensor, int]:
        n_slots = dispatch_ids.numel()
        order = torch.argsort(dispatch_ids, stable=True)
        counts = torch.bincount(dispatch_ids, minlength=self.num_experts + 1)
        capacity = self.capacity(x_TD.shape[0])
        dropped = 0
        if capacity is None:
            counts_list = counts[:self.num_experts].tolist()
            order = order[:sum(counts_list)]  # removed slots (id E) sort last
        else:
            # stable sort keeps token order inside an expert: the earliest C slots stay
            sorted_ids = dispatch_ids[order]
            starts = counts.cumsum(0) - counts
            rank = torch.arange(n_slots, device=order.device) - starts[sorted_ids]
            order = order[(rank < capacity) & (sorted_ids < self.num_experts)]
            demand = counts[:self.num_experts].tolist()
            counts_list = [min(c, capacity) for c in demand]
            dropped = sum(demand) - sum(counts_list)
        token_idx, gates_S = order // self.top_k, gates_TK.flatten()[order]
        multiple = self.row_multiple(x_TD)
        if multiple > 1:
            token_idx, gates_S, counts_list = pad_groups(token_idx, gates_S, counts_list, multiple)
        if torch.is_autocast_enabled(x_TD.device.type):
            # cast the T tokens before gathering T*K copies of them
            x_TD = x_TD.to(torch.get_autocast_dtype(x_TD.device.type))
        y_SD = self.experts.forward_grouped(x_TD.index_select(0, token_idx), counts_list)
        # fp32 gates promote the product to fp32 in one pass
        y_SD = y_SD * gates_S.unsqueeze(1)
        out_TD = torch.zeros(x_TD.shape, dtype=torch.float32, device=x_TD.device)
        return out_TD.index_add_(0, token_idx, y_SD), dropped

    def row_multiple(self, x_TD: Tensor) -> int:
        """Rows each expert group is padded to a multiple of (1 = no padding).

        oneDNN builds a kernel for every new bf16 matmul shape, and per-expert token counts
        change every step: rounding them up to 32 rows keeps the shapes few and cached
        (about 4x faster per matmul on CPU). fp32 (MKL) and CUDA need no padding.
        """
        if x_TD.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            return BF16_ROW_MULTIPLE
        return 1

    def _experts_eager(self, x_TD: Tensor, dispatch_ids: Tensor, gates_TK: Tensor
                       ) -> tuple[Tensor, int]:
        """Reference: one boolean mask per expert; same drop policy as the sorted path."""
        out_TD = torch.zeros(x_TD.shape, dtype=torch.float32, device=x_TD.device)
        capacity, dropped = self.capacity(x_TD.shape[0]), 0
        gates_S = gates_TK.flatten()
        for e in range(self.num_experts):
            slots = torch.nonzero(dispatch_ids == e).squeeze(1)
            if capacity is not None and slots.numel() > capacity:
                dropped += slots.numel() - capacity
                slots = slots[:capacity]
            if slots.numel() == 0:
                continue
            tokens = slots // self.top_k
            y_nD = self.experts.forward_one(e, x_TD[tokens])
            out_TD.index_add_(0, tokens, y_nD.float() * gates_S[slots].unsqueeze(1))
        return out_TD, dropped

    # ---- balancing ---------------------------------------------------------------------------
    @torch.no_grad()
    def update_bias(self) -> None:
        """Once per optimizer step: nudge b toward balance, keep sum(b) = 0, zero the counts."""
        counts_E = self.step_counts
        if self.cfg.bias_balancing and counts_E.sum() > 0:
            delta_E = self.cfg.bias_update_speed * torch.sign(counts_E.mean() - counts_E)
            self.expert_bias += delta_E - delta_E.mean()
        counts_E.zero_()


class MoELM(LM):
    """The dense LM with `MoEFFN` in the blocks `moe_layer_indices` names."""

    def __init__(self, cfg: ModelSection, moe_cfg: MoESection):
        # make_ffn runs inside LM.__init__, so the MoE settings must exist first
        self.moe_cfg = moe_cfg
        self.moe_indices = set(moe_layer_indices(cfg, moe_cfg))
        super().__init__(cfg)
        self.dead_trackers = {i: DeadExpertTracker(moe_cfg.dead_window)
                              for i in sorted(self.moe_indices)}
        self._snapshot: dict | None = None

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

    # ---- loop hooks ------------------------------------------------------------------------
    def extra_loss(self) -> Tensor | None:
        ffns = self.moe_ffns()
        return sum(f.aux_loss + f.z_loss for f in ffns) / len(ffns)

    def after_optimizer_step(self) -> None:
        for ffn in self.moe_ffns():
            ffn.update_bias()

    def _take_snapshot(self) -> dict:
        """Read and reset every layer's telemetry at once (one host sync for all counts)."""
        ffns = self.moe_ffns()
        counts_LE = torch.stack([f.log_counts for f in ffns]).tolist()
        bias_max = torch.stack([f.expert_bias.abs().max() for f in ffns]).tolist()
        snap: dict = {"loads": {}, "values": {}}
        per_layer: dict[int, dict[str, float]] = {}
        latency: dict[int, float] = {}
        for ffn, counts, max_abs_bias in zip(ffns, counts_LE, bias_max, strict=True):
            i = ffn.layer_idx
            snap["loads"][i] = [int(c) for c in counts]
            stats = load_stats(counts, ffn.top_k)
            row = {k: float(stats[k]) for k in STAT_KEYS}
            row["dead_experts"] = float(self.dead_trackers[i].update(counts))
            n = max(ffn.log_forwards, 1)
            row["aux_loss"] = float(ffn.log_aux) / n
            row["z_loss"] = float(ffn.log_z) / n
            row["max_abs_bias"] = float(max_abs_bias)
            row["dropped_frac"] = ffn.log_dropped_slots / max(ffn.log_routed_slots, 1)
            per_layer[i] = row
            if ffn.router_tokens:
                latency[i] = 1e6 * ffn.router_seconds / ffn.router_tokens
            ffn.reset_log()
            ffn.time_router = True
        snap["values"] = metric_values(per_layer, "moe")
        if latency:
            snap["values"]["route/latency_us"] = sum(latency.values()) / len(latency)
            snap["values"].update({f"route/L{i}/latency_us": v for i, v in latency.items()})
        snap["pending"] = {"values", "loads"}
        return snap

    def _consume(self, part: str) -> dict:
        # log_values and expert_loads share one snapshot, whichever the loop calls first
        if self._snapshot is None or part not in self._snapshot["pending"]:
            self._snapshot = self._take_snapshot()
        self._snapshot["pending"].discard(part)
        out = self._snapshot[part]
        if not self._snapshot["pending"]:
            self._snapshot = None
        return out

    def log_values(self) -> dict[str, Tensor | float]:
        return dict(self._consume("values"))

    def expert_loads(self) -> dict[int, list[int]]:
        return dict(self._consume("loads"))

    def extra_state(self) -> dict:
        """Dead-expert streaks and the counts since the last log, so that a resumed run
        reports the same telemetry as an uninterrupted one (b is in state_dict)."""
        return {
            "dead_trackers": {i: t.state_dict() for i, t in self.dead_trackers.items()},
            "log": {f.layer_idx: {"counts": f.log_counts.tolist(), "forwards": f.log_forwards,
                                  "aux": float(f.log_aux), "z": float(f.log_z),
                                  "routed": f.log_routed_slots, "dropped": f.log_dropped_slots}
                    for f in self.moe_ffns()},
        }

    def load_extra_state(self, state: dict) -> None:
        for i, tracker_state in state.get("dead_trackers", {}).items():
            self.dead_trackers[int(i)].load_state_dict(tracker_state)
        logs = {int(i): v for i, v in state.get("log", {}).items()}
        for ffn in self.moe_ffns():
            if ffn.layer_idx in logs:
                log = logs[ffn.layer_idx]
                ffn.log_counts.copy_(torch.tensor(log["counts"]))
                ffn.log_forwards = int(log["forwards"])
                ffn.log_aux, ffn.log_z = torch.tensor(log["aux"]), torch.tensor(log["z"])
                ffn.log_routed_slots = int(log["routed"])
                ffn.log_dropped_slots = int(log["dropped"])
