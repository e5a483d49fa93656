"""Benchmark: training throughput of the default ternary profile (profiles/ternary243.toml).

Times `TernaryMoE.train_step` (route, negatives, grouped forward of pos and neg through
the 16 routed experts of 64 samples, Hebbian update, threshold step) on real grammar
batches, for the contrastive (default) and the documented reference rule, at 1 and 2
torch threads. Cases run interleaved, `--reps` rounds of `--steps` steps each, medians
compared, wall clock (threads > 1 make CPU time misleading). A phase breakdown of the
default case follows, timed the same way, then the held-out accuracy of two non-learned
scorers on the exact pairs the trainer evaluates (what ff/accuracy should be read
against): a mean-trit template (score = x . mean of the training samples) and
per-position trit frequencies (score = sum_i log p_i(x_i)).

    .venv/bin/python bench/ternary_train.py [--reps 5] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from moedesk.profiles import load_profile, parse_overrides
from moedesk.train.ternary.data import EpochBatches, corrupt, held_out_pairs, load_samples
from moedesk.train.ternary.model import TernaryMoE

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
    """Milliseconds per step of each phase of the default step, one thread."""
    torch.set_num_threads(1)
    cfg, spent = model.cfg, {"route": 0.0, "negatives": 0.0, "forward": 0.0, "update": 0.0,
                             "thresholds": 0.0}
    for _ in range(steps):
        x_BW, _ = batches.next_batch()
        t0 = time.perf_counter()
        experts_BK = model.router.route(x_BW)
        t1 = time.perf_counter()
        x_neg_BW = corrupt(x_BW, cfg.input_dim, cfg.corruption, model.generator)
        t2 = time.perf_counter()
        fwd = model.bank.forward_pairs(*model._pairs(x_BW, x_neg_BW, experts_BK))
        t3 = time.perf_counter()
        model.bank.update_contrastive(fwd, cfg.update_fraction, cfg.margin, model.generator)
        t4 = time.perf_counter()
        model.bank.adapt_thresholds(fwd, cfg.target_activity)
        t5 = time.perf_counter()
        for name, dt in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            spent[name] += dt
    return {name: 1e3 * total / steps for name, total in spent.items()}


def pair_accuracy(score_pos: torch.Tensor, score_neg: torch.Tensor) -> float:
    """Share of pairs whose positive scores higher, ties counting half (as the trainer)."""
    return float(((score_pos > score_neg).float() + 0.5 * (score_pos == score_neg).float()).mean())


def baselines(profile, train: torch.Tensor, held_out: torch.Tensor) -> dict[str, float]:
    dim = profile.ternary.input_dim
    x_BW, x_neg_BW = held_out_pairs(profile, held_out)
    pos, neg = x_BW[:, :dim], x_neg_BW[:, :dim]
    template_D = train[:, :dim].float().mean(0)
    # per-position frequency of each trit value, +1 smoothing
    counts_VD = torch.stack([(train[:, :dim] == v).sum(0) for v in (-1, 0, 1)]).float() + 1
    log_p_VD = (counts_VD / counts_VD.sum(0)).log()

    def log_likelihood(x_ND: torch.Tensor) -> torch.Tensor:
        return log_p_VD.gather(0, x_ND.long() + 1).sum(1)

    return {"mean-trit template": pair_accuracy(pos.float() @ template_D,
                                                neg.float() @ template_D),
            "per-position trit frequencies": pair_accuracy(log_likelihood(pos),
                                                           log_likelihood(neg))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    profile = load_profile(PROFILE)
    train, held_out = load_samples(profile)
    models, batches = {}, {}
    for rule, _ in CASES:
        if rule not in models:
            rule_profile = load_profile(PROFILE, parse_overrides([f"ternary.hebbian_rule={rule}"]))
            models[rule] = TernaryMoE(rule_profile)
            batches[rule] = EpochBatches(train, profile.train.batch_size, profile.seed)
    for rule, threads in CASES:  # warm-up
        samples_per_s(models[rule], batches[rule], 2, threads)
    runs: dict[tuple[str, int], list[float]] = {case: [] for case in CASES}
    for _ in range(args.reps):
        for rule, threads in CASES:
            runs[(rule, threads)].append(samples_per_s(models[rule], batches[rule], args.steps,
                                                       threads))
    rate = {case: statistics.median(v) for case, v in runs.items()}
    t = profile.ternary
    print(f"{PROFILE.name}: {t.num_experts} experts, top-{t.active_experts} {t.topology}, "
          f"{t.input_dim}->{t.hidden_dim}x{t.expert_layers - 1}->{t.output_dim}, batch "
          f"{profile.train.batch_size}; median of {args.reps} x {args.steps} steps, wall clock")
    print(f"{'rule':>12}  {'1 thread':>10}  {'2 threads':>10}  {'2t/1t':>6}   samples/s")
    for rule in ("contrastive", "reference"):
        one, two = rate[(rule, 1)], rate[(rule, 2)]
        print(f"{rule:>12}  {one:>10.0f}  {two:>10.0f}  {two / one:>6.2f}")
    ratio = rate[("contrastive", 1)] / rate[("reference", 1)]
    print(f"contrastive / reference at 1 thread: {ratio:.2f}")
    phases = phase_breakdown(models["contrastive"], batches["contrastive"], args.steps * 2)
    total = sum(phases.values())
    print("default step, 1 thread: " + ", ".join(
        f"{name} {ms:.1f} ms ({ms / total:.0%})" for name, ms in phases.items()))
    print("non-learned scorers on the trainer's held-out pairs: " + ", ".join(
        f"{name} {acc:.3f}" for name, acc in baselines(profile, train, held_out).items()))


if __name__ == "__main__":
    main()
