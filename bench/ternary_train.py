"""Benchmark: the default ternary profile's throughput, and what it learns per negative generator.

`throughput`: times `TernaryMoE.train_step` (route, negatives, grouped forward of pos and
neg through the routed experts, Hebbian update, threshold step) on real grammar batches,
for the contrastive (default) and the documented reference rule, at 1 and 2 torch
threads. Cases run interleaved, `--reps` rounds of `--steps` steps each, medians compared,
wall clock (threads > 1 make CPU time misleading); a phase breakdown of the default case
follows, timed the same way.

`accuracy`: for each negative generator (`ternary.negatives`), the held-out FF accuracy of
the non-learned scorers of `moedesk.train.ternary.baselines` (mean-trit template,
per-position trit frequencies, a position-specific trit bigram; and, as a reference that
is told the byte boundaries, a byte bigram) beside the model of profiles/ternary243.toml
trained `--train-steps` steps, over `--seeds` (mean ± sample std). Seed s trains with
seed s and draws the held-out negatives from seed s, so every column is measured on the
same pairs and each has a spread. One thread; about 15-25 minutes for the default
4 generators x 3 seeds x 300 steps on a 2-core machine.

    .venv/bin/python bench/ternary_train.py [all|throughput|accuracy] [--reps 5] [--steps 10]
        [--train-steps 300] [--seeds 1 2 3] [--negatives corrupt hybrid shuffle shuffle_words]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from moedesk.profiles import load_profile, parse_overrides
from moedesk.train.ternary.baselines import BASELINES, Baselines
from moedesk.train.ternary.batches import EpochBatches
from moedesk.train.ternary.data import eval_set, load_data, load_samples, run_symbols
from moedesk.train.ternary.model import TernaryMoE
from moedesk.train.ternary.negatives import NEGATIVES

PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "ternary243.toml"
CASES = [("contrastive", 1), ("contrastive", 2), ("reference", 1), ("reference", 2)]


def samples_per_s(model: TernaryMoE, batches: EpochBatches, steps: int, threads: int) -> float:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    samples = 0
    for _ in range(steps):
        x_BW, _ = batches.next_batch()
        model.train_step(x_BW)
        samples += len(x_BW)
    return samples / (time.perf_counter() - start)


def phase_breakdown(model: TernaryMoE, batches: EpochBatches, steps: int) -> dict[str, float]:
    """Milliseconds per step of each phase of the default step (as `train_step` runs them,
    with the profile's specialization learning), one thread."""
    torch.set_num_threads(1)
    cfg = model.cfg
    spent = {"route": 0.0, "specializations": 0.0, "negatives": 0.0, "forward": 0.0,
             "update": 0.0, "thresholds": 0.0}
    for _ in range(steps):
        x_BW, _ = batches.next_batch()
        t0 = time.perf_counter()
        experts_BK = model.router.route(x_BW)
        t1 = time.perf_counter()
        if cfg.specialization_learning > 0:
            model.router.learn(x_BW, experts_BK, cfg.specialization_learning, model.generator)
        t2 = time.perf_counter()
        x_neg_BW = model.negatives(x_BW)
        t3 = time.perf_counter()
        fwd = model.bank.forward_pairs(*model._pairs(x_BW, x_neg_BW, experts_BK))
        t4 = time.perf_counter()
        model.bank.update_contrastive(fwd, cfg.update_fraction, cfg.margin, model.generator)
        t5 = time.perf_counter()
        model.bank.adapt_thresholds(fwd, cfg.target_activity)
        t6 = time.perf_counter()
        times = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)
        for name, dt in zip(spent, times, strict=True):
            spent[name] += dt
    return {name: 1e3 * total / steps for name, total in spent.items()}


