"""Fréchet distance between feature sets: streaming statistics, the .npz format, and the FID itself.

FID = ||mu1 - mu2||² + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2}) on the features of a real and a
generated image set. The trace term runs on the extension (gansvc.ops.fid); when the generated
set has fewer samples than feature dimensions and its features are at hand, it is computed from
the m×m problem instead of the d×d one (exact there; the d×d routes carry d - m zero eigenvalues).
"""

from __future__ import annotations

import functools
import io
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gansvc.atomic import atomic_write
from gansvc.ops import fid as fid_ops


class FeatureStats:
    """Streaming float64 mean and covariance of feature rows; never holds the N×d matrix; mergeable.

    Keeps count, mean and M2 = Σ (x - mean)(x - mean)ᵀ — the sum of outer products about the running
    mean, updated per chunk by Chan et al.'s pairwise formula. That is the same information as
    (count, Σx, Σxxᵀ), merges exactly, and does not lose digits to Σxxᵀ/n - μμᵀ when |μ| >> σ.
    On the CPU each chunk is one BLAS symmetric rank-k update of M2's upper triangle (half a GEMM's
    flops, as np.cov), and the lower triangle is filled in once, when the statistics are read. Small
    CPU batches (an extractor's 50 to 1 000 rows) are first gathered into a buffer of rows, up to
    fid_ops.syrk_chunk_rows(d) (4 096 at d = 2 048: 32 MB of float32), so that each update is one large
    rank-k call: BLAS runs a rank-1 000 update at a fraction of the rate of a rank-4 000 one.
    """

    def __init__(self, dim: int | None = None, device: str | torch.device = "cpu") -> None:
        self.count = 0
        self.device = torch.device(device)
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None
        self._lower_stale = False  # M2's lower triangle lags its upper one (CPU updates; see _whole)
        # CPU rows not yet folded into (mean, M2): the first _buffered rows of _buffer; `count` includes them.
        self._buffer: np.ndarray | None = None
        self._buffered = 0
        if dim is not None:
            self._allocate(int(dim))

    @property
    def dim(self) -> int | None:
        """The feature dimension d (None until the first batch when not given)."""
        return None if self._mean is None else self._mean.shape[0]

    def _allocate(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self._mean = torch.zeros(dim, dtype=torch.float64, device=self.device)
        self._m2 = torch.zeros(dim, dim, dtype=torch.float64, device=self.device)

    def update(self, batch) -> FeatureStats:
        """Fold a batch of feature rows [n, d] (or [n, d, 1, 1]) of any size in; return self."""
        features = batch if isinstance(batch, torch.Tensor) else torch.as_tensor(np.asarray(batch))
        if features.dim() == 4 and features.shape[2:] == (1, 1):
            features = features.flatten(1)
        if features.dim() != 2:
            raise ValueError(f"batch must be feature rows [n, d], got shape {list(features.shape)}")
        if self._mean is None:
            self._allocate(features.shape[1])
        if features.shape[1] != self.dim:
            raise ValueError(f"batch has {features.shape[1]} features per row, these statistics have {self.dim}")
        if self.device.type == "cpu":
            self._update_cpu(features.detach().cpu())
        else:
            self.count = fid_ops.feature_moments_update_(self._mean, self._m2, self.count, features.to(self.device))
        return self

    def _update_cpu(self, features: torch.Tensor) -> None:
        if features.dtype not in (torch.float32, torch.float64):
            features = features.to(torch.float64)
        rows = features.numpy()
        # Checked now (the rows may only be folded in by a later call): a float64 sum of finite float32
        # or float64 rows cannot overflow, so any NaN or Inf shows in it.
        if not np.isfinite(rows.sum(dtype=np.float64)):
            raise ValueError("batch contains NaN or Inf")
        capacity = fid_ops.syrk_chunk_rows(self.dim)
        if self._buffer is not None and self._buffer.dtype != rows.dtype:
            self._flush()
            self._buffer = None
        if rows.shape[0] >= capacity:  # large enough on its own: no copy into the buffer
            self._flush()
            self._fold(features)
            return
        if self._buffer is None:
            self._buffer = np.empty((capacity, self.dim), dtype=rows.dtype)
        if self._buffered + rows.shape[0] > capacity:
            self._flush()
        self._buffer[self._buffered : self._buffered + rows.shape[0]] = rows
        self._buffered += rows.shape[0]
        self.count += rows.shape[0]

    def _fold(self, features: torch.Tensor) -> None:
        self.count = fid_ops.feature_moments_update_upper_(self._mean, self._m2, self.count, features)
        self._lower_stale = True

    def _flush(self) -> None:
        """Fold the buffered CPU rows into (mean, M2)."""
        if self._buffered:
            rows, self._buffered = self._buffered, 0
            self.count -= rows
            self._fold(torch.from_numpy(self._buffer[:rows]))

    def _whole(self) -> torch.Tensor:
        """Return M2 with both triangles current (mirroring the upper one after CPU updates)."""
        self._flush()
        if self._lower_stale:
            fid_ops.mirror_upper_(self._m2)
            self._lower_stale = False
        return self._m2

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add another accumulator's samples (e.g. from another process) to this one; return self."""
        if other.count == 0:
            return self
        if self._mean is None:
            self._allocate(other.dim)
        self._whole()
        other_mean, other_m2 = other._mean.to(self.device), other._whole().to(self.device)
        self.count = fid_ops.feature_moments_merge_(self._mean, self._m2, self.count, other_mean, other_m2, other.count)
        return self

    def mean(self) -> torch.Tensor:
        """Return the float64 mean of the rows seen [d]."""
        if self.count < 1:
            raise ValueError("no features accumulated yet: the mean needs at least 1 row")
        self._flush()
        return self._mean.clone()

    def covariance(self) -> torch.Tensor:
        """Return the unbiased float64 covariance [d, d] (divided by count - 1), exactly symmetric."""
        if self.count < 2:
            raise ValueError(f"the covariance needs at least 2 rows, got {self.count}")
        m2 = self._whole()
        return (m2 + m2.T) / (2.0 * (self.count - 1))

    def statistics(self) -> GaussianStatistics:
        """Return the (mu, sigma, count) of the rows seen, as NumPy float64."""
        return GaussianStatistics(self.mean().cpu().numpy(), self.covariance().cpu().numpy(), self.count)

    def state_dict(self) -> dict:
        """Return the accumulator's state (count, mean, m2) for sending to another process."""
        m2 = None if self._m2 is None else self._whole()  # (flushes the buffered rows into the mean too)
        return {"count": self.count, "mean": self._mean, "m2": m2}

    @classmethod
    def from_state_dict(cls, state: dict, device: str | torch.device = "cpu") -> FeatureStats:
        """Return an accumulator rebuilt from `state_dict()`."""
        stats = cls(device=device)
        if state["mean"] is not None:
            stats._mean = state["mean"].to(device=stats.device, dtype=torch.float64).clone()
            stats._m2 = state["m2"].to(device=stats.device, dtype=torch.float64).clone()
        stats.count = int(state["count"])
        return stats


@dataclass
class GaussianStatistics:
    """Mean [d] and covariance [d, d] of a feature set (float64 NumPy), with the sample count if known."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int | None = None


def save_statistics(path: str | os.PathLike, stats: GaussianStatistics, **extra: np.ndarray) -> Path:
    """Write `stats` as an .npz with keys mu and sigma (pytorch-fid's format) plus `extra`, atomically."""
    arrays = {"mu": np.asarray(stats.mu, dtype=np.float64), "sigma": np.asarray(stats.sigma, dtype=np.float64)}
    if stats.count is not None:
        arrays["count"] = np.asarray(stats.count, dtype=np.int64)
    arrays.update(extra)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))


