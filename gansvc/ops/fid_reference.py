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
# Safety factor on the first-order rounding analysis of the trace routes (mirrors kRoundingFactor in the .cpp).
_ROUNDING_FACTOR = 4.0
_SYMMETRY_TOLERANCE = 1e-5


@dataclass(frozen=True)
class TraceSqrtResult:
    """Tr((S1 S2)^{1/2}) and how it was computed."""

    value: float
    route: str  # cholesky | eigh | newton-schulz | samples | samples-newton-schulz
    iterations: int  # Newton–Schulz steps taken (0 for the eigen routes)
    # Bound on the relative error of `value` against the exact Tr((S1 S2)^½) of the inputs taken as exact:
    # the iteration's truncation (Newton–Schulz) plus rounding, dropped zero modes and the noise band
    # (see gansvc.ops.fid). A Newton–Schulz try that did not verify reports the answering route's bound.
    bound: float
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


def _eigen_factor(s: torch.Tensor, name: str, psd_tol: float) -> tuple[torch.Tensor, float]:
    """Return (F [d, r] with F Fᵀ = s less its zero modes, k·τ: the dropped modes' count times their cap)."""
    values, vectors = torch.linalg.eigh(s)
    largest, smallest = float(values.max()), float(values.min())
    if smallest < -psd_tol * max(largest, 0.0):
        raise ValueError(
            f"{name} is not positive semi-definite: its smallest eigenvalue is {smallest:g} (largest {largest:g})"
        )
    threshold = s.shape[0] * _EPS * largest
    keep = values > threshold
    return vectors[:, keep] * values[keep].sqrt(), float((~keep).sum()) * max(threshold, -smallest)


def _dropped_modes_error(dropped: float, other: torch.Tensor) -> float:
    # Dropping modes E (rank k, ||E|| <= τ) from one covariance moves Tr((S1 S2)^½) by at most
    # Tr((S_other^½ E S_other^½)^½) <= sqrt(k·τ·Tr(S_other)) (Rotfel'd: Tr sqrt is subadditive on PSD matrices).
    return math.sqrt(dropped * float(other.diagonal().sum()))


def _rounding_allowance(r: int, inner: int, scale: float) -> float:
    # Absolute perturbation allowed for each eigenvalue of an r×r problem matrix M formed from the
    # covariances by Cholesky / eigh factors and GEMMs, then solved by a backward-stable symmetric eigen
    # solver: each step is backward stable to (a small multiple of) r·eps times the product of the
    # operands' norms (sums of `inner` products per entry), and Weyl's theorem moves every eigenvalue by
    # at most the perturbation's norm. `scale` (a product of Frobenius norms) dominates those operand
    # norms. Mirrors the .cpp.
    return _ROUNDING_FACTOR * (r + inner) * _EPS * scale


def _sum_sqrt_eigenvalues(
    sym: torch.Tensor, culprit: str, what: str, psd_tol: float, inner: int, scale: float
) -> tuple[float, float]:
    """Return (Σ sqrt(λ) over the eigenvalues of the symmetric PSD `sym`, a bound on its absolute error).

    Eigenvalues within the rounding-noise band count as 0 (see the .cpp); each eigenvalue may be off by
    the rounding allowance η, so a kept one contributes η / (sqrt(λ) + sqrt(λ - η)) to the bound and a
    zeroed one sqrt(band + η): a true eigenvalue that small cannot be told from 0 in float64.
    """
    if sym.numel() == 0:
        return 0.0, 0.0
    values = torch.linalg.eigvalsh(sym)
    largest, smallest = float(values.max()), float(values.min())
    if smallest < -psd_tol * max(largest, 0.0):
        raise ValueError(
            f"{culprit} is not positive semi-definite: {what} has the eigenvalue {smallest:g} (largest {largest:g})"
        )
    r = sym.shape[0]
    band = -2.0 * smallest if smallest < 0 else 0.0
    eta = _rounding_allowance(r, inner, scale)
    kept = values[values > band]
    roots = kept.sqrt()
    value = float(roots.sum())
    error = float((eta / (roots + (kept - eta).clamp_min(0.0).sqrt())).sum())
    error += (r - kept.numel()) * math.sqrt(band + eta) + (r + 2) * _EPS * value  # the roots' and the sum's rounding
    return value, error


def _frobenius(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t))


def _relative(error: float, value: float) -> float:
    # A relative bound; a zero trace with a zero error bound is exact, with a positive one unbounded.
    if value > 0:
        return error / value
    return 0.0 if error == 0 else math.inf


def _centred_contrasts(x: torch.Tensor) -> torch.Tensor:
    """Return Y [m-1, d] with Yᵀ Y = Xcᵀ Xc (Xc the centred rows of x): no structural zero left.

    Centring leaves the m rows of Xc in the (m-1)-dimensional space orthogonal to the ones vector, so
    an m×m problem built on them has an exact zero eigenvalue that rounding turns into ±noise — and
    sqrt(noise) ~ 1e-8 relative error when the noise comes out positive (which BLAS's summation
    order decides). The Householder reflection H taking 1/sqrt(m) to e1 is orthogonal; its rows
    2..m are an orthonormal basis of that space, so Y = (H Xc)[1:] carries the same covariance.
    """
    m = x.shape[0]
    xc = x - x.mean(0)
    root_m = math.sqrt(m)
    w = xc.sum(0) / root_m - xc[0]  # vᵀ Xc for v = 1/sqrt(m) - e1
    vtv = 2.0 - 2.0 / root_m
    return xc[1:] - (2.0 / (vtv * root_m)) * w


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
            if bound <= verify_tol:  # converged: the truncation bound; the reported bound adds the rounding
                return trace, step, bound + _iteration_rounding(c, trace), True
        if step >= max_iter or not math.isfinite(trace):
            return trace, step, bound, False
        previous = trace
        x = 1.5 * x - 0.5 * (gram @ x)
        trace = float((x * c).sum())
        step += 1


