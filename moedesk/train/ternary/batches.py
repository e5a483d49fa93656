"""Training batches of the ternary kind: epochs over a weighted, curriculum-limited pool.

An epoch is one shuffled pass over the pool: every training sample when there is one
source; with `[[data.sources]]` each source fills its weight's share of the pool (a source
whose share exceeds its size repeats samples within the epoch, one below it gives a fresh
random subset each epoch). The order of epoch e is drawn from (seed, e) alone, so the data
position is just (epoch, batch in epoch); the tail that does not fill a batch is left out
of that epoch.

Curriculum (seed 000's "start with easy examples"): `curriculum_phases` P splits the
run's steps into P equal phases and phase p trains on the easiest (p + 1) / P of each
source, by `curriculum_by`: `length` (a trit file's sample length before padding, shorter
first, as the seed), `typicality` (the per-position frequency score of the training data,
most typical first) or `scores` (a file of one number per sample, lowest first). When the
pool changes mid-epoch the next batch starts a new epoch over the new pool.

Shape letters: B samples (the training set, or a batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from moedesk.profiles.schema import Profile
from moedesk.train.ternary.data import TernaryData, TernaryDataError, derived_seed


@dataclass
class DataPosition:
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches taken from the current epoch


class EpochBatches:
    """Fixed-size batches over a pool of training samples, one shuffled pass per epoch."""

    def __init__(self, train_BW: Tensor, batch_size: int, seed: int,
                 source_B: Tensor | None = None, weights: tuple[float, ...] = ()):
        self.train_BW = train_BW
        self.batch_size = batch_size
        self.seed = seed
        self.source_B = source_B
        self.weights = weights if len(weights) > 1 else ()
        self.pool_B: Tensor | None = None  # None: every training sample
        self.position = DataPosition()
        self._order: Tensor | None = None
        self._order_epoch = -1

    def set_pool(self, pool_B: Tensor | None, new_epoch: bool) -> None:
        """Train on `pool_B` (sample indices) from now on; `new_epoch` starts a new epoch
        if the current one has begun (a curriculum phase change; not on resume)."""
        self.pool_B = pool_B
        self._order_epoch = -1
        if new_epoch and self.position.batch > 0:
            self.position = DataPosition(self.position.epoch + 1, 0)

    def _epoch_order(self) -> Tensor:
        if self._order_epoch == self.position.epoch:
            assert self._order is not None
            return self._order
        generator = torch.Generator().manual_seed(derived_seed(self.seed, 1000 + self.position.epoch))
        if not self.weights:
            if self.pool_B is None:
                order = torch.randperm(len(self.train_BW), generator=generator)
            else:
                order = self.pool_B[torch.randperm(len(self.pool_B), generator=generator)]
        else:
            order = self._weighted_order(generator)
        self._order, self._order_epoch = order, self.position.epoch
        return order

    def _weighted_order(self, generator: torch.Generator) -> Tensor:
        assert self.source_B is not None
        pool = self.pool_B if self.pool_B is not None else torch.arange(len(self.train_BW))
        total, weight_sum = len(pool), sum(self.weights)
        picks = []
        for source, weight in enumerate(self.weights):
            members = pool[self.source_B[pool] == source]
            wanted = round(total * weight / weight_sum)
            if wanted == 0 or len(members) == 0:
                continue
            rounds = [members[torch.randperm(len(members), generator=generator)]
                      for _ in range(math.ceil(wanted / len(members)))]
            picks.append(torch.cat(rounds)[:wanted])
        chosen = torch.cat(picks)
        return chosen[torch.randperm(len(chosen), generator=generator)]

    @property
    def batches_per_epoch(self) -> int:
        return len(self._epoch_order()) // self.batch_size

    def next_batch(self) -> tuple[Tensor, bool]:
        """The next batch and whether it ends an epoch."""
        start = self.position.batch * self.batch_size
        order = self._epoch_order()
        batch = self.train_BW[order[start:start + self.batch_size]]
        self.position.batch += 1
        ends_epoch = self.position.batch == len(order) // self.batch_size
        if ends_epoch:
            self.position = DataPosition(self.position.epoch + 1, 0)
        return batch, ends_epoch

    def state_dict(self) -> dict:
        return {"epoch": self.position.epoch, "batch": self.position.batch}

    def load_state_dict(self, state: dict) -> None:
        self.position = DataPosition(int(state["epoch"]), int(state["batch"]))


def read_scores(path: str, count: int) -> Tensor:
    """One number per line (blank lines skipped), exactly `count` of them: float64 [count]."""
    try:
        lines = Path(path).read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise TernaryDataError(f"cannot read curriculum scores {path}: {exc}") from None
    values = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = float(line)
        except ValueError:
            raise TernaryDataError(f"{path}: line {number}: {line.strip()!r} is not a number"
                                   ) from None
        if not math.isfinite(value):
            raise TernaryDataError(f"{path}: line {number}: {line.strip()!r} is not finite")
        values.append(value)
    if len(values) != count:
        raise TernaryDataError(f"{path}: {len(values)} scores for {count} samples; give one "
                               "per sample (per window for text), in file order")
    return torch.tensor(values, dtype=torch.float64)


def difficulty(profile: Profile, data: TernaryData) -> Tensor:
    """How hard each training sample is for the curriculum (lower = earlier): float64 [B]."""
    by = profile.ternary.curriculum_by
    if by == "length":
        return data.train_length_B.double()
    if by == "typicality":
        from moedesk.train.ternary.baselines import Baselines

        return -Baselines(data.train_BW, 1).scores(data.train_BW)["frequency"]
    total = len(data.train_BW) + len(data.held_out_BW)
    return read_scores(profile.ternary.curriculum_scores, total)[:len(data.train_BW)]


class Curriculum:
    """Which training samples each phase may use (`curriculum_phases` = 1: all of them)."""

    def __init__(self, profile: Profile, data: TernaryData):
        self.phases = profile.ternary.curriculum_phases
        self.steps = profile.train.steps
        self.pools: list[Tensor | None] = [None]
        if self.phases > 1:
            hard_B = difficulty(profile, data)
            self.pools = [self._easiest(hard_B, data.train_source_B, (p + 1) / self.phases)
                          for p in range(self.phases - 1)] + [None]

    @staticmethod
    def _easiest(hard_B: Tensor, source_B: Tensor, fraction: float) -> Tensor:
        """The easiest `fraction` of each source (ties to the earlier sample), sorted."""
        keep = []
        for source in source_B.unique().tolist():
            members = torch.nonzero(source_B == source).flatten()
            order = torch.argsort(hard_B[members], stable=True)
            keep.append(members[order[:math.ceil(fraction * len(members))]])
        return torch.cat(keep).sort().values

    def phase_of(self, step: int) -> int:
        """The phase that step `step` (1-based) trains in."""
        return min(self.phases - 1, (max(step, 1) - 1) * self.phases // self.steps)

    def pool(self, phase: int) -> Tensor | None:
        return self.pools[phase]
