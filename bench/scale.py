"""Benchmark: the top-k MoE LM on 1 process x 2 threads, 2 processes data parallel x 1
thread and 2 processes expert parallel x 1 thread, on the same global batch (and 1 process
x 1 thread as the reference: one rank's share of the CPUs).

Each configuration is a real launch (torchrun for the two-process ones, gloo) of this
file's worker, which builds the run exactly as the trainer does (`DistContext`, expert
sharding, DDP, the sharded data stream) and times the training step the LM loop takes
(micro-batches, backward, expert gradients, clip, AdamW, expert-count all-reduce, bias
update, the per-step stop agreement). The three run in turn, round after round
(interleaved), and the medians over rounds are compared.

Communication share: rank 0 also times every collective it blocks in (the all-to-alls,
counts, all-reduces of the dispatcher and the loop) and DDP's gradient all-reduce buckets
(a comm hook timing each bucket from launch to completion, overlapped with the
backward); the share is that time over the step time.

    .venv/bin/python bench/scale.py [--profile profiles/top2.toml] [--batch 16]
        [--steps 8] [--warmup 3] [--rounds 3] [--bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODES = {  # name: (processes, threads per process, expert_parallel)
    "1 process x 2 threads": (1, 2, 1),
    "1 process x 1 thread": (1, 1, 1),  # the reference: what one rank's share of the CPUs does
    "2 processes DP x 1 thread": (2, 1, 1),
    "2 processes EP x 1 thread": (2, 1, 2),
}


# ---- the worker: one launch of one configuration ----------------------------------------
class CommClock:
    """Seconds rank 0 spends in blocking collectives, and in DDP's bucket all-reduces."""

    def __init__(self):
        self.blocking = 0.0
        self.buckets = 0.0

    def wrap(self, module, name: str) -> None:
        original = getattr(module, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.blocking += time.perf_counter() - start
        setattr(module, name, timed)

    def ddp_hook(self, _state, bucket):
        from torch.distributed import distributed_c10d as c10d  # not the timed wrapper

        start = time.perf_counter()
        fut = c10d.all_reduce(bucket.buffer(), async_op=True).get_future()

        def done(f):
            self.buckets += time.perf_counter() - start
            return f.value()[0].div_(c10d.get_world_size())
        return fut.then(done)


def worker(args) -> None:
    import torch
    import torch.distributed as tdist

    from moedesk.profiles import load_profile
    from moedesk.train.data import LMData
    from moedesk.train.distributed import DistContext
    from moedesk.train.loop import build_model
    from moedesk.train.moe_telemetry import MoETelemetry
    from moedesk.train.optim import build_optimizer, set_lr
    from moedesk.train.system import seed_everything

    world = int(os.environ.get("WORLD_SIZE", "1"))
    profile = load_profile(args.profile, {
        "train.batch_size": args.batch // world, "train.nproc_per_node": world,
        "train.threads": args.threads, "moe.expert_parallel": args.ep,
        "train.bf16": args.bf16})
    dist = DistContext.from_env(profile)
    if not dist.enabled:
        torch.set_num_threads(args.threads)
    clock = CommClock()
    for name in ("all_to_all_single", "all_reduce", "broadcast_object_list"):
        clock.wrap(tdist, name)
    seed_everything(profile.seed)
    model = build_model(profile)
    dist.shard(model, profile.moe.expert_parallel)
    net = dist.wrap(model)
    if dist.enabled:
        net.register_comm_hook(None, clock.ddp_hook)
    optimizer = build_optimizer(model, profile.train)
    set_lr(optimizer, profile.train.lr)
    telemetry = MoETelemetry(model)
    data = LMData(profile.data, profile.seed, profile.train.batch_size,
                  profile.model.vocab_size, rank=dist.rank, world=dist.world)
    params = [p for p in model.parameters() if p.requires_grad]
    tc = profile.train

    def step() -> None:
        for micro in range(tc.grad_accum):
            x_BT, y_BT = data.train_batch()
            with dist.sync(net, last=micro == tc.grad_accum - 1):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=tc.bf16):
                    _, loss = net(x_BT, y_BT)
                extra = model.extra_loss()
                ((loss if extra is None else loss + extra) / tc.grad_accum).backward()
        dist.finish_grads()
        dist.clip_grad_norm_(params, tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        dist.reduce_expert_counts(telemetry.ffns)
        telemetry.after_step()
        model.after_optimizer_step()
        dist.any_rank(False)

    steps, blocking, buckets = [], [], []
    for i in range(args.warmup + args.steps):
        clock.blocking = clock.buckets = 0.0
        start = time.perf_counter()
        step()
        if i >= args.warmup:
            steps.append(time.perf_counter() - start)
            blocking.append(clock.blocking)
            buckets.append(clock.buckets)
    if dist.is_main:
        tokens = args.batch * tc.grad_accum * profile.data.seq_len
        step_s = statistics.median(steps)
        print("RESULT " + json.dumps({
            "tokens_per_s": tokens / step_s, "step_s": step_s,
            "blocking_s": statistics.median(blocking), "buckets_s": statistics.median(buckets),
            "params": sum(p.numel() for p in model.parameters()),
            "threads": torch.get_num_threads(), "world": dist.world}), flush=True)
    dist.close()


# ---- the driver: interleaved launches ----------------------------------------------------
def launch(mode: str, args) -> dict:
    procs, threads, ep = MODES[mode]
    worker_args = [str(Path(__file__).resolve()), "--worker", "--profile", str(args.profile),
                   "--batch", str(args.batch), "--steps", str(args.steps), "--warmup",
                   str(args.warmup), "--threads", str(threads), "--ep", str(ep)]
    if args.bf16:
        worker_args.append("--bf16")
    if procs == 1:
        cmd = [sys.executable, *worker_args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={procs}", "--max-restarts=0", *worker_args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=1800)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"{mode} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, default=REPO / "profiles" / "top2.toml")
    parser.add_argument("--batch", type=int, default=16, help="global sequences per step")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per launch")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--ep", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
          f"{args.profile.name}, global batch {args.batch} sequences, "
          f"{'bf16' if args.bf16 else 'fp32'}; median of {args.steps} steps after "
          f"{args.warmup}, {args.rounds} interleaved rounds")
    results: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for rnd in range(args.rounds):
        for mode in MODES:
            results[mode].append(launch(mode, args))
            r = results[mode][-1]
            print(f"  round {rnd + 1} {mode}: {r['tokens_per_s']:,.0f} tokens/s", flush=True)
    base = statistics.median(r["tokens_per_s"] for r in results[next(iter(MODES))])
    print(f"{'configuration':28s} {'tokens/s':>10s} {'vs 1x2':>7s} {'step ms':>8s} "
          f"{'blocking comm':>14s} {'DDP buckets':>12s}")
    for mode, runs in results.items():
        tps = statistics.median(r["tokens_per_s"] for r in runs)
        step_s = statistics.median(r["step_s"] for r in runs)
        blocking = statistics.median(r["blocking_s"] / r["step_s"] for r in runs)
        buckets = statistics.median(r["buckets_s"] / r["step_s"] for r in runs)
        print(f"{mode:28s} {tps:10,.0f} {tps / base:6.2f}x {1000 * step_s:8.1f} "
              f"{100 * blocking:13.1f}% {100 * buckets:11.1f}%")
    print("blocking comm: rank 0's time inside collectives (all-to-alls, counts, stop flag, "
          "norm), share of the step;\nDDP buckets: gradient all-reduce from launch to "
          "completion, overlapped with the backward (EP: experts excluded)")


if __name__ == "__main__":
    main()