def _iteration_rounding(c: torch.Tensor, trace: float) -> float:
    # Rounding of the iteration, relative, first order: the GEMM that formed c [n, k] moves its nuclear
    # norm by ||E||_* <= sqrt(n) ||E||_F <= sqrt(n)·k·eps·||c||_F (the factors' norms are ~||c||_F's; the
    # caller's `scale` check covers the rest), and the final blocked sum Tr(Xᵀ c) (||X||_F <= sqrt(n))
    # adds sqrt(n·k)·eps·sqrt(n)·||c||_F. Mirrors the .cpp.
    n, k = c.shape
    return _ROUNDING_FACTOR * math.sqrt(n) * (k + math.sqrt(n * k)) * _EPS * _frobenius(c) / trace


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
    scale, inner = _frobenius(s1) * _frobenius(s2), 2 * rank  # the factor, then two GEMMs of inner size d
    if not newton_schulz:
        l1 = _cholesky_factor(s1)
        if l1 is not None:
            value, error = _sum_sqrt_eigenvalues(l1.T @ s2 @ l1, "sigma2", "L1ᵀ S2 L1", psd_tol, inner, scale)
            return TraceSqrtResult(value, "cholesky", 0, _relative(error, value), False, rank)
        l2 = _cholesky_factor(s2)
        if l2 is not None:
            value, error = _sum_sqrt_eigenvalues(l2.T @ s1 @ l2, "sigma1", "L2ᵀ S1 L2", psd_tol, inner, scale)
            return TraceSqrtResult(value, "cholesky", 0, _relative(error, value), False, rank)
        f1, dropped = _eigen_factor(s1, "sigma1", psd_tol)
        value, error = _sum_sqrt_eigenvalues(f1.T @ s2 @ f1, "sigma2", "F1ᵀ S2 F1", psd_tol, inner, scale)
        error += _dropped_modes_error(dropped, s2)
        return TraceSqrtResult(value, "eigh", 0, _relative(error, value), False, f1.shape[1])
    l1, l2 = _cholesky_factor(s1), _cholesky_factor(s2)
    route = "cholesky" if l1 is not None and l2 is not None else "eigh"
    f1, dropped1 = (l1, 0.0) if l1 is not None else _eigen_factor(s1, "sigma1", psd_tol)
    f2, dropped2 = (l2, 0.0) if l2 is not None else _eigen_factor(s2, "sigma2", psd_tol)
    dropped_error = _dropped_modes_error(dropped1, s2) + _dropped_modes_error(dropped2, s1)
    c = f2.T @ f1
    rank = min(c.shape)
    value, iterations, bound, verified = reference_newton_schulz_nuclear_norm(c, max_iter, rtol, verify_tol)
    if verified:
        return TraceSqrtResult(value, "newton-schulz", iterations, bound + _relative(dropped_error, value), False, rank)
    value, error = _sum_sqrt_eigenvalues(
        _small_gram(c), "sigma1 or sigma2", "the Gram matrix of F2ᵀ F1", psd_tol, inner, scale
    )
    return TraceSqrtResult(value, route, iterations, _relative(error + dropped_error, value), True, rank)


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
    x = _centred_contrasts(x) / math.sqrt(m - 1)  # [m-1, d], xᵀx = S2
    live = s1.diagonal() > 0
    if not bool(live.all()):
        s1, x = s1[live][:, live], x[:, live]
    rank = min(m - 1, s1.shape[0])
    if s1.shape[0] == 0:
        return TraceSqrtResult(0.0, "samples", 0, 0.0, False, rank)
    scale = _frobenius(s1) * _frobenius(x) ** 2  # ||x||_F² = Tr(S2) >= ||S2||_F
    inner = m + 2 * s1.shape[0]  # the centring and contrasts (m rows), then two GEMMs of inner size d
    newton_schulz = method == "newton-schulz" or (method == "auto" and s1.device.type != "cpu")
    if newton_schulz:
        l1 = _cholesky_factor(s1)
        f1, dropped = (l1, 0.0) if l1 is not None else _eigen_factor(s1, "sigma1", psd_tol)
        dropped_error = math.sqrt(dropped) * _frobenius(x)  # sqrt(k·τ·Tr(S2))
        c = x @ f1
        value, iterations, bound, verified = reference_newton_schulz_nuclear_norm(c, max_iter, rtol, verify_tol)
        if verified:
            bound += _relative(dropped_error, value)
            return TraceSqrtResult(value, "samples-newton-schulz", iterations, bound, False, rank)
        value, error = _sum_sqrt_eigenvalues(_small_gram(c), "sigma1", "the Gram matrix of X F1", psd_tol, inner, scale)
        return TraceSqrtResult(value, "samples", iterations, _relative(error + dropped_error, value), True, rank)
    value, error = _sum_sqrt_eigenvalues(x @ s1 @ x.T, "sigma1", "X S1 Xᵀ/(m-1)", psd_tol, inner, scale)
    return TraceSqrtResult(value, "samples", 0, _relative(error, value), False, rank)


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

