"""Benchmark: one top-2-of-8 MoE FFN vs the dense SwiGLU with the same active parameters.

Forward + backward (to the input and every weight) on the same tokens, in training mode
(router, aux and z losses, counting included), fp32 and bf16 autocast, at three sizes.
The two layers run interleaved, `--reps` rounds each, and the medians are compared, so
a slow moment of a shared machine hits both. Timed with the thread's CPU time by default
(robust to other tenants; use --clock wall for wall time). Target: MoE <= 1.15x in fp32.

`--against REV` also times the MoE layer as git revision REV had it (its moe.py and
experts.py, read with `git show`; every other module is today's) in the same rounds, with
the same weights, and prints the median of the rounds' ratios now/REV: a change to the
layer measured side by side with what it replaced.

    .venv/bin/python bench/moe_layer.py [--threads 1] [--reps 7] [--clock cpu|wall]
        [--precision fp32|bf16|both] [--allocator trainer|glibc] [--floor] [--against REV]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from functools import partial
from pathlib import Path

import torch

from moedesk.profiles.schema import CPU_MATMULS, MoESection
from moedesk.train import matmul
from moedesk.train.kernel_floor import record
from moedesk.train.model import SwiGLU
from moedesk.train.moe import MoEFFN
from moedesk.train.system import ALLOCATOR_HELP, ALLOCATORS, use_allocator

REPO = Path(__file__).resolve().parents[1]
# (tokens, dim, dense hidden): each expert gets hidden / 2, top-2 of 8; 2048x256 is the
# shipped top2 profile's layer (16x128 tokens)
SIZES = [(512, 256, 704), (2048, 128, 352), (2048, 256, 704), (4096, 256, 704),
         (4096, 512, 1376)]


def make_layers(dim: int, hidden: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    dense = SwiGLU(dim, hidden)
    dense.init_weights(0.02, 0.01)
    cfg = MoESection(num_experts=8, top_k=2, aux_loss_weight=0.01, z_loss_weight=0.001)
    moe = MoEFFN(dim, hidden // 2, cfg)
    moe.init_weights(0.02, 0.01)
    return dense, moe


def moe_class_at(rev: str) -> type:
    """`MoEFFN` as revision `rev` had it, beside today's (its two files loaded as modules)."""
    def source(path: str) -> str:
        try:
            return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, check=True,
                                  capture_output=True, text=True).stdout
        except (OSError, subprocess.CalledProcessError) as err:
            detail = (getattr(err, "stderr", "") or str(err)).strip()
            raise SystemExit(f"--against {rev}: cannot read {path} there: {detail}") from None

    def load(name: str, code: str) -> types.ModuleType:
        module = types.ModuleType(name)
        sys.modules[name] = module
        try:
            exec(compile(code, f"{rev}:{name}", "exec"), module.__dict__)
        except Exception as err:  # noqa: BLE001 - any failure of old code is the message
            raise SystemExit(f"--against {rev}: its {name.split('_at_')[0]}.py does not load "
                             f"beside today's modules: {type(err).__name__}: {err}") from None
        return module

    tag = "".join(c if c.isalnum() else "_" for c in rev)
    experts = load(f"experts_at_{tag}", source("moedesk/train/experts.py"))
    moe = load(f"moe_at_{tag}", source("moedesk/train/moe.py").replace(
        "from moedesk.train.experts import", f"from {experts.__name__} import"))
    return moe.MoEFFN


def step(layer: torch.nn.Module, x_BTD: torch.Tensor, bf16: bool, clock) -> float:
    x = x_BTD.detach().requires_grad_(True)
    start = clock()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = layer(x)
        loss = y.float().square().mean()
        if hasattr(layer, "aux_loss"):  # an MoE layer, today's or --against's
            loss = loss + layer.aux_loss + layer.z_loss
    loss.backward()
    elapsed = clock() - start
    layer.zero_grad(set_to_none=True)
    if hasattr(layer, "update_bias"):
        layer.update_bias()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16", "both"), default="both")
    parser.add_argument("--allocator", choices=ALLOCATORS, default="trainer", help=ALLOCATOR_HELP)
    parser.add_argument("--cpu-matmul", choices=CPU_MATMULS, default="auto",
                        help="moedesk's fp32 CPU matmul kernel ([train] cpu_matmul)")
    parser.add_argument("--floor", action="store_true",
                        help="also each layer's kernel floor (its matmuls alone, "
                             "moedesk/train/kernel_floor.py) and their ratio")
    parser.add_argument("--against", metavar="REV",
                        help="also the MoE layer at git revision REV, and now/REV")
    args = parser.parse_args()
    old_moe = moe_class_at(args.against) if args.against else None
    torch.set_num_threads(args.threads)
    use_allocator(args.allocator)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    if args.clock == "cpu" and args.threads > 1:
        print("note: --clock cpu counts only the calling thread; use --clock wall")
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.clock} clock, "
          f"median of {args.reps} interleaved rounds, fwd+bwd; E=8, K=2; fp32 CPU matmuls "
          f"on {matmul.set_kernel(args.cpu_matmul)}")
    print(f"{'precision':>9} {'T':>5} {'D':>4} {'F dense':>7} {'dense ms':>9} {'moe ms':>8} "
          f"{'moe/dense':>9}" + ("  floors: dense ms  moe ms  moe/dense" if args.floor else "")
          + (f"  {args.against[:12]:>12} ms  now/then" if old_moe else ""))
    for bf16 in {"fp32": [False], "bf16": [True], "both": [False, True]}[args.precision]:
        for tokens, dim, hidden in SIZES:
            dense, moe = make_layers(dim, hidden)
            then = None
            if old_moe is not None:  # the same weights and bias in the old code
                then = old_moe(dim, hidden // 2, moe.cfg)
                then.load_state_dict(moe.state_dict())
            x_BTD = torch.randn(tokens // 256, 256, dim)
            for layer in (dense, moe, then):  # warm-up: allocator, autocast weight casts
                if layer is not None:
                    step(layer, x_BTD, bf16, clock)
            floors = {}
            if args.floor:  # one more (recorded) step each
                floors = {name: record(partial(step, layer, x_BTD, bf16, clock))
                          for name, layer in (("dense", dense), ("moe", moe))}
            times: dict[str, list[float]] = {"dense": [], "moe": [], "dense floor": [],
                                             "moe floor": [], "then": []}
            for _ in range(args.reps):
                times["dense"].append(step(dense, x_BTD, bf16, clock))
                times["moe"].append(step(moe, x_BTD, bf16, clock))
                if then is not None:
                    times["then"].append(step(then, x_BTD, bf16, clock))
                for name, floor in floors.items():
                    times[f"{name} floor"].append(floor.replay(clock=clock))
            ms = {name: 1e3 * statistics.median(v) for name, v in times.items() if v}
            line = (f"{'bf16' if bf16 else 'fp32':>9} {tokens:>5} {dim:>4} {hidden:>7} "
                    f"{ms['dense']:>9.1f} {ms['moe']:>8.1f} {ms['moe'] / ms['dense']:>8.2f}x")
            if floors:
                line += (f"  {ms['dense floor']:>15.1f} {ms['moe floor']:>7.1f} "
                         f"{ms['moe floor'] / ms['dense floor']:>8.2f}x")
            if then is not None:
                ratio = statistics.median(a / b for a, b in zip(times["moe"], times["then"],
                                                                strict=True))
                line += f"  {ms['then']:>15.1f} {ratio:>8.3f}x"
            print(line)


if __name__ == "__main__":
    main()
