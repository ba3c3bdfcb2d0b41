"""The FID core: Tr((S1 S2)^{1/2}), the Fréchet distance and streaming feature moments, in float64.

Each public function runs the extension (`torch.ops.gansvc.*`, CPU and CUDA) or the pure-PyTorch
reference (gansvc.ops.fid_reference, independent of the kernels), as `gansvc.ops._ext.use_extension()`
decides (GANSVC_KERNELS=ext|ref) — except feature_moments_update_upper_, the CPU statistics' route
(FeatureStats): BLAS's symmetric rank-k update through SciPy, which ATen does not expose.
Inputs may be tensors or NumPy arrays of any floating dtype; the work is done in float64.

Routes for the trace term (`method`):
- "eigh" (the default on CPU): the eigenvalues of S1 S2 are those of Lᵀ S L for a Cholesky factor
  L of whichever covariance is positive definite (an eigen-factor with the zero modes dropped when
  neither is), so one eigenvalues-only call on a symmetric matrix; eigenvalues inside the measured
  rounding-noise band count as 0, the rest are square-rooted and summed.
- "newton-schulz" (the default on GPUs): the GEMM-bound polar Newton–Schulz iteration for the nuclear
  norm ||L2ᵀ L1||_* = Tr((S1 S2)^{1/2}); it stops when the trace stops changing, verifies an error
  bound, and falls back to the eigen route when the bound does not hold.
- trace_sqrt_product_lowrank: with the m generated feature rows at hand and m < d, an (m-1)×(m-1) problem
  on the centred rows' Householder contrasts (centring's exact zero eigenvalue is projected out, not left
  to rounding, whose sign would decide whether sqrt(noise) ~ 1e-8 is added).

Every route reports `bound`: a bound on the relative error of its value against the exact trace term of
the given statistics. It is the sum of (a) the iteration's truncation, sqrt(n)·||(I - X Xᵀ) c||_F / trace
(Newton–Schulz; proved in exact arithmetic), (b) rounding, from first-order backward-error analysis with
a safety factor of 4: every eigenvalue of the r×r problem moves by at most η = 4 (r + inner) eps ||S1||_F
||S2||_F (Weyl), so a kept eigenvalue costs η / (sqrt(λ) + sqrt(λ - η)) and one zeroed as noise
sqrt(band + η), and (c) zero modes dropped from a singular covariance, sqrt(k τ Tr(S_other)) (Rotfel'd).
tests/test_fid_error_bound.py checks it over seeds, sizes, ranks, routes and backends against 50-digit
arithmetic. Singular covariances make the trace term itself ill-conditioned (sqrt near 0), and the bound
says so (~1e-7 relative) instead of claiming float64 precision.
"""

from __future__ import annotations

import numpy as np
import torch

from gansvc.ops import selftest
from gansvc.ops.fid_reference import (  # noqa: F401  (re-exported: the reference is part of this module's face)
    DEFAULT_MAX_ITER,
    DEFAULT_RTOL,
    DEFAULT_VERIFY_TOL,
    METHODS,
    ROUTES,
    TraceSqrtResult,
    as_tensor,
    check_elementwise,
    check_method,
    check_moment_batch,
    check_moments,
    reference_feature_moments_merge_,
    reference_feature_moments_update_,
    reference_frechet_distance,
    reference_newton_schulz_nuclear_norm,
    reference_trace_sqrt_product,
    reference_trace_sqrt_product_lowrank,
)


def _result(trace: torch.Tensor, info: torch.Tensor) -> TraceSqrtResult:
    route, iterations, bound, fell_back, rank = info.tolist()
    return TraceSqrtResult(float(trace), ROUTES[int(route)], int(iterations), float(bound), bool(fell_back), int(rank))


def trace_sqrt_product_details(
    sigma1,
    sigma2,
    method: str = "auto",
    max_iter: int = DEFAULT_MAX_ITER,
    rtol: float = DEFAULT_RTOL,
    verify_tol: float = DEFAULT_VERIFY_TOL,
) -> TraceSqrtResult:
    """Return Tr((S1 S2)^{1/2}) for symmetric PSD covariances with the route, iterations and bound."""
    check_method(method)
    s1, s2 = as_tensor(sigma1, "sigma1"), as_tensor(sigma2, "sigma2")
    if selftest.kernels_for(s1):
        return _result(*torch.ops.gansvc.trace_sqrt_product(s1, s2, method, max_iter, rtol, verify_tol))
    return reference_trace_sqrt_product(s1, s2, method, max_iter, rtol, verify_tol)


