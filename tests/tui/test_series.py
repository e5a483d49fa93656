"""SeriesBuffer: bounded memory, every spike kept in the envelope, NaN kept out of the axis."""

from __future__ import annotations

import math

from moedesk.tui.series import SeriesBuffer


def test_short_series_comes_back_exactly():
    buf = SeriesBuffer(max_buckets=64)
    for step in range(1, 11):
        buf.append(step, step * 0.5)
    xs, lows, highs = buf.envelope(columns=40)
    assert xs == list(range(1, 11))
    assert lows == highs == [s * 0.5 for s in range(1, 11)]
    assert buf.last == (10, 5.0)


def test_buckets_stay_bounded_and_keep_extremes():
    buf = SeriesBuffer(max_buckets=64)
    for step in range(1, 10_001):
        value = 1.0 + 0.001 * math.sin(step)
        if step == 7_777:
            value = 50.0  # a one-step spike
        buf.append(step, value)
    assert len(buf.buckets) <= 64
    assert buf.count == 10_000
    assert buf.step_range() == (1, 10_000)
    assert buf.value_range()[1] == 50.0
    xs, lows, highs = buf.envelope(columns=30)
    assert len(xs) <= 30 and len(lows) == len(highs) == len(xs)  # one point per column
    assert max(highs) == 50.0  # the spike survives downsampling
    assert min(lows) < 1.0 and all(lo <= hi for lo, hi in zip(lows, highs, strict=True))
    assert xs == sorted(xs) and (xs[0], xs[-1]) == (1, 10_000)


def test_nonfinite_values_are_counted_not_plotted():
    buf = SeriesBuffer()
    buf.append(1, 2.0)
    buf.append(2, None)  # SQLite stores NaN as NULL
    buf.append(3, float("inf"))
    assert buf.count == 1 and buf.nonfinite == 2
    assert math.isinf(buf.last[1])
    assert buf.envelope(10) == ([1], [2.0], [2.0])


def test_shared_x_range_places_columns_on_one_axis():
    train, val = SeriesBuffer(max_buckets=8), SeriesBuffer(max_buckets=8)
    for step in range(1, 101):
        train.append(step, 1.0)
    for step in (50, 100):
        val.append(step, 2.0)
    xs, _, _ = val.envelope(10, x_range=(1, 100))
    assert xs == [50, 100]
    txs, _, _ = train.envelope(10, x_range=(1, 100))
    assert txs[0] >= 1 and txs[-1] <= 100 and len(txs) <= 20
