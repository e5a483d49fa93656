"""Benchmark: one whole training step of the top-2 MoE LM vs the dense LM it is built from.

Both models come from the shipped profiles (profiles/top2.toml and profiles/dense.toml:
same data, width, depth and active parameters). A step is what the training loop does:
forward, LM loss + routing losses, backward, gradient clip, AdamW step, the telemetry
window's per-step call, bias update (a logged step's read-back is not timed).
Steps alternate between the two models and the medians are compared. Target: <= 1.2x.

    .venv/bin/python bench/train_step.py [--reps 7] [--threads 1] [--batch 16]
        [--clock cpu|wall] [--precision fp32|bf16|both]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from moedesk.profiles import load_profile
from moedesk.train.loop import build_model
from moedesk.train.moe_telemetry import MoETelemetry
from moedesk.train.optim import build_optimizer

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16,
                        help="sequences per step (x 128 tokens; 16 as in the profiles)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16", "both"), default="both")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    runs = {"dense": make("dense", args.batch), "top2": make("top2", args.batch)}
    seq_len = runs["dense"][0].data.seq_len
    gen = torch.Generator().manual_seed(0)
    x_BT = torch.randint(0, 256, (args.batch, seq_len), generator=gen)
    y_BT = torch.randint(0, 256, (args.batch, seq_len), generator=gen)
    precisions = {"fp32": [False], "bf16": [True], "both": [False, True]}[args.precision]
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.clock} clock, "
          f"{args.batch}x{seq_len} tokens, median of {args.reps} interleaved steps")
    for name, (_, model, _, _) in runs.items():
        print(f"  {name}: {model.num_params():,} parameters, {model.num_active_params():,} active")
    for bf16 in precisions:
        times: dict[str, list[float]] = {name: [] for name in runs}
        for rep in range(args.reps + 1):  # the first round warms up and is dropped
            for name, (profile, model, optimizer, telemetry) in runs.items():
                elapsed = train_step(model, optimizer, telemetry, x_BT, y_BT, bf16,
                                     profile.train.grad_clip, clock)
                if rep:
                    times[name].append(elapsed)
        dense_ms = 1e3 * statistics.median(times["dense"])
        top2_ms = 1e3 * statistics.median(times["top2"])
        print(f"{'bf16' if bf16 else 'fp32'}: dense {dense_ms:.0f} ms/step, "
              f"top2 {top2_ms:.0f} ms/step, top2/dense {top2_ms / dense_ms:.2f}x")


if __name__ == "__main__":
    main()