def load_statistics(path: str | os.PathLike) -> tuple[GaussianStatistics, dict[str, np.ndarray]]:
    """Return (mu/sigma statistics, the file's other arrays) from an .npz such as pytorch-fid writes."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable .npz file ({error})") from None
    missing = [key for key in ("mu", "sigma") if key not in arrays]
    if missing:
        raise ValueError(f"{path}: statistics files need the keys mu and sigma; missing {', '.join(missing)}")
    mu, sigma = arrays.pop("mu").astype(np.float64), arrays.pop("sigma").astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: mu must be [d] and sigma [d, d]; got {list(mu.shape)} and {list(sigma.shape)}")
    count = int(arrays.pop("count")) if "count" in arrays else None
    return GaussianStatistics(mu, sigma, count), arrays


def frechet_distance(stats1: GaussianStatistics, stats2: GaussianStatistics, method: str = "auto") -> float:
    """Return the Fréchet distance between two Gaussians given as statistics."""
    if stats1.mu.shape != stats2.mu.shape:
        raise ValueError(
            f"the statistics have different feature dimensions: {stats1.mu.shape[0]} and {stats2.mu.shape[0]}"
        )
    return fid_ops.frechet_distance(stats1.mu, stats1.sigma, stats2.mu, stats2.sigma, method)


@dataclass
class FidResult:
    """An FID value with the generated set's statistics and how the trace term was computed (its route,
    Newton–Schulz steps, error bound and fallback are in `trace`; `device` is where it ran)."""

    fid: float
    fake: GaussianStatistics
    trace: fid_ops.TraceSqrtResult
    device: str = "cpu"


_GEMM_SIZE = 512  # float64 product used to measure a device's rate (0.27 GFLOP: ~1 ms on a datacentre GPU)


@functools.cache
def float64_gemm_rate(device: torch.device) -> float:
    """Return the float64 GEMM rate of `device` in flop/s, measured once per process (best of 3 products)."""
    a = torch.randn(_GEMM_SIZE, _GEMM_SIZE, dtype=torch.float64, device=device)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ a  # warm-up: kernel selection, library load
    synchronize()
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        a @ a
        synchronize()
        best = min(best, time.perf_counter() - start)
    return 2.0 * _GEMM_SIZE**3 / max(best, 1e-9)


def statistics_device(device: str | torch.device, rate=float64_gemm_rate) -> torch.device:
    """Return where evaluation keeps the features and does its float64 work for an extractor on `device`.

    The CPU for a CPU extractor (nothing changes there). For a GPU, the GPU itself when its measured
    float64 GEMM rate (`rate(device)`, flop/s) is at least the CPU's: datacentre GPUs, where the features
    then never leave the device and the trace term takes the Newton–Schulz route. Consumer GPUs run float64
    at 1/32–1/64 of their float32 rate, often below the CPU's: there the features go to the CPU.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type == "cpu" or rate(device) < rate(torch.device("cpu")):
        return torch.device("cpu")
    return device


