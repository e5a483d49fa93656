"""Benchmark: the two fp32 CPU matmul kernels `[train] cpu_matmul` chooses between.

MKL's sgemm (what `F.linear` and `mm` call: "blas") against oneDNN's fp32 matmul
(`torch.ops.mkldnn._linear_pointwise`: "onednn"), interleaved, at the shapes the shipped
dense and top2 profiles multiply (16 x 128 tokens, width 256): the forward, the input
gradient and the weight gradient of each, in GFLOP/s. Then the experts (8 SwiGLU FFNs,
forward and backward) on 4096 slots, as each kernel runs them (`forward_grouped`: MKL's
`grouped_mm`, or oneDNN group by group), with group sizes fixed, changing every call, and
changing but rounded up to 32 rows (what the MoE layer does on oneDNN, moe.py
`row_multiple`).

Which kernel `auto` picks here is printed first; run this on a new CPU to see whether
setting `cpu_matmul` by hand would pay.

    .venv/bin/python bench/cpu_matmul.py [--threads 1] [--reps 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moedesk.train import matmul  # noqa: E402
from moedesk.train.experts import SwiGLUExperts  # noqa: E402
from moedesk.train.system import use_allocator  # noqa: E402

# (rows, in, out) of the profiles' linears: q/k/v fused, attention out, FFN up and down,
# the output head, one expert's up and down at ~512 rows, the router
SHAPES = ((2048, 256, 512), (2048, 256, 256), (2048, 256, 704), (2048, 704, 256),
          (512, 256, 352), (512, 352, 256), (2048, 256, 8))
EXPERTS, DIM, HIDDEN, SLOTS = 8, 256, 352, 4096


def side_by_side(a, b, reps: int) -> tuple[float, float]:
    """Median seconds of a() and b(), called alternately after two warm-up calls each."""
    for _ in range(2):
        a(), b()
    ta, tb = [], []
    for _ in range(reps):
        start = time.perf_counter()
        a()
        ta.append(time.perf_counter() - start)
        start = time.perf_counter()
        b()
        tb.append(time.perf_counter() - start)
    return statistics.median(ta), statistics.median(tb)


def linears(reps: int) -> None:
    print(f"{'rows':>5} {'in':>4} {'out':>4}  GFLOP/s blas / onednn: forward, input grad, "
          "weight grad")
    for rows, d_in, d_out in SHAPES:
        x, w, g = torch.randn(rows, d_in), torch.randn(d_out, d_in), torch.randn(rows, d_out)
        cases = ((partial(F.linear, x, w), partial(matmul.onednn_linear, x, w)),
                 (partial(torch.mm, g, w), partial(matmul.onednn_linear, g, w.t())),
                 (partial(torch.mm, g.t(), x), partial(matmul.weight_grad, g, x)))
        flops = 2 * rows * d_in * d_out
        cells = []
        for blas, dnn in cases:
            t_blas, t_dnn = side_by_side(blas, dnn, reps)
            cells.append(f"{flops / t_blas / 1e9:5.0f} / {flops / t_dnn / 1e9:4.0f}")
        print(f"{rows:>5} {d_in:>4} {d_out:>4}  " + ",  ".join(cells))


def group_counts(gen: torch.Generator, multiple: int) -> list[int]:
    share = torch.rand(EXPERTS, generator=gen) + 0.5
    counts = (share / share.sum() * SLOTS).long()
    counts[-1] += SLOTS - counts.sum()
    return [-(-int(c) // multiple) * multiple for c in counts]


def grouped(reps: int) -> None:
    gen = torch.Generator().manual_seed(0)
    experts = SwiGLUExperts(EXPERTS, DIM, HIDDEN)
    experts.init_weights(0.02, 0.01)

    def step(counts: list[int], kernel: str) -> None:
        x_SD = torch.randn(sum(counts), DIM, requires_grad=True)
        with matmul.using(kernel):  # blas: F.grouped_mm; onednn: _SwiGLUGroups
            y_SD = experts.forward_grouped(x_SD, counts)
        y_SD.backward(torch.ones_like(y_SD))
        experts.zero_grad()

    print(f"the experts (SwiGLU, three matmuls each), fwd + bwd, {SLOTS} slots over "
          f"{EXPERTS} experts (width {DIM}, hidden {HIDDEN}): blas grouped_mm / onednn per "
          "group, ms")
    fixed = group_counts(gen, 1)
    for label, sizes in (("sizes fixed", lambda: fixed),
                         ("sizes changing", lambda: group_counts(gen, 1)),
                         ("changing, rounded to 32", lambda: group_counts(gen, 32))):
        t_blas, t_dnn = [], []
        for _ in range(reps):
            counts = sizes()
            for kernel, times in (("blas", t_blas), ("onednn", t_dnn)):
                start = time.perf_counter()
                step(counts, kernel)
                times.append(time.perf_counter() - start)
        blas, dnn = statistics.median(t_blas) * 1e3, statistics.median(t_dnn) * 1e3
        print(f"  {label:<24} {blas:6.1f} / {dnn:6.1f}  (onednn/blas {dnn / blas:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    for flag in ("threads", "reps"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1 (got {getattr(args, flag)})")
    if not torch.backends.mkldnn.is_available():
        sys.exit("this torch was built without oneDNN: only blas can run here")
    torch.set_num_threads(args.threads)
    use_allocator("trainer")
    print(f"torch {torch.__version__}, cpu {torch.backends.cpu.get_cpu_capability()} "
          f"{matmul.cpu_vendor() or 'vendor unknown'}, {args.threads} thread(s); "
          f"cpu_matmul = auto picks {matmul.resolve('auto')} here")
    linears(args.reps)
    grouped(args.reps)


if __name__ == "__main__":
    main()
