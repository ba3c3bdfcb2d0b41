"""Downsampling a metric series to at most `points` points, keeping every bucket's minimum and maximum (a spike or a
dip never disappears from a curve) and the first and last point. The server's GetMetrics (max_points) and the
dashboard's own series share this one definition."""

from __future__ import annotations

import numpy as np

MIN_POINTS = 4  # the first and last point and one bucket's minimum and maximum


def downsample_indices(values, points: int) -> np.ndarray:
    """Return the sorted indices of the points kept of `values` (at most max(points, 4)): per bucket of consecutive
    points the first index of its minimum and of its maximum, plus the first and last index. NaN values are kept
    out of the minima and maxima (a bucket of only NaN keeps one NaN, so a gap in the curve stays a gap)."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    points = max(int(points), MIN_POINTS)
    if n <= points:
        return np.arange(n)
    buckets = (points - 2) // 2  # two points per bucket, plus the first and last point
    edges = np.linspace(1, n - 1, buckets + 1).astype(np.int64)  # the interior: 1 .. n-2
    starts, ends = edges[:-1], edges[1:]
    nan = np.isnan(values)
    low_key = np.where(nan, np.inf, values)
    high_key = np.where(nan, -np.inf, values)
    # per-bucket argmin / argmax in one pass: reduceat gives the extreme value, then the first index holding it
    lows = np.minimum.reduceat(low_key[: n - 1], starts)
    highs = np.maximum.reduceat(high_key[: n - 1], starts)
    bucket_of = np.repeat(np.arange(buckets), ends - starts)
    interior = np.arange(1, n - 1)
    is_low = low_key[1 : n - 1] == lows[bucket_of]
    is_high = high_key[1 : n - 1] == highs[bucket_of]
    first_low = _first_per_bucket(interior, bucket_of, is_low, buckets)
    first_high = _first_per_bucket(interior, bucket_of, is_high, buckets)
    # an all-NaN bucket: no match for either key, keep its first point (a NaN)
    first_low = np.where(first_low < 0, starts, first_low)
    first_high = np.where(first_high < 0, starts, first_high)
    return np.unique(np.concatenate(([0, n - 1], first_low, first_high)))


def downsample(steps, values, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (steps, values) with at most max(points, 4) points, as downsample_indices keeps them."""
    steps = np.asarray(steps, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    keep = downsample_indices(values, points)
    return steps[keep], values[keep]


def _first_per_bucket(index: np.ndarray, bucket_of: np.ndarray, mask: np.ndarray, buckets: int) -> np.ndarray:
    """Return, per bucket, the first index where mask holds (-1 where it never does)."""
    found = np.full(buckets, -1, dtype=np.int64)
    hits = np.flatnonzero(mask)
    # reversed assignment: the earliest hit of each bucket is written last and wins
    found[bucket_of[hits][::-1]] = index[hits][::-1]
    return found
