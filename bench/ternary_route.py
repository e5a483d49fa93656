"""Benchmark: routing latency of the 243-expert ternary router, one call and per sample.

243 experts, top-16, specialization_dim 128, load-aware (alpha 0.1, counters updated as
in training), flat vs hierarchical (16 clusters of 16, top 4), batch 1 (`route` takes the
one-sample numpy path) and 64 (the batched torch path). Beside each, the same calls on
`PreviousRouter`, a frozen copy of the routing code before the one-sample path (float32
penalties, the cluster penalty as a matmul, torch at every batch size), so "before" and
"now" are measured side by side on the same machine at the same moment. All cases run
interleaved, `--reps` rounds of `--iters` calls each, medians compared, so a slow moment
of a shared machine hits all of them. Timed with the thread's CPU time by default (robust to other tenants;
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
from moedesk.train.ternary.router import TernaryRouter, random_trits, top_k_stable

TOPOLOGIES = ("flat", "hierarchical")
# (topology, code, batch): code "now" = TernaryRouter.route, "before" = PreviousRouter.route
CASES = [(t, code, batch) for t in TOPOLOGIES for batch in (1, 64) for code in ("now", "before")]


class PreviousRouter(TernaryRouter):
    """The routing calls as they were before the one-sample path (commit fc6ec3f), kept
    only to time them; the choices equal the current ones up to the penalty rounding."""

    def __init__(self, cfg: TernarySection, seed: int):
        super().__init__(cfg, seed)
        members_CE = (self.cluster_of_E.unsqueeze(0) == torch.arange(self.num_clusters)
                      .unsqueeze(1)).float()
        self.member_mean_EC = (members_CE / members_CE.sum(1, keepdim=True)).t().contiguous()
        self.no_penalty_E = torch.zeros(self.num_experts)

    def previous_penalty_E(self) -> torch.Tensor:
        total = float(self.counts_E.sum())
        if self.alpha == 0 or total == 0:
            return self.no_penalty_E
        load = self.counts_E / (total / self.num_experts)
        return (self.alpha * self.score_std * (load - 1.0)).float()

    def route(self, x_BW: torch.Tensor, update: bool = True) -> torch.Tensor:
        x_BR = self._inputs(x_BW)
        penalty_E = self.previous_penalty_E()
        scores_BE = x_BR @ self.spec_t_RE - penalty_E
        allowed_BE = None
        if self.hierarchical:
            cluster_scores_BC = x_BR @ self.centroid_t_RC - penalty_E @ self.member_mean_EC
            clusters_BA = top_k_stable(cluster_scores_BC, self.active_clusters)
            chosen_BC = torch.zeros(x_BR.shape[0], self.num_clusters, dtype=torch.bool)
            chosen_BC.scatter_(1, clusters_BA, True)
            allowed_BE = chosen_BC[:, self.cluster_of_E]
        experts_BK = top_k_stable(scores_BE, self.top_k, allowed_BE)
        if update:
            self.record(experts_BK)
        return experts_BK


def time_case(router: TernaryRouter, x_BW: torch.Tensor, iters: int, clock) -> float:
    """Microseconds per sample over `iters` routing calls (= per call at batch 1)."""
    route = router.route
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
    kinds = {"now": TernaryRouter, "before": PreviousRouter}
    routers = {case: kinds[case[1]](TernarySection(topology=case[0]), seed=0) for case in CASES}
    generator = torch.Generator().manual_seed(0)
    inputs = {batch: random_trits((batch, 128), generator) for batch in (1, 64)}
    for case in CASES:  # warm-up
        time_case(routers[case], inputs[case[2]], 20, clock)
    samples: dict[tuple, list[float]] = {case: [] for case in CASES}
    for _ in range(args.reps):
        for case in CASES:
            samples[case].append(time_case(routers[case], inputs[case[2]], args.iters, clock))
    us = {case: statistics.median(v) for case, v in samples.items()}
    print(f"243 experts, top-16, spec 128; {args.threads} thread(s), {args.clock} clock, "
          f"median of {args.reps} x {args.iters} calls; us per call at batch 1, per sample "
          "at 64")
    print(f"{'topology':>12}  {'batch':>5}  {'now':>8}  {'before':>8}  {'before/now':>10}")
    for t in TOPOLOGIES:
        for batch in (1, 64):
            now, before = us[(t, "now", batch)], us[(t, "before", batch)]
            print(f"{t:>12}  {batch:>5}  {now:>8.2f}  {before:>8.2f}  {before / now:>9.2f}x")
    worst_one = max(us[(t, "now", 1)] for t in TOPOLOGIES)
    worst_wide = max(us[(t, "now", 64)] / us[(t, "before", 64)] for t in TOPOLOGIES)
    print(f"batch 1 <= 20 us per call: {'met' if worst_one <= 20 else 'MISSED'} (worst "
          f"{worst_one:.2f} us; an idle machine's 'before' was 41 / 69 us, so on a busy one "
          f"read 41 / before-now and 69 / before-now); batch 64 no slower than before "
          f"(5% noise allowed): {'met' if worst_wide <= 1.05 else 'MISSED'} (worst now/before "
          f"{worst_wide:.2f})")


if __name__ == "__main__":
    main()
