"""Benchmark: routing latency of the 243-expert ternary router, per sample.

243 experts, top-16, specialization_dim 128, load-aware (alpha 0.1, counters updated as
in training), flat vs hierarchical (16 clusters of 16, top 4), batch 1 vs 64. The four
cases run interleaved, `--reps` rounds of `--iters` calls each, and the medians are
compared, so a slow moment of a shared machine hits all of them. Timed with the
thread's CPU time by default (robust to other tenants; --clock wall for wall time).
Target (issue): <= 10 us per sample at batch 64; seed 000 calls < 100 us healthy.

    .venv/bin/python bench/ternary_route.py [--threads 1] [--reps 7] [--iters 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from moedesk.profiles.schema import TernarySection
from moedesk.train.ternary.router import TernaryRouter, random_trits

CASES = [(topology, batch) for batch in (1, 64) for topology in ("flat", "hierarchical")]


def time_case(router: TernaryRouter, x_BW: torch.Tensor, iters: int, clock) -> float:
    """Microseconds per sample over `iters` route() calls."""
    start = clock()
    for _ in range(iters):
        router.route(x_BW)
    return 1e6 * (clock() - start) / (iters * x_BW.shape[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    routers = {topology: TernaryRouter(TernarySection(topology=topology), seed=0)
               for topology in ("flat", "hierarchical")}
    generator = torch.Generator().manual_seed(0)
    inputs = {batch: random_trits((batch, 128), generator) for batch in (1, 64)}
    for topology, batch in CASES:  # warm-up
        time_case(routers[topology], inputs[batch], 20, clock)
    samples: dict[tuple[str, int], list[float]] = {case: [] for case in CASES}
    for _ in range(args.reps):
        for topology, batch in CASES:
            samples[(topology, batch)].append(
                time_case(routers[topology], inputs[batch], args.iters, clock))
    us = {case: statistics.median(v) for case, v in samples.items()}
    print(f"243 experts, top-16, spec 128; {args.threads} thread(s), {args.clock} clock, "
          f"median of {args.reps} x {args.iters} calls")
    print(f"{'batch':>5}  {'flat us/sample':>15}  {'hierarchical':>13}  {'hier/flat':>9}")
    for batch in (1, 64):
        flat, hier = us[("flat", batch)], us[("hierarchical", batch)]
        print(f"{batch:>5}  {flat:>15.2f}  {hier:>13.2f}  {hier / flat:>9.2f}")
    for topology in ("flat", "hierarchical"):
        ratio = us[(topology, 1)] / us[(topology, 64)]
        print(f"{topology}: batch 64 is {ratio:.1f}x cheaper per sample than batch 1")
    worst = max(us[(t, 64)] for t in ("flat", "hierarchical"))
    print(f"target <= 10 us/sample at batch 64: {'met' if worst <= 10 else 'MISSED'} "
          f"(worst {worst:.2f})")


if __name__ == "__main__":
    main()
