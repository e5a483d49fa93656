"""Benchmark: routing latency of the 243-expert ternary router, one call and per sample.

243 experts, top-16, specialization_dim 128, load-aware (alpha 0.1, counters updated as
in training), flat vs hierarchical (16 clusters of 16, top 4). Batch 1 is timed twice: the
one-sample numpy path `route` takes for a single sample, and the batched torch path
(`_route_batch`, what batch 1 cost before the one-sample path existed), so the speed-up is
measured side by side; batch 64 uses the batched path. All cases run interleaved, `--reps`
rounds of `--iters` calls each, medians compared, so a slow moment of a shared machine
hits all of them. Timed with the thread's CPU time by default (robust to other tenants;
--clock wall for wall time).
Targets (issue 18 item 7): batch 1 <= 20 us per call for 243 experts top-16; batch 64 at
or below 3.6-4.3 us per sample (flat-hierarchical, measured on an idle machine before).
Seed 000 calls < 100 us per routing call healthy, > 500 us concerning.

    .venv/bin/python bench/ternary_route.py [--threads 1] [--reps 7] [--iters 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from moedesk.profiles.schema import TernarySection
from moedesk.train.ternary.router import TernaryRouter, random_trits

TOPOLOGIES = ("flat", "hierarchical")
# (topology, path, batch): path "one" = route() on one sample, "batch" = the batched path
CASES = [(t, path, batch) for t in TOPOLOGIES
         for path, batch in (("one", 1), ("batch", 1), ("batch", 64))]


def time_case(router: TernaryRouter, path: str, x_BW: torch.Tensor, iters: int, clock
              ) -> float:
    """Microseconds per sample over `iters` routing calls (= per call at batch 1)."""
    route = router.route if path == "one" else (lambda x: router._route_batch(x, True))
    start = clock()
    for _ in range(iters):
        route(x_BW)
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
    routers = {case: TernaryRouter(TernarySection(topology=case[0]), seed=0) for case in CASES}
    generator = torch.Generator().manual_seed(0)
    inputs = {batch: random_trits((batch, 128), generator) for batch in (1, 64)}
    for case in CASES:  # warm-up
        time_case(routers[case], case[1], inputs[case[2]], 20, clock)
    samples: dict[tuple, list[float]] = {case: [] for case in CASES}
    for _ in range(args.reps):
        for case in CASES:
            samples[case].append(time_case(routers[case], case[1], inputs[case[2]],
                                           args.iters, clock))
    us = {case: statistics.median(v) for case, v in samples.items()}
    print(f"243 experts, top-16, spec 128; {args.threads} thread(s), {args.clock} clock, "
          f"median of {args.reps} x {args.iters} calls")
    print(f"{'topology':>12}  {'batch 1, us/call':>16}  {'batched path at 1':>17}  "
          f"{'speed-up':>8}  {'batch 64, us/sample':>19}")
    for t in TOPOLOGIES:
        one, old, wide = us[(t, "one", 1)], us[(t, "batch", 1)], us[(t, "batch", 64)]
        print(f"{t:>12}  {one:>16.2f}  {old:>17.2f}  {old / one:>7.1f}x  {wide:>19.2f}")
    worst_one = max(us[(t, "one", 1)] for t in TOPOLOGIES)
    worst_wide = max(us[(t, "batch", 64)] for t in TOPOLOGIES)
    print(f"target batch 1 <= 20 us per call: {'met' if worst_one <= 20 else 'MISSED'} "
          f"(worst {worst_one:.2f}); batch 64 <= 4.3 us/sample: "
          f"{'met' if worst_wide <= 4.3 else 'MISSED'} (worst {worst_wide:.2f}); on a busy "
          "machine read the speed-up column")


if __name__ == "__main__":
    main()
