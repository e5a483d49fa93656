"""Telemetry overhead of the LM training loop: the real Emitter vs the NullEmitter.

One dense training (tiny_dense by default, metrics at every step: the worst case) runs
with an emitter that switches every few steps between the real Emitter, writing JSON
lines into a pipe drained by another process (as the supervisor does), and dropping the
events like the NullEmitter. The time between consecutive metrics events is one training
step plus the emission of the previous event, so each interval is charged to the mode
that emitted that event. Interleaving in short blocks inside one process keeps machine
load and thermal drift out of the comparison; medians keep outliers out.

A second measurement times the emission alone (µs per event) for a sanity check. A
third is the cost of the samples during training (`[train] sample_every`, the profile's
default unless `--sample-every` says otherwise): the generation time each `sample` event
reports, summed, as a share of the whole training time. A sampling step is one interval
among hundreds, so the medians above do not see it; this share is what it costs.

    .venv/bin/python bench/overhead.py [--profile P] [--steps 600] [--block 5] [--sink pipe]
                                       [--sample-every N]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from moedesk.profiles import load_profile  # noqa: E402
from moedesk.train.emit import Emitter  # noqa: E402
from moedesk.train.loop import train_lm  # noqa: E402


class SwitchingEmitter(Emitter):
    """Real emission in odd blocks of `block` steps, none in even blocks; times each step."""

    def __init__(self, stream, log_stream, block: int):
        super().__init__(stream, log_stream)
        self.block = block
        self.intervals: dict[int, list[float]] = {}  # block index -> step intervals
        self._prev: tuple[float, int] | None = None
        self.sample_seconds: list[float] = []  # what each `sample` event took

    def emit(self, type: str, **fields) -> None:
        if type == "sample":
            self.sample_seconds.append(fields["seconds"])
        super().emit(type, **fields)

    def metrics(self, step: int, values: dict) -> None:
        now = time.perf_counter()
        if "train/loss" not in values:
            super().metrics(step, values)
            return
        if self._prev is not None:
            prev_time, prev_block = self._prev
            self.intervals.setdefault(prev_block, []).append(now - prev_time)
        block = step // self.block
        if block % 2:
            super().metrics(step, values)
        self._prev = (now, block)

    def medians(self, real: bool, skip_blocks: int = 2) -> dict[int, float]:
        return {b: statistics.median(v) for b, v in self.intervals.items()
                if b >= skip_blocks and bool(b % 2) == real and len(v) >= self.block - 1}

    def bracketed_ratios(self) -> list[float]:
        """Each real block's median step over the mean of its two neighbouring null blocks'."""
        null, real = self.medians(False), self.medians(True)
        return [t / ((null[b - 1] + null[b + 1]) / 2) for b, t in real.items()
                if b - 1 in null and b + 1 in null]


def emission_cost_us(pipe, log, n: int = 5000) -> float:
    emitter = Emitter(pipe, log)
    values = {"train/loss": 2.345678, "train/lr": 1e-3, "train/grad_norm": 0.75,
              "train/tokens_per_s": 61234.5, "sys/step_s": 0.0081, "sys/rss_mb": 331.2}
    start = time.perf_counter()
    for step in range(n):
        emitter.metrics(step, values)
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=str(REPO / "profiles" / "tiny_dense.toml"))
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--block", type=int, default=5, help="steps per interleaved block")
    parser.add_argument("--sink", choices=("pipe", "file"), default="pipe",
                        help="pipe = a reader process drains the events; file = a temp file")
    parser.add_argument("--sample-every", type=int, default=None,
                        help="train.sample_every (default: the profile's)")
    args = parser.parse_args()
    overrides = {"train.steps": args.steps, "train.log_every": 1, "train.eval_every": 0,
                 "train.eval_batches": 1, "checkpoint.every": 0, "train.warmup_steps": 1}
    if args.sample_every is not None:
        overrides["train.sample_every"] = args.sample_every
    profile = load_profile(args.profile, overrides)

    started = time.perf_counter()
    with open(os.devnull, "w") as log, tempfile.TemporaryDirectory() as run_dir:
        if args.sink == "pipe":
            # the reader is another process, like the supervisor; it discards what it reads
            reader = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
            sink = io.TextIOWrapper(reader.stdin, encoding="utf-8")
        else:
            sink = open(Path(run_dir) / "events.jsonl", "w")  # noqa: SIM115 - closed below
        emitter = SwitchingEmitter(sink, log, args.block)
        assert train_lm(profile, Path(run_dir), emitter) == "completed"
        train_s = time.perf_counter() - started
        per_event_us = emission_cost_us(sink, log)
        sink.close()
        if args.sink == "pipe":
            reader.wait()

    null_blocks, real_blocks = emitter.medians(False), emitter.medians(True)
    null = statistics.median(null_blocks.values())
    real = statistics.median(real_blocks.values())
    ratios = emitter.bracketed_ratios()
    q1, ratio, q3 = statistics.quantiles(ratios, n=4)
    print(f"profile {Path(args.profile).name}: {args.steps} steps, metrics every step, "
          f"blocks of {args.block} steps alternating, torch threads "
          f"{profile.train.threads or 'default'}")
    print(f"{'emitter':<22}{'median step ms':>16}{'steps/s':>10}{'blocks':>8}")
    for label, value, blocks in (("NullEmitter (drop)", null, null_blocks),
                                 (f"Emitter -> {args.sink}", real, real_blocks)):
        print(f"{label:<22}{value * 1e3:>16.3f}{1 / value:>10.1f}{len(blocks):>8}")
    print(f"step time real/null, each real block against its two null neighbours: median "
          f"{ratio:.4f} (quartiles {q1:.4f}..{q3:.4f}, {len(ratios)} blocks)")
    print(f"=> steps/s ratio real/null = {1 / ratio:.4f}, telemetry cost "
          f"{100 * (ratio - 1):+.2f}% (target <= 3%)")
    print(f"emission alone: {per_event_us:.1f} us per metrics event = "
          f"{100 * per_event_us * 1e-6 / null:.2f}% of a median step")
    every, samples = profile.train.sample_every, emitter.sample_seconds
    if samples:
        each = statistics.median(samples)
        print(f"samples during training (train.sample_every = {every}, "
              f"{len(profile.train.sample_prompts) or 1} prompt x {profile.train.sample_tokens} "
              f"tokens): {len(samples)} in {args.steps} steps, median {each * 1e3:.0f} ms "
              f"each = {100 * sum(samples) / train_s:.2f}% of the training time "
              f"({100 * each / (every * null):.2f}% of {every} median steps)")
    else:
        print(f"samples during training: none (train.sample_every = {every})")


if __name__ == "__main__":
    main()
