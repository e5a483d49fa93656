"""The comparison protocol: check that two profiles differ only in their model, plan the
seeded runs, and run them through the real runner, a few at a time.

Protocol (seed 002, Block C): for each seed, both profiles train on the same data, in the
same order, with the same schedule, step count, batch size and evaluation set. So every
key of `[train]` and `[data]` must be equal in the two files (except `train.threads`,
which the protocol sets itself); `kind`, `[model]` and `[moe]` may differ. Seed i
overrides `seed` in both profiles with base + i (base = the baseline profile's seed);
the data stream has its own generator seeded from it, so the two runs of a seed see
identical batches (`data/batch_hash` shows it).

At most `jobs` runs train at once (never more than the machine's cores), each with
`train.threads = cores // jobs`, so concurrent runs do not oversubscribe the CPU and
the two models of a seed run under the same conditions. Runs are queued seed by seed,
baseline then variant. Health rules still record alerts but never stop a compared run
(stop_on = never): a collapse is a finding, not a reason to lose the data point.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moedesk.compare.results import CompareError
from moedesk.profiles import Profile, ProfileError, load_profile, profile_to_dict
from moedesk.runner import launch
from moedesk.store import Reader, StoreError, open_reader
from moedesk.store.runs import ACTIVE

PROTOCOL_SECTIONS = ("train", "data")
SET_BY_PROTOCOL = frozenset({"train.threads"})
LM_KINDS = ("dense", "topk")
POLL_S = 0.5


def protocol_differences(baseline: Profile, variant: Profile) -> list[str]:
    """Keys of the protocol sections that differ, as "key: A vs B" lines."""
    a, b = profile_to_dict(baseline), profile_to_dict(variant)
    out = []
    for section in PROTOCOL_SECTIONS:
        for key in sorted(set(a[section]) | set(b[section])):
            dotted = f"{section}.{key}"
            if dotted in SET_BY_PROTOCOL:
                continue
            if a[section].get(key) != b[section].get(key):
                out.append(f"{dotted}: {a[section].get(key)!r} vs {b[section].get(key)!r}")
    return out


def check_pair(baseline: Profile, variant: Profile) -> None:
    """CompareError naming every problem that makes the pair unfair or not comparable."""
    problems = []
    for role, profile in (("baseline", baseline), ("variant", variant)):
        if profile.kind not in LM_KINDS:
            problems.append(f"{role} {profile.path or profile.name} is kind {profile.kind!r}; "
                            "compare needs language models (dense or topk) with a validation "
                            "perplexity")
    diffs = protocol_differences(baseline, variant)
    if diffs:
        problems.append("the profiles differ outside [model], [moe] and kind, so the runs "
                        "would not share data, schedule, batch size, steps and evaluation set:")
        problems += [f"  {d}" for d in diffs]
    if problems:
        raise CompareError("\n".join(problems))


@dataclass
class Slot:
    """One run of the protocol: a role (baseline | variant) at one seed."""

    role: str
    seed: int
    profile: Profile
    run_id: int | None = None
    name: str = ""
    status: str = "pending"
    step: int = 0


@dataclass
class Plan:
    baseline_path: str
    variant_path: str
    baseline: Profile  # as loaded, before the per-seed overrides
    variant: Profile
    seeds: list[int]
    steps: int
    warmup_steps: int
    jobs: int
    threads: int
    cores: int
    notes: list[str] = field(default_factory=list)

    def overrides(self, seed: int) -> dict[str, Any]:
        return {"seed": seed, "train.steps": self.steps, "train.warmup_steps": self.warmup_steps,
                "train.threads": self.threads}

    def slots(self) -> list[Slot]:
        """Every run in launch order: seed by seed, baseline then variant."""
        out = []
        for seed in self.seeds:
            for role, path in (("baseline", self.baseline_path), ("variant", self.variant_path)):
                try:
                    profile = load_profile(path, self.overrides(seed))
                except ProfileError as exc:
                    raise CompareError("\n".join(exc.lines)) from None
                out.append(Slot(role, seed, profile))
        return out

    def describe(self) -> dict:
        return {"baseline_profile": self.baseline_path, "variant_profile": self.variant_path,
                "jobs": self.jobs, "cores": self.cores, "threads_per_run": self.threads,
                "protocol_notes": list(self.notes)}


def make_plan(baseline_path: str, variant_path: str, seeds: int = 3, steps: int | None = None,
              jobs: int | None = None, cores: int | None = None) -> Plan:
    """Load and check both profiles and decide seeds, steps, concurrency and threads."""
    if seeds < 1:
        raise CompareError(f"--seeds must be >= 1, got {seeds}")
    try:
        baseline, variant = load_profile(baseline_path), load_profile(variant_path)
    except ProfileError as exc:
        raise CompareError("\n".join(exc.lines)) from None
    check_pair(baseline, variant)
    notes = []
    total_steps, warmup = baseline.train.steps, baseline.train.warmup_steps
    if steps is not None:
        if steps < 1:
            raise CompareError(f"--steps must be >= 1, got {steps}")
        # the warmup keeps its share of the schedule, identically in both runs
        warmup = min(steps, round(warmup * steps / total_steps))
        notes.append(f"--steps {steps}: train.steps {total_steps} -> {steps}, "
                     f"train.warmup_steps {baseline.train.warmup_steps} -> {warmup}")
        total_steps = steps
    cores = cores or os.cpu_count() or 1
    n_runs = 2 * seeds
    wanted = jobs if jobs is not None else cores
    if wanted < 1:
        raise CompareError(f"--jobs must be >= 1, got {wanted}")
    if wanted > cores:
        notes.append(f"--jobs {wanted} capped at the machine's {cores} cores")
    jobs = max(1, min(wanted, cores, n_runs))
    threads = max(1, cores // jobs)
    return Plan(baseline_path=str(baseline_path), variant_path=str(variant_path),
                baseline=baseline, variant=variant,
                seeds=[baseline.seed + i for i in range(seeds)], steps=total_steps,
                warmup_steps=warmup, jobs=jobs, threads=threads, cores=cores, notes=notes)


def execute(plan: Plan, home: Path, on_change: Callable[[Slot], None] | None = None,
            poll_s: float = POLL_S) -> list[Slot]:
    """Run every slot of the plan via the runner, at most `plan.jobs` at once, and wait.

    On any exception (Ctrl-C included) the runs still active are stopped gracefully
    before it propagates.
    """
    slots = plan.slots()
    pending, active = deque(slots), []
    reader: Reader | None = None
    try:
        while pending or active:
            while pending and len(active) < plan.jobs:
                slot = pending.popleft()
                started = launch.start_run(slot.profile, home, stop_on="never")
                slot.run_id, slot.name, slot.status = started.run_id, started.name, "queued"
                active.append(slot)
                if on_change:
                    on_change(slot)
            time.sleep(poll_s)
            if reader is None:
                reader = open_reader(home)
            for slot in list(active):
                info = reader.run(slot.run_id)
                changed = info.status != slot.status or info.last_step != slot.step
                slot.status, slot.step = info.status, info.last_step
                if info.status not in ACTIVE:
                    active.remove(slot)
                if changed and on_change:
                    on_change(slot)
    except BaseException:
        for slot in active:
            try:
                launch.stop_run(home, slot.run_id)
            except (launch.RunError, StoreError):
                pass
        raise
    finally:
        if reader is not None:
            reader.close()
    return slots


def run_ids(slots: list[Slot]) -> tuple[list[int], list[int]]:
    """(baseline ids, variant ids), pair i = seed i."""
    by_role: dict[str, list[int]] = {"baseline": [], "variant": []}
    for slot in slots:
        by_role[slot.role].append(slot.run_id)
    return by_role["baseline"], by_role["variant"]
