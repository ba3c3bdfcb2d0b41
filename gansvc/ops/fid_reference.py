"""The FID core in plain PyTorch, float64: the oracle the extension's FID ops are checked against (tests,
gansvc.ops.selftest) and the fallback where the extension is not built or failed its self-test.

Independent of the kernels: nothing here calls torch.ops.gansvc or a function that may dispatch to it.
The algorithms are those of csrc/fid/fid_ops.cpp without the blocking (see gansvc.ops.fid for the routes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

METHODS = ("auto", "eigh", "newton-schulz")
# Codes of the `info` tensor the extension returns (csrc/fid/fid_ops.cpp, enum Route).
ROUTES = {1: "cholesky", 2: "eigh", 3: "newton-schulz", 4: "samples", 5: "samples-newton-schulz"}

DEFAULT_MAX_ITER = 100
DEFAULT_RTOL = 1e-10  # relative change of the trace below which the iteration is verified
DEFAULT_VERIFY_TOL = 1e-10  # accepted bound on the relative error of the trace

_EPS = float(np.finfo(np.float64).eps)
_SYMMETRY_TOLERANCE = 1e-5


@dataclass(frozen=True)
class TraceSqrtResult:
    """Tr((S1 S2)^{1/2}) and how it was computed."""

    value: float
    route: str  # cholesky | eigh | newton-schulz | samples | samples-newton-schulz
    iterations: int  # Newton–Schulz steps taken (0 for the eigen routes)
    bound: float  # Newton–Schulz: verified bound on the relative error (inf if never verified)
    fell_back: bool  # Newton–Schulz was tried, did not verify, and the eigen route answered
    rank: int  # size of the eigenproblem after dead units and zero modes were removed


def as_tensor(value, name: str) -> torch.Tensor:
    """Return `value` (a tensor or array-like) as a detached tensor; ValueError naming `name` otherwise."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a tensor or an array of numbers ({error})") from None


def check_method(method: str) -> None:
    """Refuse a trace-term method that is not one of METHODS."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")




def check_elementwise(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Refuse operands of the element kernels that are not contiguous float64 of one shape and device."""
    if a.dtype != torch.float64 or b.dtype != torch.float64:
        raise ValueError(f"{name_a} and {name_b} must be float64, got {a.dtype} and {b.dtype}")
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"{name_a} and {name_b} must be on the same device, got {a.device} and {b.device}")
    if not (a.is_contiguous() and b.is_contiguous()):
        raise ValueError(f"{name_a} and {name_b} must be contiguous")