def trace_sqrt_product(sigma1, sigma2, method: str = "auto") -> float:
    """Return Tr((S1 S2)^{1/2}) for symmetric positive semi-definite S1, S2 (float64 arithmetic)."""
    return trace_sqrt_product_details(sigma1, sigma2, method).value


def trace_sqrt_product_lowrank_details(
    sigma1,
    features2,
    method: str = "auto",
    max_iter: int = DEFAULT_MAX_ITER,
    rtol: float = DEFAULT_RTOL,
    verify_tol: float = DEFAULT_VERIFY_TOL,
) -> TraceSqrtResult:
    """Return Tr((S1 S2)^{1/2}) with S2 the covariance of `features2` [m, d], from an m×m problem."""
    check_method(method)
    s1, x2 = as_tensor(sigma1, "sigma1"), as_tensor(features2, "features2")
    if selftest.kernels_for(s1):
        return _result(*torch.ops.gansvc.trace_sqrt_product_lowrank(s1, x2, method, max_iter, rtol, verify_tol))
    return reference_trace_sqrt_product_lowrank(s1, x2, method, max_iter, rtol, verify_tol)


def trace_sqrt_product_lowrank(sigma1, features2, method: str = "auto") -> float:
    """Return Tr((S1 cov(features2))^{1/2}) from the m×m problem (exact and fastest when m < d)."""
    return trace_sqrt_product_lowrank_details(sigma1, features2, method).value


def frechet_distance(mu1, sigma1, mu2, sigma2, method: str = "auto") -> float:
    """Return ||mu1 - mu2||² + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2}), the FID of two Gaussians."""
    check_method(method)
    m1, s1 = as_tensor(mu1, "mu1"), as_tensor(sigma1, "sigma1")
    m2, s2 = as_tensor(mu2, "mu2"), as_tensor(sigma2, "sigma2")
    if selftest.kernels_for(s1):
        return float(torch.ops.gansvc.frechet_distance(m1, s1, m2, s2, method))
    return reference_frechet_distance(m1, s1, m2, s2, method)


def feature_moments_update_(mean: torch.Tensor, m2: torch.Tensor, count: int, batch: torch.Tensor) -> int:
    """Fold feature rows `batch` [n, d] into (mean, m2 = Σ(x-mean)(x-mean)ᵀ) in place; return the new count."""
    if selftest.kernels_for(mean):
        return int(torch.ops.gansvc.feature_moments_update_(mean, m2, count, batch))
    return reference_feature_moments_update_(mean, m2, count, batch)


# Rows per symmetric rank-k update on the CPU: 2**23 doubles (64 MB at d = 2048, 4 096 rows), plus one row.
# FeatureStats gathers small batches up to this many rows; with its float32 buffer (32 MB), the float64
# chunk and M2 (32 MB) that is about 130 MB at d = 2048.
_SYRK_CHUNK_ELEMENTS = 1 << 23


