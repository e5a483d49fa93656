"""Benchmark: one whole training step of the top-2 MoE LM vs the dense LM it is built from.

Both models come from the shipped profiles (profiles/top2.toml and profiles/dense.toml:
same data, width, depth and active parameters). A step is what the training loop does:
forward, LM loss + routing losses, backward, gradient clip, AdamW step, the telemetry
window's per-step call, bias update (a logged step's read-back is not timed).
Steps alternate between the two models and the medians are compared. Target: <= 1.2x.

    .venv/bin/python bench/train_step.py [--reps 7] [--threads 1] [--batch 16]
        [--clock cpu|wall] [--precision fp32|bf16|both] [--allocator trainer|glibc]
        [--floor]

`--floor` adds each model's kernel floor (moedesk/train/kernel_floor.py: its matmuls and
attention kernels replayed alone, interleaved with the steps) and top2's floor / dense's:
how much of top2's excess is in the kernels themselves.

Two more comparisons of the same step, each model against itself:
    --mode compile   `[train] compile` (blocks under torch.compile) vs eager, per profile:
                     the first compiled step's time (compiling) apart, then the median of
                     per-iteration ratios compiled/eager, interleaved, and the loss gap
    --mode memory    `[train] activation_checkpointing` off/on, each in a fresh process
                     (peak resident memory is per process): peak RSS growth over the
                     built model during the steps, and the median step time
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch

from moedesk.profiles import load_profile
from moedesk.profiles.schema import CPU_MATMULS
from moedesk.train import matmul
from moedesk.train.kernel_floor import record
from moedesk.train.loop import build_model
from moedesk.train.moe_telemetry import MoETelemetry
from moedesk.train.optim import build_optimizer
from moedesk.train.system import ALLOCATOR_HELP, ALLOCATORS, use_allocator

PROFILES = Path(__file__).resolve().parent.parent / "profiles"


def make(name: str, batch: int):
    profile = load_profile(PROFILES / f"{name}.toml", {"train.batch_size": batch})
    torch.manual_seed(0)
    model = build_model(profile)
    model.train()
    return profile, model, build_optimizer(model, profile.train), MoETelemetry(model)


def train_step(model, optimizer, telemetry, x_BT, y_BT, bf16: bool, clip: float,
               clock) -> float:
    start = clock()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        _, loss = model(x_BT, y_BT)
    extra = model.extra_loss()
    (loss if extra is None else loss + extra).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    telemetry.after_step()
    model.after_optimizer_step()
    return clock() - start


def compare_compile(args, clock) -> None:
    """Compiled blocks against the same model eager, from equal weights on equal batches."""
    from moedesk.train.speed import prepare_model
    print(f"torch.compile vs eager, fp32, {args.threads} thread(s), {args.batch}x128 tokens, "
          f"median of {args.reps} interleaved per-iteration ratios")
    gen = torch.Generator().manual_seed(0)
    x_BT = torch.randint(0, 256, (args.batch, 128), generator=gen)
    y_BT = torch.randint(0, 256, (args.batch, 128), generator=gen)
    for name in ("dense", "top2"):
        profile, eager, _, _ = make(name, args.batch)
        compiled = copy.deepcopy(eager)
        prepare_model(compiled, load_profile(PROFILES / f"{name}.toml",
                                             {"train.compile": True}).train)
        sides = {m: (m, build_optimizer(m, profile.train), MoETelemetry(m))
                 for m in (eager, compiled)}
        first = train_step(*sides[compiled], x_BT, y_BT, False, profile.train.grad_clip,
                           time.perf_counter)
        train_step(*sides[eager], x_BT, y_BT, False, profile.train.grad_clip, clock)
        ratios = []
        for _ in range(args.reps):
            t_c = train_step(*sides[compiled], x_BT, y_BT, False, profile.train.grad_clip, clock)
            t_e = train_step(*sides[eager], x_BT, y_BT, False, profile.train.grad_clip, clock)
            ratios.append(t_c / t_e)
        with torch.no_grad():
            gap = (compiled(x_BT, y_BT)[1] - eager(x_BT, y_BT)[1]).abs().item()
        print(f"  {name}: first compiled step {first:.1f} s (compiling), compiled/eager "
              f"{statistics.median(ratios):.2f}x, |loss gap| after {args.reps + 1} steps "
              f"{gap:.2e}")


def memory_child(name: str, batch: int, recompute: bool, steps: int) -> dict:
    """One process: build, then one warm-up step and `steps` timed ones; peak RSS growth
    over the built model."""
    overrides = {"train.batch_size": batch, "train.activation_checkpointing": recompute}
    profile = load_profile(PROFILES / f"{name}.toml", overrides)
    torch.manual_seed(0)
    model = build_model(profile)
    from moedesk.train.speed import prepare_model
    prepare_model(model, profile.train)
    model.train()
    optimizer, telemetry = build_optimizer(model, profile.train), MoETelemetry(model)
    gen = torch.Generator().manual_seed(0)
    x_BT = torch.randint(0, 256, (batch, 128), generator=gen)
    y_BT = torch.randint(0, 256, (batch, 128), generator=gen)
    from moedesk.train.system import rss_mb
    before = rss_mb()
    times = [train_step(model, optimizer, telemetry, x_BT, y_BT, False,
                        profile.train.grad_clip, time.perf_counter) for _ in range(steps + 1)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_growth_mb": peak - before, "step_s": statistics.median(times[1:])}


def compare_memory(args) -> None:
    print(f"activation checkpointing, fp32, {args.threads} thread(s), {args.batch}x128 tokens, "
          f"fresh process per setting, median of {args.reps} steps after one")
    for name in ("dense", "top2"):
        got = {}
        for recompute in (False, True):
            out = subprocess.run([sys.executable, __file__, "--memory-child", name,
                                  "--batch", str(args.batch), "--reps", str(args.reps),
                                  "--threads", str(args.threads), "--allocator", args.allocator,
                                  "--cpu-matmul", args.cpu_matmul]
                                 + (["--recompute"] if recompute else []),
                                 capture_output=True, text=True, check=True)
            got[recompute] = json.loads(out.stdout.strip().splitlines()[-1])
        off, on = got[False], got[True]
        print(f"  {name}: peak memory over the model {off['peak_growth_mb']:.0f} -> "
              f"{on['peak_growth_mb']:.0f} MB ({on['peak_growth_mb'] / off['peak_growth_mb']:.2f}x), "
              f"step {1e3 * off['step_s']:.0f} -> {1e3 * on['step_s']:.0f} ms "
              f"({on['step_s'] / off['step_s']:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("step", "compile", "memory"), default="step")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--recompute", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16,
                        help="sequences per step (x 128 tokens; 16 as in the profiles)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16", "both"), default="both")
    parser.add_argument("--allocator", choices=ALLOCATORS, default="trainer", help=ALLOCATOR_HELP)
    parser.add_argument("--cpu-matmul", choices=CPU_MATMULS, default="auto",
                        help="moedesk's fp32 CPU matmul kernel ([train] cpu_matmul)")
    parser.add_argument("--floor", action="store_true",
                        help="also each model's kernel floor and their ratio (step mode)")
    args = parser.parse_args()
    for flag in ("reps", "threads", "batch"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1 (got {getattr(args, flag)})")
    torch.set_num_threads(args.threads)
    use_allocator(args.allocator)
    kernel = matmul.set_kernel(args.cpu_matmul)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.batch, args.recompute, args.reps)))
        return
    if args.mode == "compile":
        return compare_compile(args, clock)
    if args.mode == "memory":
        return compare_memory(args)
    runs = {"dense": make("dense", args.batch), "top2": make("top2", args.batch)}
    seq_len = runs["dense"][0].data.seq_len
    gen = torch.Generator().manual_seed(0)
    x_BT = torch.randint(0, 256, (args.batch, seq_len), generator=gen)
    y_BT = torch.randint(0, 256, (args.batch, seq_len), generator=gen)
    precisions = {"fp32": [False], "bf16": [True], "both": [False, True]}[args.precision]
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.clock} clock, "
          f"{args.batch}x{seq_len} tokens, median of {args.reps} interleaved steps, "
          f"fp32 CPU matmuls on {kernel}")
    for name, (_, model, _, _) in runs.items():
        print(f"  {name}: {model.num_params():,} parameters, {model.num_active_params():,} active")
    for bf16 in precisions:
        times: dict[str, list[float]] = {name: [] for name in runs}
        floors = {}
        for rep in range(args.reps + 1):  # the first round warms up and is dropped
            if args.floor and rep == 1:  # one more (recorded) step each, after the warm-up
                floors = {name: record(partial(train_step, model, optimizer, telemetry, x_BT,
                                               y_BT, bf16, profile.train.grad_clip, clock))
                          for name, (profile, model, optimizer, telemetry) in runs.items()}
            for name, (profile, model, optimizer, telemetry) in runs.items():
                elapsed = train_step(model, optimizer, telemetry, x_BT, y_BT, bf16,
                                     profile.train.grad_clip, clock)
                if rep:
                    times[name].append(elapsed)
                    if floors:
                        times.setdefault(f"{name} floor", []).append(
                            floors[name].replay(clock=clock))
        ms = {name: 1e3 * statistics.median(v) for name, v in times.items()}
        line = (f"{'bf16' if bf16 else 'fp32'}: dense {ms['dense']:.0f} ms/step, "
                f"top2 {ms['top2']:.0f} ms/step, top2/dense {ms['top2'] / ms['dense']:.2f}x")
        if floors:
            line += (f"; floors dense {ms['dense floor']:.0f} ms, top2 {ms['top2 floor']:.0f} ms, "
                     f"top2/dense {ms['top2 floor'] / ms['dense floor']:.2f}x")
        print(line)


if __name__ == "__main__":
    main()
