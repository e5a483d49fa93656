"""The kernel floor of a training step: its matmuls and attention kernels, run alone.

A step spends its time in a few heavy kernels (the matmuls, forward and backward, and the
attention kernels) and in everything around them (elementwise ops, norms, RoPE, routing,
gathers, the losses, the optimizer, the autograd engine). `record` runs one step under a
`TorchDispatchMode`, which sees every aten call the step makes, backward included, and
keeps the heavy ones with their inputs; `KernelFloor.replay` calls exactly those again, one
after the other and nothing in between, on the same tensors (the same shapes, strides and
dtypes, so the same kernels are chosen).

What the floor is for: two implementations of one model that call the same kernels on the
same shapes share it, so `their step / this floor` bounds the speed-up any implementation
of the same math on the same kernels can reach over them. A target above that bound needs
fewer or faster kernels, not less overhead (docs/benchmarks.md has the figures).

The replay holds references to the recorded inputs (activations, weights, gradients) until
the floor is dropped: about the memory autograd keeps for one step. Values do not matter to
these kernels' speed, so tensors the optimizer updates in place since are still fine.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten op names (without the overload) that count as the step's matmuls
MATMULS = {"mm": "matmul", "addmm": "matmul", "bmm": "matmul", "baddbmm": "matmul",
           "_grouped_mm": "grouped matmul", "_linear_pointwise": "matmul"}
# SDPA's fused kernels, forward and backward, on every backend
ATTENTION_PREFIX = "_scaled_dot_product_"
KINDS = ("matmul", "grouped matmul", "attention")


def _detached(value):
    return value.detach() if isinstance(value, torch.Tensor) else value


def kernel_kind(func) -> str | None:
    """`KINDS` member an aten op belongs to, or None for ops outside the floor."""
    name = func._schema.name.split("::", 1)[-1]
    if name.startswith(ATTENTION_PREFIX):
        return "attention"
    return MATMULS.get(name)


class KernelFloor(TorchDispatchMode):
    """While active, records every heavy kernel call; `replay` runs them again alone."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any, tuple, dict]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = kernel_kind(func)
        if kind is not None:
            self.calls.append((kind, func, tuple(map(_detached, args)),
                               {k: _detached(v) for k, v in kwargs.items()}))
        return func(*args, **kwargs)

    def counts(self) -> Counter:
        """Recorded calls per kind."""
        return Counter(kind for kind, *_ in self.calls)

    def replay(self, kinds: tuple[str, ...] = KINDS, clock: Callable[[], float] = time.perf_counter
               ) -> float:
        """Seconds the recorded calls of `kinds` take, run back to back (results dropped)."""
        selected = [(func, args, kwargs) for kind, func, args, kwargs in self.calls
                    if kind in kinds]
        with torch.no_grad():
            start = clock()
            for func, args, kwargs in selected:
                func(*args, **kwargs)
            return clock() - start


def record(step: Callable[[], Any]) -> KernelFloor:
    """Run `step()` once (a real step: it trains) and return the floor of its kernels."""
    floor = KernelFloor()
    with floor:
        step()
    return floor