def syrk_chunk_rows(d: int) -> int:
    """Rows per symmetric rank-k update of feature_moments_update_upper_ for d features."""
    return max(1, _SYRK_CHUNK_ELEMENTS // d)


def feature_moments_update_upper_(mean: torch.Tensor, m2: torch.Tensor, count: int, batch: torch.Tensor) -> int:
    """As feature_moments_update_ for CPU statistics, updating only m2's upper triangle (diagonal included).

    One BLAS symmetric rank-k update (dsyrk, half a GEMM's flops; what np.cov uses) per chunk of rows:
    the chunk is centred on its own mean and gets one extra row sqrt(n_a n_b / n) (mean_b - mean_a), so
    that a single call adds both Chan et al.'s centred sum and its rank-1 correction. The lower triangle
    is left stale: mirror_upper_(m2) makes m2 whole again (once, when it is read).
    """
    from scipy.linalg import blas

    check_moments(mean, m2, count)
    if mean.device.type != "cpu" or not m2.is_contiguous():
        raise ValueError("feature_moments_update_upper_ needs contiguous CPU statistics")
    check_moment_batch(mean, batch)
    d = mean.shape[0]
    # NumPy does the elementwise work: its float32 -> float64 centring is several times faster than
    # torch's mixed-dtype elementwise ops on the CPU. m2 is C-ordered and symmetric: its NumPy transpose
    # is a Fortran-ordered view that dsyrk updates in place, and that view's lower triangle is m2's upper one.
    if batch.dtype not in (torch.float32, torch.float64):
        batch = batch.to(torch.float64)
    rows_all, target, mean_np = batch.detach().numpy(), m2.numpy().T, mean.numpy()
    chunk_rows = syrk_chunk_rows(d)
    for start in range(0, rows_all.shape[0], chunk_rows):
        part = rows_all[start : start + chunk_rows]
        rows = part.shape[0]
        chunk_mean = part.mean(axis=0, dtype=np.float64)
        if not np.isfinite(chunk_mean).all():  # a NaN or Inf anywhere in the chunk reaches its mean
            raise ValueError("batch contains NaN or Inf")
        chunk = np.empty((rows + 1, d))
        np.subtract(part, chunk_mean, out=chunk[:rows])
        total = count + rows
        delta = chunk_mean - mean_np
        np.multiply(delta, (count * rows / total) ** 0.5, out=chunk[rows])
        updated = blas.dsyrk(1.0, chunk.T, beta=1.0, c=target, trans=0, lower=1, overwrite_c=1)
        if not np.shares_memory(updated, target):  # a SciPy that copied after all
            target[...] = updated
        mean_np += delta * (rows / total)
        count = total
    return count


def mirror_upper_(m2: torch.Tensor) -> torch.Tensor:
    """Copy the upper triangle of a square matrix over its lower one in place (after feature_moments_update_upper_)."""
    d = m2.shape[0]
    block = 512  # row blocks: no d×d temporary
    for i in range(0, d, block):
        m2[i : i + block, :i].copy_(m2[:i, i : i + block].T)
        rows = m2[i : i + block, i : i + block]
        rows.copy_(rows.triu() + rows.triu(1).T)
    return m2


def feature_moments_merge_(
    mean: torch.Tensor, m2: torch.Tensor, count: int, other_mean: torch.Tensor, other_m2: torch.Tensor, other_count: int
) -> int:
    """Merge another set's (mean, m2, count) into (mean, m2) in place; return the combined count."""
    if selftest.kernels_for(mean):
        return int(torch.ops.gansvc.feature_moments_merge_(mean, m2, count, other_mean, other_m2, other_count))
    return reference_feature_moments_merge_(mean, m2, count, other_mean, other_m2, other_count)


def ns_polar_step_(x: torch.Tensor, q: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Set x = 1.5 x - 0.5 q in place; return sum(x * b) (0-dim float64): the fused Newton–Schulz step."""
    if selftest.kernels_for(x):
        return torch.ops.gansvc.ns_polar_step_(x, q, b)
    check_elementwise(x, q, "x", "q")
    check_elementwise(x, b, "x", "b")
    x.mul_(1.5).sub_(q, alpha=0.5)
    return (x * b).sum()


def sum_squared_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return sum((a - b)²) as a 0-dim float64 tensor: the iteration's verification residual."""
    if selftest.kernels_for(a):
        return torch.ops.gansvc.sum_squared_difference(a, b)
    check_elementwise(a, b, "a", "b")
    return (a - b).square().sum()


def symmetrize_checked(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ((s + sᵀ)/2, [max |s|, max |s - sᵀ|, non-finite count]) of a float64 matrix in one pass."""
    if selftest.kernels_for(s):
        return torch.ops.gansvc.symmetrize_checked(s)
    if s.dim() != 2 or s.shape[0] != s.shape[1] or s.dtype != torch.float64 or not s.is_contiguous():
        raise ValueError(f"s must be a contiguous float64 square matrix, got {s.dtype} {list(s.shape)}")
    finite = torch.isfinite(s) & torch.isfinite(s.T)
    clean = torch.where(finite, s, torch.zeros_like(s))
    stats = torch.stack([clean.abs().max(), (clean - clean.T).abs().max(), (~finite).sum().to(s.dtype)])
    return (s + s.T) * 0.5, stats


