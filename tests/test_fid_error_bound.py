"""The trace term's reported error bound holds: a property test over seeds, sizes, ranks, both routes (eigen and
Newton–Schulz), both problems (d×d covariances and the m×m samples route) and both backends, in float64 on the CPU.

The truth is computed independently in 50-digit arithmetic (mpmath) on inputs that float64 holds exactly: the
covariances are products of small-integer factors (S = A Aᵀ, every entry an exact float64 integer), so the exact
Tr((S1 S2)^½) is the nuclear norm of Bᵀ A, whose squared singular values mpmath finds as eigenvalues of an integer
Gram matrix. The samples route gets integer feature rows; its truth comes from the exactly centred rows.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import torch

from gansvc.ops import fid as fid_ops

mpmath.mp.dps = 50


def exact_nuclear_norm(c: np.ndarray) -> mpmath.mpf:
    """Return ||c||_* in 50 digits: Σ sqrt(eigenvalues of cᵀc (or c cᵀ)) for an exactly given float64 matrix."""
    gram = c @ c.T if c.shape[0] <= c.shape[1] else c.T @ c  # integer entries < 2**53: exact in float64
    values = mpmath.eigsy(mpmath.matrix(gram.tolist()), eigvals_only=True)
    return mpmath.fsum(mpmath.sqrt(max(v, 0)) for v in values)


def integer_factor(rng: np.random.Generator, d: int, rank: int) -> np.ndarray:
    """Return an exact small-integer d×rank factor (its Gram matrix is exact in float64)."""
    return rng.integers(-6, 7, size=(d, rank)).astype(np.float64)


def check(result, truth: mpmath.mpf) -> float:
    """Assert the result is within its reported bound of the truth; return the error relative to the bound."""
    error = abs(mpmath.mpf(result.value) - truth) / truth
    assert np.isfinite(result.bound) and result.bound >= 0, result
    assert error <= result.bound, (float(error), result)
    return float(error)


CASES = [(seed, d) for seed in range(12) for d in (3, 8, 17, 30)]


@pytest.fixture(params=["ext", "ref"])
def backend(request, monkeypatch):
    monkeypatch.setenv("GANSVC_KERNELS", request.param)
    return request.param


@pytest.mark.parametrize("method", ["eigh", "newton-schulz"])
def test_covariance_route_bound_holds_over_seeds_sizes_and_ranks(method, backend):
    worst = 0.0
    for seed, d in CASES:
        rng = np.random.default_rng(1000 * seed + d)
        # full rank, one singular, both singular (ranks below d), and rank-1 extremes
        rank1 = [d, d, max(1, d // 2), 1][seed % 4]
        rank2 = [d, max(1, d - 2), max(1, d // 3), d][seed % 4]
        a, b = integer_factor(rng, d, rank1), integer_factor(rng, d, rank2)
        s1, s2 = a @ a.T, b @ b.T
        truth = exact_nuclear_norm(b.T @ a)
        if truth == 0:
            continue
        result = fid_ops.trace_sqrt_product_details(torch.from_numpy(s1), torch.from_numpy(s2), method)
        worst = max(worst, check(result, truth) / max(result.bound, 1e-300))
    assert worst <= 1.0


@pytest.mark.parametrize("method", ["eigh", "newton-schulz"])
def test_samples_route_bound_holds_over_seeds_sizes_and_ranks(method, backend):
    for seed, d in CASES:
        rng = np.random.default_rng(7000 + 100 * seed + d)
        m = [2, max(2, d // 3), max(2, d - 1), d + 5][seed % 4]
        rank1 = [d, max(1, d // 2), d, 1][seed % 4]
        a = integer_factor(rng, d, rank1)
        features = rng.integers(-9, 10, size=(m, d)).astype(np.float64)
        # exact truth: S2 = Xcᵀ Xc / (m-1) with Xc = X - mean; m·Xc is an exact integer matrix
        centred_times_m = m * features - features.sum(0)
        truth = exact_nuclear_norm(centred_times_m @ a) / (m * mpmath.sqrt(m - 1))
        if truth == 0:
            continue
        result = fid_ops.trace_sqrt_product_lowrank_details(torch.from_numpy(a @ a.T), torch.from_numpy(features),
                                                            method)
        check(result, truth)


def test_the_bound_is_tight_enough_to_be_useful(backend):
    # Full-rank, well-conditioned inputs: the bound certifies close to float64 precision, not a loose 1e-6.
    rng = np.random.default_rng(3)
    a, b = integer_factor(rng, 24, 24), integer_factor(rng, 24, 24)
    for method in ("eigh", "newton-schulz"):
        result = fid_ops.trace_sqrt_product_details(torch.from_numpy(a @ a.T), torch.from_numpy(b @ b.T), method)
        check(result, exact_nuclear_norm(b.T @ a))
        assert result.bound < 1e-9, result


def test_samples_route_has_no_square_root_of_rounding_noise(backend):
    # The regression of issue 18: m < d centred samples leave one exact zero eigenvalue in the m×m problem;
    # when rounding made it positive its square root (~1e-8 relative) was added. Now the zero is projected out.
    rng = np.random.default_rng(2)
    a = integer_factor(rng, 48, 48)
    for seed in range(10):
        features = np.random.default_rng(seed).integers(-9, 10, size=(30, 48)).astype(np.float64)
        centred_times_m = 30 * features - features.sum(0)
        truth = exact_nuclear_norm(centred_times_m @ a) / (30 * mpmath.sqrt(29))
        for method in ("eigh", "newton-schulz"):
            result = fid_ops.trace_sqrt_product_lowrank_details(torch.from_numpy(a @ a.T),
                                                                torch.from_numpy(features), method)
            assert check(result, truth) < 1e-13 and result.bound < 1e-9, (method, result)