def train_and_score(profile, train: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                    steps: int) -> float:
    """Held-out FF accuracy of the profile's model after `steps` steps, one thread."""
    torch.set_num_threads(1)
    model = TernaryMoE(profile)
    batches = EpochBatches(train, profile.train.batch_size, profile.seed)
    for _ in range(steps):
        model.train_step(batches.next_batch()[0])
    return model.evaluate(pos, neg, profile.train.batch_size).accuracy


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def accuracy_table(negatives: list[str], seeds: list[int], steps: int) -> None:
    """Per generator: the non-learned scorers and the trained model on the same held-out
    pairs, over `seeds` (seed s trains the model with seed s and draws the held-out
    negatives from seed s, so the baselines' figures vary with the pairs too)."""
    print(f"held-out FF accuracy, {PROFILE.name} with ternary.negatives = each generator, "
          f"{steps} steps, seeds {seeds}, mean ± std; ties count half")
    head = ("negatives", "template", "frequency", "trit bigram", "model", "model - best",
            "symbol bigram*")
    print("  ".join(f"{h:>14}" for h in head))
    for kind in negatives:
        base_profile = load_profile(PROFILE, parse_overrides([f"ternary.negatives={kind}"]))
        data = load_data(base_profile)
        train = data.train_BW
        scorers = Baselines(train, run_symbols(base_profile).trits_per_symbol)
        found: dict[str, list[float]] = {name: [] for name in (*BASELINES, "model", "gap")}
        for seed in seeds:
            profile = load_profile(PROFILE, parse_overrides([f"ternary.negatives={kind}",
                                                             f"seed={seed}"]))
            pairs = eval_set(profile, data, pair_seed=seed)
            pos, neg = pairs.pos_BW, pairs.neg_BW
            base = scorers.accuracies(pos, neg)
            model = train_and_score(profile, train, pos, neg, steps)
            for name, value in base.items():
                found[name].append(value)
            found["model"].append(model)
            found["gap"].append(model - max(base[n] for n in ("template", "frequency",
                                                               "bigram")))
        cells = [kind] + [mean_std(found[n]) for n in ("template", "frequency", "bigram",
                                                         "model", "gap", "symbol_bigram")]
        print("  ".join(f"{c:>14}" for c in cells), flush=True)
    print("* symbol bigram: byte-to-byte transitions; it is told the encoding's byte "
          "boundaries, which the model is not (a reference, not one of the baselines)")


def throughput(reps: int, steps: int) -> None:
    profile = load_profile(PROFILE)
    train, _ = load_samples(profile)
    models, batches = {}, {}
    for rule, _ in CASES:
        if rule not in models:
            rule_profile = load_profile(PROFILE, parse_overrides([f"ternary.hebbian_rule={rule}"]))
            models[rule] = TernaryMoE(rule_profile)
            batches[rule] = EpochBatches(train, profile.train.batch_size, profile.seed)
    for rule, threads in CASES:  # warm-up
        samples_per_s(models[rule], batches[rule], 2, threads)
    runs: dict[tuple[str, int], list[float]] = {case: [] for case in CASES}
    for _ in range(reps):
        for rule, threads in CASES:
            runs[(rule, threads)].append(samples_per_s(models[rule], batches[rule], steps,
                                                       threads))
    rate = {case: statistics.median(v) for case, v in runs.items()}
    t = profile.ternary
    print(f"{PROFILE.name}: {t.num_experts} experts, top-{t.active_experts} {t.topology}, "
          f"{t.input_dim}->{t.hidden_dim}x{t.expert_layers - 1}->{t.output_dim}, batch "
          f"{profile.train.batch_size}, negatives {t.negatives}; median of {reps} x {steps} "
          "steps, wall clock")
    print(f"{'rule':>12}  {'1 thread':>10}  {'2 threads':>10}  {'2t/1t':>6}   samples/s")
    for rule in ("contrastive", "reference"):
        one, two = rate[(rule, 1)], rate[(rule, 2)]
        print(f"{rule:>12}  {one:>10.0f}  {two:>10.0f}  {two / one:>6.2f}")
    ratio = rate[("contrastive", 1)] / rate[("reference", 1)]
    print(f"contrastive / reference at 1 thread: {ratio:.2f}")
    phases = phase_breakdown(models["contrastive"], batches["contrastive"], steps * 2)
    total = sum(phases.values())
    print("default step, 1 thread: " + ", ".join(
        f"{name} {ms:.1f} ms ({ms / total:.0%})" for name, ms in phases.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", nargs="?", choices=("all", "throughput", "accuracy"),
                        default="all")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="steps per throughput round")
    parser.add_argument("--train-steps", type=int, default=300,
                        help="training steps per accuracy run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--negatives", nargs="+", choices=NEGATIVES, default=list(NEGATIVES))
    args = parser.parse_args()
    if args.part in ("all", "throughput"):
        throughput(args.reps, args.steps)
    if args.part in ("all", "accuracy"):
        accuracy_table(args.negatives, args.seeds, args.train_steps)


if __name__ == "__main__":
    main()
