"""A metric series kept as a bounded pyramid of buckets, so charts draw in O(screen width).

Appends are O(1) amortised: each bucket holds `bucket_size` consecutive points as
(first step, last step, min, max, sum, count, last value); when there are more than
`max_buckets` buckets, neighbours merge and the bucket size doubles. Charts ask for
`envelope(columns)`: per screen column the min and max of the points in it, drawn as
the upper and lower edge of a band, so a spike one step wide still shows (TensorBoard's
latest-value sampling hides it). Full resolution stays in SQLite; this is only what
the screen needs.
"""

from __future__ import annotations

import math

# indices into a bucket list
FIRST, LAST, LO, HI, SUM, COUNT, TAIL = range(7)


class SeriesBuffer:
    def __init__(self, max_buckets: int = 1024):
        self.max_buckets = max_buckets
        self.bucket_size = 1
        self.buckets: list[list[float]] = []
        self.count = 0
        self.last: tuple[int, float] | None = None  # newest (step, value), NaN included
        self.nonfinite = 0

    def __len__(self) -> int:
        return self.count

    def append(self, step: int, value: float | None) -> None:
        value = math.nan if value is None else float(value)
        self.last = (step, value)
        if not math.isfinite(value):
            # a NaN/Inf point has no place on a y axis; the stat line still shows it
            self.nonfinite += 1
            return
        self.count += 1
        buckets = self.buckets
        if buckets and buckets[-1][COUNT] < self.bucket_size:
            b = buckets[-1]
            b[LAST] = step
            if value < b[LO]:
                b[LO] = value
            if value > b[HI]:
                b[HI] = value
            b[SUM] += value
            b[COUNT] += 1
            b[TAIL] = value
        else:
            buckets.append([step, step, value, value, value, 1, value])
            if len(buckets) > self.max_buckets:
                self._halve()

    def _halve(self) -> None:
        merged = []
        for i in range(0, len(self.buckets) - 1, 2):
            a, b = self.buckets[i], self.buckets[i + 1]
            merged.append([a[FIRST], b[LAST], min(a[LO], b[LO]), max(a[HI], b[HI]),
                           a[SUM] + b[SUM], a[COUNT] + b[COUNT], b[TAIL]])
        if len(self.buckets) % 2:
            merged.append(self.buckets[-1])
        self.buckets = merged
        self.bucket_size *= 2

    def step_range(self) -> tuple[int, int] | None:
        if not self.buckets:
            return None
        return int(self.buckets[0][FIRST]), int(self.buckets[-1][LAST])

    def value_range(self) -> tuple[float, float] | None:
        if not self.buckets:
            return None
        return min(b[LO] for b in self.buckets), max(b[HI] for b in self.buckets)

    def envelope(self, columns: int, x_range: tuple[float, float] | None = None
                 ) -> tuple[list[float], list[float], list[float]]:
        """(xs, lows, highs): per screen column the min and max of the points in it.

        A series with fewer points than columns comes back exactly (lows == highs).
        `x_range` fixes the columns' span so several series share one x axis.
        """
        if not self.buckets or columns < 1:
            return [], [], []
        if x_range is None:
            lo_x, hi_x = self.buckets[0][FIRST], self.buckets[-1][LAST]
        else:
            lo_x, hi_x = x_range
        if len(self.buckets) <= columns and self.bucket_size == 1:
            values = [b[TAIL] for b in self.buckets]
            return [b[FIRST] for b in self.buckets], values, values
        span = max(hi_x - lo_x, 1e-9)
        cols: dict[int, list[float]] = {}
        for b in self.buckets:
            mid = (b[FIRST] + b[LAST]) / 2
            col = min(columns - 1, max(0, int((mid - lo_x) / span * columns)))
            cell = cols.get(col)
            if cell is None:
                cols[col] = [mid, b[LO], b[HI]]
            else:
                cell[1] = min(cell[1], b[LO])
                cell[2] = max(cell[2], b[HI])
        ordered = [cols[col] for col in sorted(cols)]
        xs = [c[0] for c in ordered]
        # the curve spans the whole series: its ends sit on the first and last step
        xs[0], xs[-1] = self.buckets[0][FIRST], self.buckets[-1][LAST]
        if len(xs) == 1:
            xs[0] = self.buckets[-1][LAST]
        return xs, [c[1] for c in ordered], [c[2] for c in ordered]
