"""Metric series for the page: downsampling to at most `points` points per series, keeping every bucket's
minimum and maximum (a spike or a dip never disappears from the curve) and the first and last point; and a
cache of the series of recently viewed jobs, brought up to date from the events after the last one it holds."""

from __future__ import annotations

import bisect
import collections
import threading

import numpy as np


def downsample(steps, values, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (steps, values) with at most max(points, 4) points: per bucket of consecutive points its minimum and
    maximum in step order, plus the series' first and last point. NaN values are kept out of the minima and
    maxima (a bucket of only NaN keeps one NaN, so a gap in the curve stays a gap)."""
    steps = np.asarray(steps, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    n = len(steps)
    points = max(int(points), 4)
    if n <= points:
        return steps, values
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
    keep = np.unique(np.concatenate(([0, n - 1], first_low, first_high)))
    return steps[keep], values[keep]


def _first_per_bucket(index: np.ndarray, bucket_of: np.ndarray, mask: np.ndarray, buckets: int) -> np.ndarray:
    """Return, per bucket, the first index where mask holds (-1 where it never does)."""
    found = np.full(buckets, -1, dtype=np.int64)
    hits = np.flatnonzero(mask)
    # reversed assignment: the earliest hit of each bucket is written last and wins
    found[bucket_of[hits][::-1]] = index[hits][::-1]
    return found


class SeriesCache:
    """Every metric series of recently viewed jobs, kept in this process and brought up to date incrementally.

    The first view of a job reads GetMetrics once (for a long run that is the server's time); later views read
    only the events after the last one folded in (WatchJob history from that sequence), so a page of a job with
    100 000 points loads from memory. A StateChange with resume_step drops the points after it, as GetMetrics
    does for a resumed run. Thread-safe; at most `max_jobs` jobs are kept (least recently used dropped).
    """

    def __init__(self, client, max_jobs: int = 32):
        self.client = client
        self.max_jobs = max_jobs
        self._jobs: collections.OrderedDict[str, _JobSeries] = collections.OrderedDict()
        self._guard = threading.Lock()

    def get(self, job) -> dict[str, tuple[list[int], list[float]]]:
        """Return {metric: (steps, values)} of `job` (a pb.Job, read just before) up to at least its last_sequence."""
        with self._guard:
            entry = self._jobs.get(job.id)
            if entry is None:
                entry = self._jobs[job.id] = _JobSeries(threading.Lock())
            self._jobs.move_to_end(job.id)
            while len(self._jobs) > self.max_jobs:
                self._jobs.popitem(last=False)
        with entry.lock:
            if entry.sequence is None:
                entry.load(self.client, job)
            elif entry.sequence < job.last_sequence:
                entry.follow(self.client, job.id)
            return {name: (list(s), list(v)) for name, (s, v) in entry.series.items()}


class _JobSeries:
    """One job's series and the last event sequence they include."""

    def __init__(self, lock):
        self.lock = lock
        self.sequence: int | None = None
        self.series: dict[str, tuple[list[int], list[float]]] = {}

    def load(self, client, job) -> None:
        # job.last_sequence was read before GetMetrics: the points may include later events, which follow()
        # then meets again and merges by step (the same step's value replaces, older steps are skipped)
        for step, values in client.metrics(job.id):
            for name, value in values.items():
                steps, kept = self.series.setdefault(name, ([], []))
                steps.append(step)
                kept.append(value)
        self.sequence = job.last_sequence

    def follow(self, client, job_id: str) -> None:
        for event in client.watch_call(job_id, after_sequence=self.sequence, history_only=True):
            self.sequence = event.sequence
            kind = event.WhichOneof("payload")
            if kind == "metrics":
                self._add(event.metrics.step, event.metrics.values)
            elif kind == "state" and event.state.resume_step:
                self._truncate(event.state.resume_step)

    def _add(self, step: int, values) -> None:
        for name, value in values.items():
            steps, kept = self.series.setdefault(name, ([], []))
            if steps and step < steps[-1]:
                continue  # already held (GetMetrics read past the sequence it was asked at)
            if steps and step == steps[-1]:
                kept[-1] = value
            else:
                steps.append(step)
                kept.append(value)

    def _truncate(self, resume_step: int) -> None:
        for name, (steps, kept) in list(self.series.items()):
            cut = bisect.bisect_right(steps, resume_step)
            del steps[cut:], kept[cut:]