def _check_finite(t: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf")


def _psd_tolerance(d: int, *dtypes: torch.dtype) -> float:
    # Eigenvalues below -tolerance·λmax mean "not a covariance"; above, rounding (float32 statistics
    # carry ~1e-7 noise), clamped at 0. Mirrors psd_tolerance() in csrc/fid/fid_ops.cpp.
    eps = max([_EPS] + [torch.finfo(t).eps for t in dtypes if t.is_floating_point and t != torch.float64])
    return max(1.5e-8, 100.0 * math.sqrt(d) * eps)


def _prepare_covariance(sigma: torch.Tensor, name: str, psd_tol: float) -> torch.Tensor:
    if sigma.dim() != 2 or sigma.shape[0] != sigma.shape[1]:
        raise ValueError(f"{name} must be a square covariance matrix [d, d], got shape {list(sigma.shape)}")
    if sigma.shape[0] == 0:
        raise ValueError(f"{name} is empty (d = 0)")
    if not sigma.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating-point tensor, got {sigma.dtype}")
    s = sigma.to(torch.float64).contiguous()
    _check_finite(s, name)
    scale = float(s.abs().max())
    asymmetry = float((s - s.T).abs().max())
    if asymmetry > _SYMMETRY_TOLERANCE * scale:
        raise ValueError(f"{name} is not symmetric: max |S - Sᵀ| = {asymmetry:g} for max |S| = {scale:g}")
    min_variance = float(s.diagonal().min())
    if min_variance < -psd_tol * scale:
        raise ValueError(
            f"{name} is not a covariance matrix: it has a negative variance {min_variance:g} on its diagonal"
        )
    return ((s + s.T) * 0.5).contiguous()


def _cholesky_factor(s: torch.Tensor) -> torch.Tensor | None:
    factor, info = torch.linalg.cholesky_ex(s)
    if int(info) != 0:
        return None
    min_pivot = float(factor.diagonal().min())
    if not min_pivot * min_pivot > s.shape[0] * _EPS * float(s.diagonal().max()):
        return None
    return factor


def _eigen_factor(s: torch.Tensor, name: str, psd_tol: float) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(s)
    largest, smallest = float(values.max()), float(values.min())
    if smallest < -psd_tol * max(largest, 0.0):
        raise ValueError(
            f"{name} is not positive semi-definite: its smallest eigenvalue is {smallest:g} (largest {largest:g})"
        )
    keep = values > s.shape[0] * _EPS * largest
    return vectors[:, keep] * values[keep].sqrt()


def _sum_sqrt_eigenvalues(sym: torch.Tensor, culprit: str, what: str, psd_tol: float) -> float:
    # Eigenvalues within the measured rounding-noise band (2 × |most negative|) count as 0; see the .cpp.
    if sym.numel() == 0:
        return 0.0
    values = torch.linalg.eigvalsh(sym)
    largest, smallest = float(values.max()), float(values.min())
    if smallest < -psd_tol * max(largest, 0.0):
        raise ValueError(
            f"{culprit} is not positive semi-definite: {what} has the eigenvalue {smallest:g} (largest {largest:g})"
        )
    noise_band = -2.0 * smallest if smallest < 0 else 0.0
    return float(torch.where(values > noise_band, values, torch.zeros_like(values)).sqrt().sum())


def _small_gram(c: torch.Tensor) -> torch.Tensor:
    return c @ c.T if c.shape[0] <= c.shape[1] else c.T @ c


def reference_newton_schulz_nuclear_norm(
    c: torch.Tensor,
    max_iter: int = DEFAULT_MAX_ITER,
    rtol: float = DEFAULT_RTOL,
    verify_tol: float = DEFAULT_VERIFY_TOL,
) -> tuple[float, int, float, bool]:
    """Return (||c||_*, steps, error bound, verified) by the polar Newton–Schulz iteration (see the .cpp)."""
    c = (c if c.shape[0] <= c.shape[1] else c.T).contiguous()
    scale = float(torch.linalg.vector_norm(c))
    if c.numel() == 0 or not scale > 0:
        return 0.0, 0, 0.0, True
    x = c / scale
    trace, previous, bound = scale, math.nan, math.inf
    step = 0
    while True:
        gram = x @ x.T
        if step > 0 and abs(trace - previous) <= rtol * abs(trace):
            bound = math.sqrt(c.shape[0] * float((c - gram @ c).square().sum())) / trace
            if bound <= verify_tol:
                return trace, step, bound, True
        if step >= max_iter or not math.isfinite(trace):
            return trace, step, bound, False
        previous = trace
        x = 1.5 * x - 0.5 * (gram @ x)
        trace = float((x * c).sum())
        step += 1


def _check_iteration_settings(max_iter: int, rtol: float, verify_tol: float) -> None:
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if not 0 < rtol < 1:
        raise ValueError(f"rtol must be in (0, 1), got {rtol}")
    if not 0 < verify_tol < 1:
        raise ValueError(f"verify_tol must be in (0, 1), got {verify_tol}")


def reference_trace_sqrt_product(
    sigma1: torch.Tensor,
    sigma2: torch.Tensor,
    method: str = "auto",
    max_iter: int = DEFAULT_MAX_ITER,
    rtol: float = DEFAULT_RTOL,
    verify_tol: float = DEFAULT_VERIFY_TOL,
) -> TraceSqrtResult:
    """Pure-PyTorch Tr((S1 S2)^{1/2}): the algorithm of csrc/fid/fid_ops.cpp without the blocking."""
    check_method(method)
    _check_iteration_settings(max_iter, rtol, verify_tol)
    if sigma1.device != sigma2.device:
        raise ValueError(f"sigma1 and sigma2 must be on the same device, got {sigma1.device} and {sigma2.device}")
    psd_tol = _psd_tolerance(sigma1.shape[0] if sigma1.dim() == 2 else 1, sigma1.dtype, sigma2.dtype)
    s1, s2 = _prepare_covariance(sigma1, "sigma1", psd_tol), _prepare_covariance(sigma2, "sigma2", psd_tol)
    if s1.shape != s2.shape:
        raise ValueError(f"sigma1 and sigma2 must have the same size, got {list(s1.shape)} and {list(s2.shape)}")
    newton_schulz = method == "newton-schulz" or (method == "auto" and s1.device.type != "cpu")
    live = (s1.diagonal() > 0) & (s2.diagonal() > 0)
    if not bool(live.all()):
        s1, s2 = s1[live][:, live], s2[live][:, live]
    rank = s1.shape[0]
    if rank == 0:
        return TraceSqrtResult(0.0, "cholesky", 0, 0.0, False, 0)
    if not newton_schulz:
        l1 = _cholesky_factor(s1)
        if l1 is not None:
            value = _sum_sqrt_eigenvalues(l1.T @ s2 @ l1, "sigma2", "L1ᵀ S2 L1", psd_tol)
            return TraceSqrtResult(value, "cholesky", 0, 0.0, False, rank)
        l2 = _cholesky_factor(s2)
        if l2 is not None:
            value = _sum_sqrt_eigenvalues(l2.T @ s1 @ l2, "sigma1", "L2ᵀ S1 L2", psd_tol)
            return TraceSqrtResult(value, "cholesky", 0, 0.0, False, rank)
        f1 = _eigen_factor(s1, "sigma1", psd_tol)
        value = _sum_sqrt_eigenvalues(f1.T @ s2 @ f1, "sigma2", "F1ᵀ S2 F1", psd_tol)
        return TraceSqrtResult(value, "eigh", 0, 0.0, False, f1.shape[1])
    l1, l2 = _cholesky_factor(s1), _cholesky_factor(s2)
    route = "cholesky" if l1 is not None and l2 is not None else "eigh"
    f1 = l1 if l1 is not None else _eigen_factor(s1, "sigma1", psd_tol)
    f2 = l2 if l2 is not None else _eigen_factor(s2, "sigma2", psd_tol)
    c = f2.T @ f1
    rank = min(c.shape)
    value, iterations, bound, verified = reference_newton_schulz_nuclear_norm(c, max_iter, rtol, verify_tol)
    if verified:
        return TraceSqrtResult(value, "newton-schulz", iterations, bound, False, rank)
    value = _sum_sqrt_eigenvalues(_small_gram(c), "sigma1 or sigma2", "the Gram matrix of F2ᵀ F1", psd_tol)
    return TraceSqrtResult(value, route, iterations, bound, True, rank)


def reference_trace_sqrt_product_lowrank(
    sigma1: torch.Tensor,
    features2: torch.Tensor,
    method: str = "auto",
    max_iter: int = DEFAULT_MAX_ITER,
    rtol: float = DEFAULT_RTOL,
    verify_tol: float = DEFAULT_VERIFY_TOL,
) -> TraceSqrtResult:
    """Pure-PyTorch m×m route: eigenvalues of X S1 Xᵀ/(m-1), X the centred rows of `features2`."""
    check_method(method)
    _check_iteration_settings(max_iter, rtol, verify_tol)
    if sigma1.device != features2.device:
        raise ValueError(
            f"sigma1 and features2 must be on the same device, got {sigma1.device} and {features2.device}"
        )
    psd_tol = _psd_tolerance(sigma1.shape[0] if sigma1.dim() == 2 else 1, sigma1.dtype, features2.dtype)
    s1 = _prepare_covariance(sigma1, "sigma1", psd_tol)
    if features2.dim() != 2:
        raise ValueError(f"features2 must be a matrix [m, d] of feature rows, got shape {list(features2.shape)}")
    m, d = features2.shape
    if d != s1.shape[0]:
        raise ValueError(f"features2 has {d} features per row but sigma1 is {s1.shape[0]} x {s1.shape[0]}")
    if m < 2:
        raise ValueError(f"features2 needs at least 2 rows for a covariance, got {m}")
    x = features2.to(torch.float64)
    _check_finite(x, "features2")
    x = (x - x.mean(0)) / math.sqrt(m - 1)
    live = s1.diagonal() > 0
    if not bool(live.all()):
        s1, x = s1[live][:, live], x[:, live]
    rank = min(m, s1.shape[0])
    if s1.shape[0] == 0:
        return TraceSqrtResult(0.0, "samples", 0, 0.0, False, rank)
    newton_schulz = method == "newton-schulz" or (method == "auto" and s1.device.type != "cpu")
    if newton_schulz:
        l1 = _cholesky_factor(s1)
        c = x @ (l1 if l1 is not None else _eigen_factor(s1, "sigma1", psd_tol))
        value, iterations, bound, verified = reference_newton_schulz_nuclear_norm(c, max_iter, rtol, verify_tol)
        if verified:
            return TraceSqrtResult(value, "samples-newton-schulz", iterations, bound, False, rank)
        value = _sum_sqrt_eigenvalues(_small_gram(c), "sigma1", "the Gram matrix of X F1", psd_tol)
        return TraceSqrtResult(value, "samples", iterations, bound, True, rank)
    value = _sum_sqrt_eigenvalues(x @ s1 @ x.T, "sigma1", "X S1 Xᵀ/(m-1)", psd_tol)
    return TraceSqrtResult(value, "samples", 0, 0.0, False, rank)


def _prepare_mean(mu: torch.Tensor, d: int, name: str) -> torch.Tensor:
    if mu.dim() != 1 or mu.shape[0] != d:
        raise ValueError(f"{name} must be a vector of {d} means, got shape {list(mu.shape)}")
    if not mu.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating-point tensor, got {mu.dtype}")
    m = mu.to(torch.float64)
    _check_finite(m, name)
    return m


def reference_frechet_distance(mu1, sigma1, mu2, sigma2, method: str = "auto") -> float:
    """Pure-PyTorch Fréchet distance on the reference trace term."""
    if sigma1.dim() != 2:
        raise ValueError(f"sigma1 must be a square covariance matrix [d, d], got shape {list(sigma1.shape)}")
    d = sigma1.shape[0]
    diff = _prepare_mean(mu1, d, "mu1") - _prepare_mean(mu2, d, "mu2")
    trace = reference_trace_sqrt_product(sigma1, sigma2, method).value
    traces = float(sigma1.to(torch.float64).diagonal().sum() + sigma2.to(torch.float64).diagonal().sum())
    return float(diff @ diff) + traces - 2.0 * trace


_MOMENT_CHUNK_ELEMENTS = 1 << 21  # doubles per chunk (16 MB), as in the .cpp


def check_moments(mean: torch.Tensor, m2: torch.Tensor, count: int, prefix: str = "") -> None:
    if mean.dim() != 1 or mean.dtype != torch.float64:
        raise ValueError(f"{prefix}mean must be a float64 vector [d], got {mean.dtype} {list(mean.shape)}")
    d = mean.shape[0]
    if m2.shape != (d, d) or m2.dtype != torch.float64:
        raise ValueError(f"{prefix}m2 must be a float64 matrix [{d}, {d}], got {m2.dtype} {list(m2.shape)}")
    if count < 0:
        raise ValueError(f"{prefix}count must be >= 0, got {count}")


def check_moment_batch(mean: torch.Tensor, batch) -> None:
    """Raise ValueError unless `batch` is a real matrix [n, d] of feature rows on the statistics' device."""
    d = mean.shape[0]
    if batch.dim() != 2 or batch.shape[1] != d:
        raise ValueError(f"batch must be a matrix [n, {d}] of feature rows, got shape {list(batch.shape)}")
    if batch.device != mean.device:
        raise ValueError(f"batch is on {batch.device} but the statistics are on {mean.device}")
    if batch.dtype.is_complex or batch.dtype == torch.bool:
        raise ValueError(f"batch must hold real numbers, got {batch.dtype}")


def _combine_moments(mean, m2, count, other_mean, other_count) -> None:
    total = count + other_count
    delta = other_mean - mean
    m2.add_(torch.outer(delta, delta), alpha=count * other_count / total)
    mean.add_(delta, alpha=other_count / total)


def reference_feature_moments_update_(mean, m2, count: int, batch) -> int:
    """Pure-PyTorch chunked Chan update of (mean, m2) with feature rows `batch`; return the new count."""
    check_moments(mean, m2, count)
    check_moment_batch(mean, batch)
    d = mean.shape[0]
    rows = max(1, _MOMENT_CHUNK_ELEMENTS // d)
    for start in range(0, batch.shape[0], rows):
        chunk = batch[start : start + rows].to(torch.float64)
        _check_finite(chunk, "batch")
        chunk_mean = chunk.mean(0)
        centred = chunk - chunk_mean
        m2.addmm_(centred.T, centred)
        _combine_moments(mean, m2, count, chunk_mean, chunk.shape[0])
        count += chunk.shape[0]
    return count


def reference_feature_moments_merge_(mean, m2, count: int, other_mean, other_m2, other_count: int) -> int:
    """Pure-PyTorch Chan merge of two (mean, m2, count) triples into the first; return the count."""
    check_moments(mean, m2, count)
    check_moments(other_mean, other_m2, other_count, "other_")
    if other_mean.shape != mean.shape:
        raise ValueError(
            f"cannot merge statistics of {other_mean.shape[0]} features into statistics of {mean.shape[0]}"
        )
    if other_count == 0:
        return count
    m2.add_(other_m2)
    _combine_moments(mean, m2, count, other_mean, other_count)
    return count + other_count

