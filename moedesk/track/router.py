"""Counting a router's top-k choices with a forward hook (`Run.watch_router`, the callback).

The contract for a watched module: its output is, or holds (a tuple, a list or a dict
such as a ModelOutput, searched in order), either
  - the chosen expert ids: an integer tensor [..., top_k], or
  - the router logits or probabilities: a float tensor [..., num_experts], whose top-k
    per token is taken (the same experts as a softmax's top-k).
Ids come first when both are there: a router that biases its choice (DeepSeek-V3's
correction bias, group-limited routing) is only counted right from its ids.

A forward is counted when the module is in training mode, gradients are on and it is
not a backward pass re-running the forward (gradient checkpointing): evaluation and
`torch.no_grad()` forwards are left out. Counts stay on the router's device (no host
sync per forward); `RouterSet.take` reads every layer's counts in one transfer and
zeroes them, so a take per optimizer step sums that step's micro-batches.
Out-of-range ids (e.g. -1 for a dropped token) are not counted.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import Tensor, nn

TOP_K_ATTRS = ("top_k", "num_experts_per_tok", "moe_top_k", "k")
EXPERTS_ATTRS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def _int_attr(module: nn.Module, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def experts_of(module: nn.Module) -> int | None:
    """The expert count a router module declares (attribute, Linear width, weight rows)."""
    found = _int_attr(module, EXPERTS_ATTRS)
    if found is not None:
        return found
    if isinstance(module, nn.Linear):
        return module.out_features
    weight = getattr(module, "weight", None)
    if isinstance(weight, Tensor) and weight.dim() == 2:
        return int(weight.shape[0])
    return None


def top_k_of(module: nn.Module) -> int | None:
    return _int_attr(module, TOP_K_ATTRS)


def _tensors(output):
    if isinstance(output, Tensor):
        yield output
    elif isinstance(output, Mapping):
        yield from (v for v in output.values() if isinstance(v, Tensor))
    elif isinstance(output, (tuple, list)):
        yield from (v for v in output if isinstance(v, Tensor))


def chosen_experts(output, top_k: int, num_experts: int | None) -> tuple[Tensor | None, int | None]:
    """(expert ids [..., top_k], num_experts) from a router's output, or (None, None)."""
    tensors = list(_tensors(output))
    floats = [t for t in tensors if t.is_floating_point() and t.dim() >= 1]
    for t in tensors:
        if not t.is_floating_point() and t.dtype != torch.bool and t.dim() >= 1 \
                and t.shape[-1] == top_k:
            if num_experts is None and floats:  # the widest float output: the logits
                num_experts = max(int(f.shape[-1]) for f in floats)
            return t, num_experts
    for t in floats:
        if t.shape[-1] >= top_k \
                and (num_experts is None or t.shape[-1] == num_experts):
            return t.detach().topk(top_k, dim=-1).indices, int(t.shape[-1])
    return None, None


def _in_backward() -> bool:
    # a forward re-run inside backward (activation checkpointing) runs in a graph task
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is not None and task_id() != -1


class RouterCounter:
    """Top-k choices of one router module, accumulated on its device."""

    def __init__(self, module: nn.Module, layer: int, top_k: int, num_experts: int | None,
                 label: str = ""):
        self.module, self.layer, self.top_k, self.num_experts = module, layer, top_k, num_experts
        self.label = label or type(module).__name__
        self.counts: Tensor | None = None  # [E + 1]: the last slot takes out-of-range ids
        self.forwards = 0
        self.unreadable = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args, output) -> None:
        if not module.training or not torch.is_grad_enabled() or _in_backward():
            return
        ids, experts = chosen_experts(output, self.top_k, self.num_experts)
        if ids is None or experts is None:
            self.unreadable += 1
            if self.unreadable == 1:
                warnings.warn(f"moedesk: cannot read the top-{self.top_k} choice of {self.label} "
                              f"(layer {self.layer}) from its output (pass num_experts= when it "
                              "returns ids only); see the watch_router contract in "
                              "docs/tracking.md", stacklevel=2)
            return
        self.num_experts = experts
        flat = ids.detach().reshape(-1).long()
        if self.counts is None:
            self.counts = torch.zeros(experts + 1, dtype=torch.long, device=flat.device)
        # no boolean indexing: that would make the host wait for the device
        flat = torch.where((flat >= 0) & (flat < experts), flat, experts)
        self.counts.index_add_(0, flat, torch.ones_like(flat))
        self.forwards += 1

    def remove(self) -> None:
        self.handle.remove()


class RouterSet:
    """The routers a run watches; `take` empties them all at once."""

    def __init__(self) -> None:
        self.counters: list[RouterCounter] = []

    def __len__(self) -> int:
        return len(self.counters)

    def add(self, counter: RouterCounter) -> RouterCounter:
        if any(c.layer == counter.layer for c in self.counters):
            counter.remove()
            raise ValueError(f"layer {counter.layer} is watched already; pass layer= to "
                             "tell routers apart")
        self.counters.append(counter)
        return counter

    def take(self) -> dict[int, list[int]]:
        """{layer: counts per expert} since the last take (layers that saw a training
        forward only), in one device-to-host transfer; the counters restart at zero."""
        live = [c for c in self.counters if c.counts is not None and c.forwards]
        if not live:
            return {}
        rows = [c.counts[:-1] for c in live]
        host = torch.cat(rows).tolist() if len({r.device for r in rows}) == 1 else \
            [v for r in rows for v in r.tolist()]
        out, at = {}, 0
        for c in live:
            n = c.counts.numel() - 1
            out[c.layer] = [int(v) for v in host[at:at + n]]
            at += n
            c.counts.zero_()
            c.forwards = 0
        return out

    def top_k(self) -> int | None:
        return self.counters[0].top_k if self.counters else None

    def remove(self) -> None:
        for c in self.counters:
            c.remove()
        self.counters.clear()


def watch(routers: RouterSet, module: nn.Module, *, top_k: int | None = None,
          num_experts: int | None = None, layer: int | None = None, label: str = ""
          ) -> RouterCounter:
    """Hook `module` (see the module docstring's contract); ValueError when its top-k
    cannot be known."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"watch_router: expected a torch.nn.Module, got {type(module).__name__}")
    top_k = top_k if top_k is not None else top_k_of(module)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"watch_router: {type(module).__name__} has no top_k attribute; pass "
                         "top_k= (experts chosen per token), an integer >= 1")
    num_experts = num_experts if num_experts is not None else experts_of(module)
    if num_experts is not None and num_experts < top_k:
        raise ValueError(f"watch_router: num_experts={num_experts} is less than top_k={top_k}")
    if layer is None:
        layer = max((c.layer for c in routers.counters), default=-1) + 1
    return routers.add(RouterCounter(module, int(layer), top_k, num_experts, label))
