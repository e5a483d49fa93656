"""Which kernel multiplies fp32 matrices on the CPU, and the linear layers built on it.

torch's fp32 `F.linear` and `mm` on an x86 CPU call MKL's sgemm. On AMD CPUs with AVX-512
(Zen 4, Zen 5) MKL runs its AVX2 code, and oneDNN's fp32 matmul
(`torch.ops.mkldnn._linear_pointwise`, the kernel inductor uses for CPU inference; IEEE
fp32, deterministic) is 1.6-2.3x faster at every shape the models use: on a Zen 5 EPYC,
one core, 194-220 GFLOP/s forward and input gradient against MKL's 90-97, 151-191 for
the weight gradient against 88-95 (`bench/cpu_matmul.py`, docs/benchmarks.md). On an
AVX2-only AMD EPYC the two are level (31-41 against 35-43), and on Intel CPUs MKL runs
its own AVX-512 kernels, so there MKL stays: "auto" picks oneDNN only on AMD CPUs with
avx512f.

Shape letters: M rows (tokens), I input width, O output width.

- `set_kernel(setting)`: `[train] cpu_matmul` ("auto", "blas", "onednn") for this process;
  `kernel()` is the one in use ("blas" or "onednn"); `using(setting)` for one block;
  `describe(device)` for the run's start line.
- `linear(x, w)`: F.linear without a bias, through oneDNN when that kernel is chosen and
  x and w are fp32 CPU tensors outside autocast (bf16 matmuls run on oneDNN already).
  Under torch.compile the call is an opaque op (`moedesk::onednn_linear`): inductor's own
  lowering of oneDNN's linear wants frozen weights, and its fp32 matmuls are MKL's (the
  compiled dense step ran 1.59x the eager one before this).
- `Linear`: a bias-free nn.Linear whose forward is `linear`, so parameter names,
  checkpoints and exports are unchanged.
- `onednn_linear(x, w)` and `weight_grad(g, x)`: the bare kernels, forward and weight
  gradient, for the experts' own autograd function (experts.py `_SwiGLUGroups`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moedesk.profiles.schema import CPU_MATMULS

_chosen: str | None = None  # None: "auto", resolved on first use


def _mkldnn_linear(x_MI: Tensor, w_OI: Tensor) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x_MI, w_OI, None, "none", [], "")


@torch.library.custom_op("moedesk::onednn_linear", mutates_args=())
def _onednn_linear_op(x_MI: Tensor, w_OI: Tensor) -> Tensor:
    return _mkldnn_linear(x_MI, w_OI)


@_onednn_linear_op.register_fake
def _(x_MI: Tensor, w_OI: Tensor) -> Tensor:
    return x_MI.new_empty((*x_MI.shape[:-1], w_OI.shape[0]))


def onednn_linear(x_MI: Tensor, w_OI: Tensor) -> Tensor:
    """x w^T on oneDNN (no autograd): the kernel `linear` and the experts call."""
    if torch.compiler.is_compiling():
        # inductor lowers oneDNN's linear only for frozen (constant) weights: traced, the
        # call goes through an opaque op of ours, which inductor leaves as it is
        return _onednn_linear_op(x_MI, w_OI)
    return _mkldnn_linear(x_MI, w_OI)


def cpu_vendor() -> str:
    """The CPU's vendor id ("AuthenticAMD", "GenuineIntel"), or "" where unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def resolve(setting: str) -> str:
    """"blas" or "onednn" for a `[train] cpu_matmul` setting on this machine ("onednn" on
    a torch built without oneDNN is "blas")."""
    if setting not in CPU_MATMULS:
        raise ValueError(f"cpu_matmul must be one of {', '.join(CPU_MATMULS)}, not {setting!r}")
    if not torch.backends.mkldnn.is_available():
        return "blas"
    if setting != "auto":
        return setting
    avx512 = torch.backends.cpu.get_cpu_capability() == "AVX512"
    return "onednn" if avx512 and cpu_vendor() == "AuthenticAMD" else "blas"


def set_kernel(setting: str) -> str:
    """Use `setting`'s kernel for this process's fp32 CPU matmuls; returns it."""
    global _chosen
    _chosen = resolve(setting)
    return _chosen


@contextmanager
def using(setting: str) -> Iterator[str]:
    """`set_kernel(setting)` inside the block, the previous kernel after it."""
    global _chosen
    before = _chosen
    try:
        yield set_kernel(setting)
    finally:
        _chosen = before


def kernel() -> str:
    """The fp32 CPU matmul kernel in use: "blas" or "onednn"."""
    return _chosen if _chosen is not None else set_kernel("auto")


def describe(device: torch.device) -> str:
    """What a run's start line says of the kernel: ", fp32 matmuls on oneDNN" or nothing."""
    return ", fp32 matmuls on oneDNN" if device.type == "cpu" and kernel() == "onednn" else ""


def onednn_applies(x: Tensor, w: Tensor) -> bool:
    """Whether `linear(x, w)` and the experts (experts.py) run on oneDNN."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and w.dtype == torch.float32
            and kernel() == "onednn" and not torch.is_autocast_enabled("cpu"))


def weight_grad(g_MO: Tensor, x_MI: Tensor) -> Tensor:
    """g^T x ([O, I]), with the smaller of O and I as oneDNN's row count: 1.2-1.4x faster
    than the other way round (the output's wide side fills its vector registers)."""
    if g_MO.shape[1] <= x_MI.shape[1]:
        return onednn_linear(g_MO.t(), x_MI.t())
    return onednn_linear(x_MI.t(), g_MO.t()).t().contiguous()


class _Linear(torch.autograd.Function):
    """y = x w^T on oneDNN, forward and backward (grad_x = g w, grad_w = g^T x)."""

    @staticmethod
    def forward(ctx, x: Tensor, w_OI: Tensor) -> Tensor:
        ctx.save_for_backward(x, w_OI)
        return onednn_linear(x, w_OI)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, w_OI = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = onednn_linear(grad, w_OI.t())
        if ctx.needs_input_grad[1]:
            grad_w = weight_grad(grad.reshape(-1, w_OI.shape[0]), x.reshape(-1, w_OI.shape[1]))
        return grad_x, grad_w


def linear(x: Tensor, w_OI: Tensor) -> Tensor:
    """F.linear(x, w_OI), on this process's fp32 CPU kernel (`kernel()`)."""
    if not onednn_applies(x, w_OI):
        return F.linear(x, w_OI)
    if not (torch.is_grad_enabled() and (x.requires_grad or w_OI.requires_grad)):
        return onednn_linear(x, w_OI)
    return _Linear.apply(x, w_OI)


class Linear(nn.Linear):
    """nn.Linear without a bias, multiplying through `linear`."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight)
