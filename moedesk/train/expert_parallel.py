"""The MoE layers across ranks: expert parallelism with `all_to_all_single`, and the
global Switch aux loss of data parallelism (docs/distributed.md).

`ExpertDispatcher` is the object `MoEFFN` calls when a run has more than one rank
(`ffn.dispatcher`); one serves every MoE layer of the model. With `moe.expert_parallel`
= P > 1 the W ranks form W/P expert-parallel groups of P consecutive ranks ({0,1},
{2,3}, ...) and rank r owns experts [(r mod P) * E_l, (r mod P + 1) * E_l) of every layer,
E_l = E / P: only their weights are on it (`shard`). The router and everything outside
the experts stay data parallel (DDP). One layer's forward (`experts`), per rank:
  1. sort the slots by expert exactly as the local path does (`MoEFFN.sorted_slots`:
     same capacity and drop policy), gather their rows x_SD
  2. exchange the counts: all_to_all_single of counts_E -> recv_counts[src, local expert]
  3. exchange the rows: all_to_all_single of x_SD, splits = rows per destination/source
  4. the rows arrive by source rank: regroup them by local expert, run the local experts
     (`SwiGLUExperts.forward_grouped`), undo the regrouping
  5. send the outputs back with the splits swapped; combine them on the source rank
     exactly as the local path does (`MoEFFN.gathers_back`: `combine_permuted` when every
     slot was kept and no group padded, else the gate multiply and index_add_)
`_AllToAll` is the autograd face of `dist.all_to_all_single`: the backward is the same
collective with the splits swapped. Expert gradients arrive summed over the group's
ranks; `finish_grads` sums them over the replicas of the same shard (W > P) and divides
by W, the average DDP takes of every other gradient. Checkpoints hold the whole model:
`full_model_state` / `full_optimizer_state` gather the shards to rank 0, and
`local_model_state` / `local_optimizer_state` cut a whole-model state to this rank's
experts, so a checkpoint loads at any world size and expert-parallel size.

With P = 1 (data parallel only) the experts run locally and the dispatcher only sums
the aux loss's expert counts over the ranks (`global_demand`): each rank's aux loss then
uses the shares f of the whole global micro-batch with its own router probabilities, and
the ranks' average is the one-process loss and gradient (Megatron's global aux loss).

Shape letters (moe.py's legend, plus): P ranks of an expert-parallel group, R rows a rank
receives for its experts.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from moedesk.train.experts import combine_permuted, combine_slots
from moedesk.train.moe import LEGACY_NAMES, MoEFFN


class _AllToAll(torch.autograd.Function):
    """dist.all_to_all_single with autograd: the backward sends gradients back."""

    @staticmethod
    def forward(ctx, x: Tensor, out_splits: list[int], in_splits: list[int], group) -> Tensor:
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        out_splits, in_splits = ctx.splits
        back = grad.new_empty((sum(in_splits), *grad.shape[1:]))
        dist.all_to_all_single(back, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return back, None, None, None


def regroup_index(recv_PE: Tensor) -> Tensor:
    """Row order that turns rows received as [source rank][local expert] blocks into
    [local expert][source rank] blocks (each expert's rows contiguous)."""
    n_PE = recv_PE.long()
    start_PE = (n_PE.flatten().cumsum(0) - n_PE.flatten()).view_as(n_PE)
    n_EP, start_EP = n_PE.t().flatten(), start_PE.t().flatten()
    first_R = torch.repeat_interleave(start_EP, n_EP)
    block_start_R = torch.repeat_interleave(n_EP.cumsum(0) - n_EP, n_EP)
    return first_R + torch.arange(int(n_EP.sum()), device=n_PE.device) - block_start_R


class ExpertDispatcher:
    """Expert placement and token exchange of every MoE layer of one model."""

    def __init__(self, rank: int, world: int, ep: int, num_experts: int):
        if world % ep or num_experts % ep:
            raise ValueError(f"expert_parallel {ep} must divide the world size {world} and "
                             f"the {num_experts} experts")
        self.rank, self.world, self.ep = rank, world, ep
        self.local = num_experts // ep
        self.first = (rank % ep) * self.local
        self.ffns: list[MoEFFN] = []
        self.expert_keys: set[str] = set()
        self.group = self.replica_group = None
        # every rank creates every group, in the same order (torch.distributed's rule); the
        # dispatcher's collectives never share a communicator with DDP's all-reduces
        self.demand_group = dist.new_group(list(range(world)))
        if ep > 1:
            for g in range(world // ep):
                ranks = list(range(g * ep, (g + 1) * ep))
                group = dist.new_group(ranks)
                if rank in ranks:
                    self.group = group
            for j in range(ep if world > ep else 0):
                ranks = list(range(j, world, ep))
                group = dist.new_group(ranks)
                if rank in ranks:
                    self.replica_group = group

    def owned(self) -> range:
        return range(self.first, self.first + self.local)

    # ---- placement -----------------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        """Point every MoE layer at this dispatcher and keep only this rank's experts."""
        names = {id(m): n for n, m in model.named_modules()}
        for ffn in (m for m in model.modules() if isinstance(m, MoEFFN)):
            ffn.dispatcher = self
            self.ffns.append(ffn)
            if self.ep == 1:
                continue
            for pname, full in list(ffn.experts.named_parameters(recurse=False)):
                shard = nn.Parameter(full.detach()[self.first:self.first + self.local].clone())
                setattr(ffn.experts, pname, shard)
                self.expert_keys.add(f"{names[id(ffn.experts)]}.{pname}")

    def expert_rows(self) -> set[int]:
        """Experts per layer the weights on this rank hold (the shard's first dimension)."""
        return {p.shape[0] for f in self.ffns for p in f.experts.parameters()}

    def sharded_params(self) -> list[nn.Parameter]:
        if self.ep == 1:
            return []
        return [p for f in self.ffns for p in f.experts.parameters()]

    # ---- forward -------------------------------------------------------------------------
    def global_demand(self, counts_E: Tensor, n_slots: int) -> tuple[Tensor, int]:
        """The aux loss's expert counts and slot total over the whole global micro-batch."""
        counts_E = counts_E.clone()
        dist.all_reduce(counts_E, group=self.demand_group)
        return counts_E, n_slots * self.world

    def experts(self, ffn: MoEFFN, x_TD: Tensor, dispatch_ids_S: Tensor, gates_TK: Tensor
                ) -> tuple[Tensor, int]:
        """(y_TD fp32, dropped slots) of this rank's tokens, their experts anywhere."""
        if self.ep == 1:
            return ffn.local_experts(x_TD, dispatch_ids_S, gates_TK)
        P, E_l = self.ep, self.local
        # 1. the local sort: slots grouped by (global) expert, capacity applied
        order_S, counts, dropped = ffn.sorted_slots(x_TD, dispatch_ids_S)
        token_S, gates_S = order_S // ffn.top_k, gates_TK.flatten()[order_S]
        device_type = x_TD.device.type
        if torch.is_autocast_enabled(device_type):
            x_TD = x_TD.to(torch.get_autocast_dtype(device_type))  # send half the bytes
        x_SD = x_TD.index_select(0, token_S)
        # 2. counts first: how many rows each source sends for each of my experts
        send_E = torch.tensor(counts, dtype=torch.int64, device=x_TD.device)
        recv_E = torch.empty_like(send_E)
        dist.all_to_all_single(recv_E, send_E, group=self.group)
        recv = recv_E.tolist()
        send_splits = [sum(counts[j * E_l:(j + 1) * E_l]) for j in range(P)]
        recv_splits = [sum(recv[s * E_l:(s + 1) * E_l]) for s in range(P)]
        # 3. the rows, 4. this rank's experts on them, grouped by expert
        x_RD = _AllToAll.apply(x_SD, recv_splits, send_splits, self.group)
        regroup_R = regroup_index(recv_E.view(P, E_l))
        group_counts = [sum(recv[s * E_l + e] for s in range(P)) for e in range(E_l)]
        y_RD = ffn.experts.forward_grouped(x_RD.index_select(0, regroup_R), group_counts)
        if x_RD.shape[0] == 0 and x_RD.requires_grad and not y_RD.requires_grad:
            # no rows for my experts: keep the (empty) result on the graph, or this rank
            # would skip the return trip's all-to-all in the backward and the ranks'
            # collectives would go out of step
            y_RD = y_RD + x_RD
        y_RD = y_RD.index_select(0, torch.argsort(regroup_R))
        # 5. back to the tokens' ranks, weighted by the gates and summed per token
        y_SD = _AllToAll.apply(y_RD, send_splits, recv_splits, self.group)
        if ffn.gathers_back(x_TD, order_S, dispatch_ids_S.numel()):  # as in one process
            return combine_permuted(y_SD, order_S, gates_TK), dropped
        return combine_slots(y_SD, gates_S, token_S, x_TD.shape[0]), dropped

    # ---- gradients -----------------------------------------------------------------------
    @torch.no_grad()
    def finish_grads(self) -> None:
        """After the last micro-batch's backward: expert gradients get DDP's average."""
        for p in self.sharded_params():
            if p.grad is None:  # no token reached these experts: the one process has zeros
                p.grad = torch.zeros_like(p)
            if self.replica_group is not None:
                dist.all_reduce(p.grad, group=self.replica_group)
            p.grad.div_(self.world)

    # ---- checkpoints: whole-model state <-> this rank's shard ---------------------------------
    def _gather(self, shard: Tensor) -> Tensor | None:
        """The whole tensor on rank 0 (group 0 gathers, the replicas hold copies)."""
        if self.rank >= self.ep:
            return None
        parts = [torch.empty_like(shard) for _ in range(self.ep)] if self.rank == 0 else None
        dist.gather(shard.contiguous(), parts, group=self.group, group_dst=0)
        return torch.cat(parts) if parts is not None else None

    def _cut(self, full: Tensor) -> Tensor:
        return full[self.first:self.first + self.local].clone()

    def full_model_state(self, model: nn.Module) -> dict:
        state = model.state_dict()
        for key in sorted(self.expert_keys):
            state[key] = self._gather(state[key])
        return state

    def local_model_state(self, state: dict) -> dict:
        state = dict(state)
        for key in sorted(self.expert_keys):
            legacy = _legacy_key(key)
            if key not in state and legacy in state:
                state[key] = state.pop(legacy)
            if key in state:
                state[key] = self._cut(state[key])
        return state

    def _expert_slots(self, optimizer: torch.optim.Optimizer) -> list[int]:
        """Indices (as in optimizer.state_dict()) of the sharded parameters."""
        own = {id(p) for p in self.sharded_params()}
        params = [p for group in optimizer.param_groups for p in group["params"]]
        return [i for i, p in enumerate(params) if id(p) in own]

    def full_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        state = optimizer.state_dict()
        per_param = {i: dict(s) for i, s in state["state"].items()}
        for i in self._expert_slots(optimizer):
            for key, value in sorted(per_param.get(i, {}).items()):
                if torch.is_tensor(value) and value.dim() > 0:
                    per_param[i][key] = self._gather(value)
        return {**state, "state": per_param}

    def local_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> dict:
        per_param = {int(i): dict(s) for i, s in state["state"].items()}
        for i in self._expert_slots(optimizer):
            for key, value in per_param.get(i, {}).items():
                if torch.is_tensor(value) and value.dim() > 0:
                    per_param[i][key] = self._cut(value)
        return {**state, "state": per_param}


def _legacy_key(key: str) -> str:
    """The name a key had before the shape-suffixed parameter names (moe.LEGACY_NAMES)."""
    for old, new in LEGACY_NAMES.items():
        if key.endswith("." + new):
            return key[:-len(new)] + old
    return key