def fid_from_features(real: GaussianStatistics, fake_features, method: str = "auto") -> FidResult:
    """Return the FID of generated feature rows [m, d] against real statistics, on the features' device.

    The generated set's statistics accumulate in float64 where its features are (a GPU's or the CPU), and
    the trace term runs there ("auto": Newton–Schulz with its verified bound and eigen fallback on a GPU,
    the eigen route on the CPU). With m < d it comes from the m×m problem on the features themselves.
    """
    features = fake_features if isinstance(fake_features, torch.Tensor) else torch.as_tensor(np.asarray(fake_features))
    if features.dim() != 2 or features.shape[1] != real.mu.shape[0]:
        raise ValueError(
            f"fake features must be [m, {real.mu.shape[0]}] to match the real statistics, got {list(features.shape)}"
        )
    m, d = features.shape
    if m < 2:
        raise ValueError(f"FID needs at least 2 generated samples, got {m}")
    accumulator = FeatureStats(d, device=features.device).update(features)
    real_sigma = torch.as_tensor(np.asarray(real.sigma, dtype=np.float64), device=features.device)
    if m < d:
        trace = fid_ops.trace_sqrt_product_lowrank_details(real_sigma, features, method)
    else:
        trace = fid_ops.trace_sqrt_product_details(real_sigma, accumulator.covariance(), method)
    fake = accumulator.statistics()
    diff = real.mu - fake.mu
    value = float(diff @ diff) + float(np.trace(real.sigma)) + float(np.trace(fake.sigma)) - 2.0 * trace.value
    return FidResult(value, fake, trace, str(features.device))


def trace_report(result: FidResult) -> dict:
    """Return how an FID's trace term was computed, JSON-able: route, error bound, steps, fallback, device."""
    trace = result.trace
    return {
        "route": trace.route,
        # relative, against the exact trace term of these statistics: every route reports one
        "error_bound": trace.bound,
        "iterations": trace.iterations,
        "fell_back": trace.fell_back,
        "device": result.device,
    }
