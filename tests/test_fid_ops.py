"""The FID core ops (gansvc.ops.fid) against independent float64 oracles.

Oracles, none of them gansvc code:
- pytorch-fid's formula: scipy.linalg.sqrtm(S1 @ S2), real part of the trace;
- a symmetric route in SciPy (OpenBLAS LAPACK, not torch's MKL): the symmetric square root of S1
  from scipy.linalg.eigh, then scipy.linalg.eigvalsh(S1^½ S2 S1^½);
- exactly known answers: S1 = A Aᵀ and S2 = A⁻ᵀ P diag(b) Pᵀ A⁻¹ make S1 S2 similar to diag(b), so
  Tr((S1 S2)^½) = Σ sqrt(b).
Tolerance: 1e-6 relative (torch-fidelity's published tolerance for FID), for the trace term and the
FID. Covered here by default: d in {2, 16, 128, 512} for every kind of covariance and both methods,
d = 2048 for the exactly known case; `-m slow` adds d = 2048 against sqrtm, Newton–Schulz at 2048
and the m = 1000 < d = 2048 route.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from gansvc.ops import fid as fid_ops
from gansvc.ops._ext import load_extension
from tests.conftest import devices
from tests.test_losses import cpu_build  # noqa: F401 (a fixture: each CPU kernel build this CPU runs)

pytestmark = pytest.mark.skipif(load_extension() is None, reason="gansvc._C is not built (run scripts/setup.sh)")


@contextlib.contextmanager
def one_thread():
    """Run torch (OpenMP/MKL) and NumPy/SciPy (their bundled OpenBLAS) on one thread, then restore.

    On the 2 shared cores of these machines a 2-thread team stalls or spins whenever the other core
    is busy: small ATen ops measured 70× slower, SciPy's 512×512 oracles 10×. One thread keeps the
    time of these tests steady. (OpenBLAS is reached through ctypes; threadpoolctl is not a dependency.)
    """
    previous_torch = torch.get_num_threads()
    restore = []
    with open("/proc/self/maps") as maps:
        libraries = {line.split()[-1] for line in maps if "openblas" in line and line.rstrip().endswith(".so")}
    for path in sorted(libraries):
        lib = ctypes.CDLL(path)
        for suffix in ("64_", ""):
            setter = getattr(lib, f"scipy_openblas_set_num_threads{suffix}", None)
            getter = getattr(lib, f"scipy_openblas_get_num_threads{suffix}", None)
            if setter is not None and getter is not None:
                restore.append((setter, getter()))
                setter(1)
                break
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous_torch)
        for setter, threads in restore:
            setter(threads)


@pytest.fixture(autouse=True, scope="module")
def single_threaded():
    """This module's computations on one thread (see one_thread)."""
    with one_thread():
        yield

RTOL = 1e-6
KINDS = ["spd", "rank-deficient", "near-singular", "known-spectrum"]
# known-spectrum with a positive definite S2: the main CPU route (Cholesky, Lᵀ S2 L, eigvalsh).
ALL_KINDS = KINDS + ["known-spectrum-pd"]
METHODS = ["eigh", "newton-schulz"]


# ------------------------------------------------------------------ oracles (SciPy / NumPy only)


def sqrtm_trace(s1: np.ndarray, s2: np.ndarray, eps: float = 1e-6) -> float:
    """Tr((S1 S2)^½) as pytorch-fid computes it (with its retry on a non-finite result)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    return float(np.trace(covmean).real)


def pytorch_fid_distance(mu1, s1, mu2, s2) -> float:
    """pytorch-fid's calculate_frechet_distance (its formula, restated)."""
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * sqrtm_trace(s1, s2))


def symmetric_trace(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr((S1 S2)^½) by SciPy's LAPACK: eigenvalues of S1^½ S2 S1^½ with the symmetric square root."""
    w, v = scipy.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    return float(np.sqrt(np.clip(scipy.linalg.eigvalsh(root @ s2 @ root), 0.0, None)).sum())


def _orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    if d > 512:  # a randomised orthonormal DCT-II: O(d²) to build instead of a d³ QR
        k, n = np.meshgrid(np.arange(d), np.arange(d), indexing="ij")
        dct = np.cos(np.pi * (n + 0.5) * k / d) * np.sqrt(2.0 / d)
        dct[0] /= np.sqrt(2.0)
        return (dct * rng.choice([-1.0, 1.0], d))[rng.permutation(d)]
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def _wishart(rng: np.random.Generator, d: int, n: int, scale: float = 1.0) -> np.ndarray:
    mixing = rng.standard_normal((d, d)) / math.sqrt(d) + np.eye(d)
    x = rng.standard_normal((n, d)) @ mixing * scale + rng.standard_normal(d)
    return np.cov(x, rowvar=False).reshape(d, d)


@functools.lru_cache(maxsize=None)
def covariance_pair(kind: str, d: int) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(S1, S2, exact trace or None) of one kind of problem; cached, the oracles are costly."""
    rng = np.random.default_rng(1000 * d + ALL_KINDS.index(kind))
    if kind == "spd":
        return _wishart(rng, d, 2 * d + 8), _wishart(rng, d, 2 * d + 8, scale=1.3), None
    if kind == "rank-deficient":
        # S2 from m = d/2 samples (rank m - 1), S1 with dead feature units (constant features).
        x1 = rng.standard_normal((2 * d + 8, d)) @ (rng.standard_normal((d, d)) / math.sqrt(d) + np.eye(d))
        x1[:, : max(1, d // 8)] = 3.0
        x2 = rng.standard_normal((max(2, d // 2), d)) * 1.2 + 0.5
        return np.cov(x1, rowvar=False).reshape(d, d), np.cov(x2, rowvar=False).reshape(d, d), None
    if kind == "near-singular":
        q = _orthogonal(d, rng)
        s1 = (q * np.logspace(0, -12, d)) @ q.T
        return (s1 + s1.T) / 2, _wishart(rng, d, 2 * d + 8), None
    if kind.startswith("known-spectrum"):
        # A = Q diag(s) (condition 4): A⁻¹ = diag(1/s) Qᵀ exactly, so S2 carries no inversion error.
        q, p = _orthogonal(d, rng), _orthogonal(d, rng)
        s = rng.uniform(0.5, 2.0, d)
        b = rng.uniform(0.1, 2.0, d)
        if kind == "known-spectrum":
            b[: d // 4] = 0.0  # rank-deficient S2
        s1 = (q * s**2) @ q.T
        inner = (q / s) @ p
        s2 = (inner * b) @ inner.T
        return (s1 + s1.T) / 2, (s2 + s2.T) / 2, float(np.sqrt(b).sum())
    raise AssertionError(kind)


@functools.lru_cache(maxsize=None)
def oracle_traces(kind: str, d: int) -> dict[str, float]:
    """The oracles' answers for one problem: sqrtm, symmetric SciPy, and the exact value if known."""
    s1, s2, exact = covariance_pair(kind, d)
    answers = {"sqrtm": sqrtm_trace(s1, s2), "symmetric": symmetric_trace(s1, s2)}
    if exact is not None:
        answers["exact"] = exact
    return answers


def relative_error(value: float, reference: float) -> float:
    return abs(value - reference) / abs(reference)


@pytest.fixture(params=["ext", "ref"])
def backend(request, monkeypatch):
    """Run a test on the extension and on the pure-PyTorch reference."""
    monkeypatch.setenv("GANSVC_KERNELS", request.param)
    return request.param


# ------------------------------------------------------------------ the trace term


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("d", [2, 16, 128, 512])
def test_trace_sqrt_product_matches_oracles(d, kind, method, backend):
    if backend == "ref" and d > 128:
        pytest.skip("the reference repeats the same algorithm; d <= 128 checks it")
    s1, s2, _ = covariance_pair(kind, d)
    result = fid_ops.trace_sqrt_product_details(torch.from_numpy(s1), torch.from_numpy(s2), method)
    for name, answer in oracle_traces(kind, d).items():
        assert relative_error(result.value, answer) <= RTOL, (name, result, answer)
    if method == "newton-schulz" and not result.fell_back:
        assert result.route == "newton-schulz" and 0 < result.bound < 1e-6  # its validity: test_fid_error_bound.py


@pytest.mark.parametrize("kind", ["spd", "rank-deficient", "near-singular", "known-spectrum-pd"])
def test_blocked_cpu_cholesky_across_its_blocks(kind):
    """d = 700: the CPU Cholesky runs in 256-wide blocks (256, 256, 188), failing over to eigh where it must."""
    s1, s2, _ = covariance_pair(kind, 700)
    result = fid_ops.trace_sqrt_product_details(torch.from_numpy(s1), torch.from_numpy(s2), "eigh")
    for name, answer in oracle_traces(kind, 700).items():
        assert relative_error(result.value, answer) <= RTOL, (name, result, answer)
    if kind in ("spd", "known-spectrum-pd"):
        assert result.route == "cholesky"


def test_blocked_cpu_cholesky_failing_in_a_late_block_takes_the_eigen_route():
    rng = np.random.default_rng(7)
    # 600 and 650 samples of 700 features: both covariances singular, their factorisations failing near pivot
    # 600 and 650, in the third block
    s1 = np.cov(rng.standard_normal((600, 700)) @ (np.eye(700) + rng.standard_normal((700, 700)) / 30), rowvar=False)
    s2 = np.cov(rng.standard_normal((650, 700)) * 1.1 + 0.3, rowvar=False)
    result = fid_ops.trace_sqrt_product_details(torch.from_numpy(s1), torch.from_numpy(s2), "eigh")
    assert result.route == "eigh"
    assert relative_error(result.value, symmetric_trace(s1, s2)) <= RTOL


@pytest.mark.parametrize("d", [700, 1030])
def test_blocked_cpu_cholesky_of_a_singular_sigma1_is_undone_for_sigma2s_factor(d):
    """The CPU factor is written over the call's own copy of sigma1 (so is sigma2's congruence product over its
    copy). With sigma1 singular (d/4 zero modes: the factorisation cannot finish), that copy is restored from its
    upper triangle and used with sigma2's factor: the exact value, and the caller's tensors untouched."""
    s_pd, s_singular, exact = covariance_pair("known-spectrum", d)
    sigma1, sigma2 = torch.from_numpy(s_singular.copy()), torch.from_numpy(s_pd.copy())
    result = fid_ops.trace_sqrt_product_details(sigma1, sigma2, "eigh")
    assert result.route == "cholesky" and result.rank == d
    assert relative_error(result.value, exact) <= 1e-12, (result, exact)
    assert torch.equal(sigma1, torch.from_numpy(s_singular)) and torch.equal(sigma2, torch.from_numpy(s_pd))


@pytest.mark.parametrize("d", [300, 700])
def test_an_exactly_symmetric_sigma2_is_read_in_place_and_an_asymmetric_one_symmetrised(d):
    """The CPU trace reads an exactly symmetric float64 sigma2 itself (no copy) and never writes it; sigma2 with an
    antisymmetric part inside the accepted tolerance (1e-7 relative) is symmetrised first. Both give the exact
    value to 1e-12, which the asymmetric matrix used as it is misses (a mutation doing so fails here)."""
    s1, s2, exact = covariance_pair("known-spectrum-pd", d)
    rng = np.random.default_rng(d)
    e = np.triu(rng.standard_normal((d, d)), 1) * 1e-7 * np.abs(s2).max()
    for given in (s2, s2 + e - e.T):
        sigma1, sigma2 = torch.from_numpy(s1.copy()), torch.from_numpy(given.copy())
        result = fid_ops.trace_sqrt_product_details(sigma1, sigma2, "eigh")
        assert result.route == "cholesky" and result.rank == d
        assert relative_error(result.value, exact) <= 1e-12, (result, exact)
        assert torch.equal(sigma1, torch.from_numpy(s1)) and torch.equal(sigma2, torch.from_numpy(given))


def test_trace_sqrt_product_exact_at_2048():
    s1, s2, exact = covariance_pair("known-spectrum-pd", 2048)
    result = fid_ops.trace_sqrt_product_details(s1, s2)
    assert result.route == "cholesky" and result.rank == 2048
    assert relative_error(result.value, exact) <= RTOL


@pytest.mark.slow
def test_trace_sqrt_product_exact_at_2048_with_singular_s2():
    s1, s2, exact = covariance_pair("known-spectrum", 2048)
    result = fid_ops.trace_sqrt_product_details(s1, s2, "eigh")
    assert relative_error(result.value, exact) <= RTOL
    assert result.route == "cholesky"  # of S1; S2's d/4 zero modes fall in the noise band


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_trace_sqrt_product_against_sqrtm_at_2048(kind):
    s1, s2, _ = covariance_pair(kind, 2048)
    value = fid_ops.trace_sqrt_product(s1, s2, "eigh")
    for name, answer in oracle_traces(kind, 2048).items():
        assert relative_error(value, answer) <= RTOL, (name, value, answer)


@pytest.mark.slow
def test_newton_schulz_at_2048():
    s1, s2, exact = covariance_pair("known-spectrum", 2048)
    result = fid_ops.trace_sqrt_product_details(s1, s2, "newton-schulz")
    assert relative_error(result.value, exact) <= RTOL
    assert result.route == "newton-schulz", result


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("d", [2, 16, 128, 512])
def test_frechet_distance_matches_pytorch_fid(d, kind, method):
    if method == "newton-schulz" and d > 128:
        pytest.skip("Newton–Schulz at d = 512 is checked on the trace term; d <= 128 here")
    s1, s2, _ = covariance_pair(kind, d)
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d) * 0.1
    traces = float(np.trace(s1) + np.trace(s2))
    expected = float((mu1 - mu2) @ (mu1 - mu2)) + traces - 2 * oracle_traces(kind, d)["sqrtm"]
    assert relative_error(pytorch_fid_distance(mu1, s1, mu2, s2), expected) <= 1e-12  # the oracle itself
    value = fid_ops.frechet_distance(mu1, s1, mu2, s2, method)
    assert relative_error(value, expected) <= RTOL
    symmetric = expected + 2 * oracle_traces(kind, d)["sqrtm"] - 2 * oracle_traces(kind, d)["symmetric"]
    assert relative_error(value, symmetric) <= RTOL


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("d", [2, 128, 512])
def test_identical_inputs_give_zero(d, kind, method, backend):
    if d > 128 and (backend == "ref" or method == "newton-schulz"):
        pytest.skip("the reference and Newton–Schulz are checked at d <= 128 (the eigen route at 512)")
    s1, _, _ = covariance_pair(kind, d)
    mu = np.random.default_rng(0).standard_normal(d)
    value = fid_ops.frechet_distance(mu, s1, mu, s1, method)
    # Rounding only: the eigen route leaves ~1e-14 Tr(S), Newton–Schulz ~1e-11 on near-singular S.
    assert abs(value) <= 1e-9 * np.trace(s1), value


def test_float32_and_numpy_inputs_are_computed_in_float64(backend):
    s1, s2, exact = covariance_pair("known-spectrum", 16)
    assert relative_error(fid_ops.trace_sqrt_product(s1, s2), exact) <= 1e-12  # NumPy float64
    # float32 statistics: the matrices carry ~1e-7 relative rounding (S2's zero eigenvalues become
    # ±1e-7 noise, which the noise band counts as 0), so the answer is the exact one to ~1e-7.
    as_float32 = fid_ops.trace_sqrt_product(torch.from_numpy(s1).float(), torch.from_numpy(s2).float())
    assert relative_error(as_float32, exact) <= 1e-6


# ------------------------------------------------------------------ Newton–Schulz specifics


@pytest.mark.parametrize("kind", ["spd", "known-spectrum"])
def test_newton_schulz_converges_and_verifies(kind, backend):
    s1, s2, _ = covariance_pair(kind, 128)
    result = fid_ops.trace_sqrt_product_details(s1, s2, "newton-schulz")
    assert result.route == "newton-schulz" and not result.fell_back
    assert 0 < result.iterations < fid_ops.DEFAULT_MAX_ITER
    answers = oracle_traces(kind, 128)
    error = relative_error(result.value, answers.get("exact", answers["symmetric"]))
    # the bound holds; S2's dropped zero modes (known-spectrum) make it honest at ~1e-7, not 1e-10
    assert error <= 1e-10 and error <= result.bound < (1e-6 if kind == "known-spectrum" else 1e-9)


def test_newton_schulz_falls_back_to_the_eigen_route_when_not_converged(backend):
    s1, s2, exact = covariance_pair("known-spectrum", 128)
    result = fid_ops.trace_sqrt_product_details(s1, s2, "newton-schulz", max_iter=3)
    assert result.fell_back and result.route == "eigh" and result.iterations == 3  # S2 singular: eigh factor
    assert relative_error(result.value, exact) <= 1e-12


@pytest.mark.parametrize("kind", ["spd", "near-singular", "known-spectrum"])
def test_newton_schulz_error_bound_holds_when_stopped_early(kind, backend):
    # A loose stopping rule and tolerance make it stop long before convergence; the bound it then
    # reports must still cover the true error, and the estimate approaches the trace from below.
    s1, s2, exact = covariance_pair(kind, 64 if kind != "known-spectrum" else 128)
    truth = exact if exact is not None else symmetric_trace(s1, s2)
    for rtol in (0.3, 0.05, 1e-3, 1e-6):
        result = fid_ops.trace_sqrt_product_details(s1, s2, "newton-schulz", rtol=rtol, verify_tol=0.9)
        if result.route != "newton-schulz":
            continue
        error = relative_error(result.value, truth)
        assert result.value <= truth * (1 + 1e-12)
        assert error <= result.bound * (1 + 1e-9) + 1e-13, (rtol, error, result)


# ------------------------------------------------------------------ the m×m route (m < d)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("d,m", [(2, 2), (16, 5), (128, 40), (512, 200)])
def test_lowrank_route_matches_the_full_computation(d, m, method, backend):
    if backend == "ref" and d > 128:
        pytest.skip("the reference repeats the same algorithm; d <= 128 checks it")
    s1, _, _ = covariance_pair("rank-deficient", d)  # with dead units in S1
    x = np.random.default_rng(m).standard_normal((m, d)) * 2 + 1
    s2 = np.cov(x, rowvar=False).reshape(d, d)
    lowrank = fid_ops.trace_sqrt_product_lowrank_details(s1, x, method)
    assert lowrank.route.startswith("samples") and lowrank.rank <= m
    full = fid_ops.trace_sqrt_product(s1, s2, method)
    assert relative_error(lowrank.value, full) <= RTOL
    assert relative_error(lowrank.value, symmetric_trace(s1, s2)) <= RTOL
    assert relative_error(lowrank.value, sqrtm_trace(s1, s2)) <= RTOL


def test_the_lowrank_route_reads_an_exactly_symmetric_sigma1_in_place_and_symmetrises_an_asymmetric_one():
    """sigma1 is only read by the m×m route: an exactly symmetric float64 one is used as it is and left untouched;
    one with an antisymmetric part inside the tolerance (1e-7 relative) gives the symmetric part's value to 1e-12,
    where the matrix used as it is moves it by 6e-10 (NumPy, the same product)."""
    s1, _, _ = covariance_pair("known-spectrum-pd", 300)
    x = np.random.default_rng(3).standard_normal((100, 300)) * 2 + 1
    e = np.triu(np.random.default_rng(4).standard_normal((300, 300)), 1) * 1e-7 * np.abs(s1).max()
    values = []
    for given in (s1, s1 + e - e.T):
        sigma1, features = torch.from_numpy(given.copy()), torch.from_numpy(x.copy())
        values.append(fid_ops.trace_sqrt_product_lowrank_details(sigma1, features, "eigh").value)
        assert torch.equal(sigma1, torch.from_numpy(given)) and torch.equal(features, torch.from_numpy(x))
    assert relative_error(values[0], symmetric_trace(s1, np.cov(x, rowvar=False))) <= RTOL
    assert relative_error(values[1], values[0]) <= 1e-12, values


@pytest.mark.slow
def test_lowrank_route_at_2048_with_1000_samples():
    rng = np.random.default_rng(7)
    s1, _, _ = covariance_pair("spd", 2048)
    x = np.maximum(rng.standard_normal((1000, 2048)) @ (rng.standard_normal((2048, 2048)) / 45), 0)
    s2 = np.cov(x, rowvar=False)
    lowrank = fid_ops.trace_sqrt_product_lowrank(s1, x)
    assert relative_error(lowrank, fid_ops.trace_sqrt_product(s1, s2)) <= RTOL
    assert relative_error(lowrank, sqrtm_trace(s1, s2)) <= RTOL


# ------------------------------------------------------------------ the fused element kernels


def test_ns_polar_step_kernel(backend):
    gen = torch.Generator().manual_seed(0)
    x, q, b = (torch.randn(300, 70, dtype=torch.float64, generator=gen) for _ in range(3))
    expected_x = 1.5 * x.numpy() - 0.5 * q.numpy()
    expected_trace = float((expected_x * b.numpy()).sum())
    trace = fid_ops.ns_polar_step_(x, q, b)
    assert trace.dtype == torch.float64 and trace.dim() == 0
    np.testing.assert_allclose(x.numpy(), expected_x, rtol=0, atol=1e-15)
    assert relative_error(float(trace), expected_trace) <= 1e-13


def test_sum_squared_difference_kernel(backend):
    gen = torch.Generator().manual_seed(1)
    a, b = (torch.randn(1000, 123, dtype=torch.float64, generator=gen) for _ in range(2))
    expected = float(((a.numpy() - b.numpy()) ** 2).sum())
    assert relative_error(float(fid_ops.sum_squared_difference(a, b)), expected) <= 1e-13


def check_symmetrize_checked():
    """symmetrize_checked against NumPy, across the CPU kernel's 128-wide tiles and the 8-wide blocks of its AVX-512
    build, with non-finite entries in a diagonal tile, a full off-diagonal block pair and a partial one; the CPU
    extension's statistics-only pass (which lets the trace read an exactly symmetric sigma2 without a copy) too,
    on an exactly symmetric matrix as well."""
    rng = np.random.default_rng(8)
    stats_only = load_extension()._symmetry_stats
    for d in (1, 7, 9, 63, 127, 128, 129, 300):
        s = rng.standard_normal((d, d))
        sym, stats = fid_ops.symmetrize_checked(torch.from_numpy(s))
        np.testing.assert_array_equal(sym.numpy(), (s + s.T) * 0.5)
        assert stats.tolist() == [np.abs(s).max(), np.abs(s - s.T).max(), 0.0]
        assert stats_only(torch.from_numpy(s)).tolist() == stats.tolist()
        assert stats_only(torch.from_numpy(np.triu(s) + np.triu(s, 1).T)).tolist() == [np.abs(np.triu(s)).max(), 0.0,
                                                                                       0.0]
    s[3, 7], s[5, 5], s[250, 70], s[298, 10] = np.nan, np.inf, -np.inf, np.nan
    _, stats = fid_ops.symmetrize_checked(torch.from_numpy(s))
    assert stats[2] == 7  # entries (3, 7), (7, 3), (5, 5), (250, 70), (70, 250), (298, 10), (10, 298)
    clean = s.copy()
    clean[3, 7] = clean[7, 3] = clean[5, 5] = clean[250, 70] = clean[70, 250] = clean[298, 10] = clean[10, 298] = 0.0
    assert stats[0] == np.abs(clean).max() and stats[1] == np.abs(clean - clean.T).max()
    assert stats_only(torch.from_numpy(s)).tolist() == stats.tolist()


def test_symmetrize_checked_kernel(backend):
    check_symmetrize_checked()


def test_symmetrize_checked_kernel_on_each_cpu_build(cpu_build):
    check_symmetrize_checked()


def test_element_kernels_do_not_depend_on_the_thread_count():
    gen = torch.Generator().manual_seed(2)
    a, b = (torch.randn(700, 700, dtype=torch.float64, generator=gen) for _ in range(2))
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            x = a.clone()
            results.append((float(fid_ops.sum_squared_difference(a, b)), float(fid_ops.ns_polar_step_(x, b, a))))
    finally:
        torch.set_num_threads(threads)
    assert results[0] == results[1]


def test_op_schemas_declare_their_mutations():
    gen = torch.Generator().manual_seed(3)
    x, q, b = (torch.randn(8, 5, dtype=torch.float64, generator=gen) for _ in range(3))
    torch.library.opcheck(torch.ops.gansvc.ns_polar_step_.default, (x, q, b), test_utils="test_schema")
    mean, m2 = torch.zeros(5, dtype=torch.float64), torch.zeros(5, 5, dtype=torch.float64)
    torch.library.opcheck(torch.ops.gansvc.feature_moments_update_.default, (mean, m2, 0, q), test_utils="test_schema")
    torch.library.opcheck(torch.ops.gansvc.trace_sqrt_product.default, (x.T @ x, q.T @ q), test_utils="test_schema")


# ------------------------------------------------------------------ feature moments (the op level)


def test_feature_moments_match_numpy_despite_a_large_mean(backend):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((2500, 7)) * 0.01 + 1e4).astype(np.float32)  # |μ|/σ = 1e6
    mean, m2 = torch.zeros(7, dtype=torch.float64), torch.zeros(7, 7, dtype=torch.float64)
    count = fid_ops.feature_moments_update_(mean, m2, 0, torch.from_numpy(x[:1100]))
    count = fid_ops.feature_moments_update_(mean, m2, count, torch.from_numpy(x[1100:]))
    exact = x.astype(np.float64)
    assert count == 2500
    np.testing.assert_allclose(mean.numpy(), exact.mean(0), rtol=1e-14)
    np.testing.assert_allclose(m2.numpy() / (count - 1), np.cov(exact, rowvar=False), rtol=1e-9, atol=1e-16)


def test_feature_moments_merge_equals_one_pass(backend):
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.standard_normal((3001, 9)) + 3)
    parts = []
    for rows in (x[:10], x[10:2000], x[2000:]):
        mean, m2 = torch.zeros(9, dtype=torch.float64), torch.zeros(9, 9, dtype=torch.float64)
        parts.append((mean, m2, fid_ops.feature_moments_update_(mean, m2, 0, rows)))
    mean, m2, count = parts[0]
    for other in parts[1:]:
        count = fid_ops.feature_moments_merge_(mean, m2, count, *other)
    assert count == 3001
    np.testing.assert_allclose(mean.numpy(), x.numpy().mean(0), rtol=1e-13)
    np.testing.assert_allclose(m2.numpy() / 3000, np.cov(x.numpy(), rowvar=False), rtol=1e-11)


# ------------------------------------------------------------------ bad input


def _spd(d: int) -> torch.Tensor:
    a = torch.randn(d + 3, d, dtype=torch.float64, generator=torch.Generator().manual_seed(d))
    return a.T @ a


def _indefinite() -> torch.Tensor:
    return torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64)  # eigenvalues 3 and -1


BAD_TRACE_INPUTS = [
    (lambda: (torch.ones(3, 4, dtype=torch.float64), _spd(3)), "sigma1 must be a square"),
    (lambda: (_spd(3), _spd(4)), "same size"),
    (lambda: (_spd(3), _spd(3).masked_fill(torch.eye(3, dtype=torch.bool), float("nan"))), "sigma2 contains NaN"),
    (lambda: (_spd(3) + torch.triu(torch.ones(3, 3, dtype=torch.float64), 1), _spd(3)), "sigma1 is not symmetric"),
    (lambda: (-_spd(3), _spd(3)), "sigma1 is not a covariance matrix"),
    (lambda: (_indefinite(), _spd(2)), "sigma1 is not positive semi-definite"),
    (lambda: (_spd(2), _indefinite()), "sigma2 is not positive semi-definite"),
    (lambda: (torch.ones(3, 3, dtype=torch.int64), _spd(3)), "sigma1 must be a floating-point"),
]


@pytest.mark.parametrize("make,message", BAD_TRACE_INPUTS)
def test_bad_covariances_are_refused_with_the_argument_named(make, message, backend):
    s1, s2 = make()
    with pytest.raises(ValueError, match=message):
        fid_ops.trace_sqrt_product(s1, s2)


def test_bad_settings_are_refused(backend):
    s = _spd(3)
    with pytest.raises(ValueError, match="method must be one of"):
        fid_ops.trace_sqrt_product(s, s, "sqrtm")
    with pytest.raises(ValueError, match="max_iter must be >= 1"):
        fid_ops.trace_sqrt_product_details(s, s, "newton-schulz", max_iter=0)
    with pytest.raises(ValueError, match="mu2 must be a vector of 3 means"):
        fid_ops.frechet_distance(torch.zeros(3), s, torch.zeros(4), s)
    with pytest.raises(ValueError, match="features2 has 4 features per row"):
        fid_ops.trace_sqrt_product_lowrank(s, torch.zeros(5, 4))
    with pytest.raises(ValueError, match="at least 2 rows"):
        fid_ops.trace_sqrt_product_lowrank(s, torch.zeros(1, 3))
    mean, m2 = torch.zeros(3, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"batch must be a matrix \[n, 3\]"):
        fid_ops.feature_moments_update_(mean, m2, 0, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="batch contains NaN"):
        fid_ops.feature_moments_update_(mean, m2, 0, torch.full((2, 3), float("inf")))


# ------------------------------------------------------------------ GPU (skips without one)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("method", ["auto", *METHODS])
def test_ops_on_each_device(device, method):
    s1, s2, exact = covariance_pair("known-spectrum", 128)
    t1, t2 = torch.from_numpy(s1).to(device), torch.from_numpy(s2).to(device)
    result = fid_ops.trace_sqrt_product_details(t1, t2, method)
    assert relative_error(result.value, exact) <= 1e-10
    if device == "cuda" and method == "auto":
        assert result.route == "newton-schulz"
    x = torch.randn(50, 128, dtype=torch.float64, device=device)
    lowrank = fid_ops.trace_sqrt_product_lowrank(t1, x, method)
    assert relative_error(lowrank, symmetric_trace(s1, np.cov(x.cpu().numpy(), rowvar=False))) <= RTOL
    mean = torch.zeros(128, dtype=torch.float64, device=device)
    m2 = torch.zeros(128, 128, dtype=torch.float64, device=device)
    assert fid_ops.feature_moments_update_(mean, m2, 0, x) == 50
    np.testing.assert_allclose(m2.cpu().numpy() / 49, np.cov(x.cpu().numpy(), rowvar=False), rtol=1e-10, atol=1e-13)


# ------------------------------------------------------------------ kernel vs an independent reference


@pytest.mark.parametrize("method", ["eigh", "newton-schulz"])
@pytest.mark.parametrize("kind", KINDS)
def test_extension_matches_the_reference_and_the_reference_needs_no_kernel(kind, method, monkeypatch):
    """gansvc.ops.fid_reference is plain torch: with every dispatching FID function broken it still answers,
    and the extension (where built) agrees with it."""
    from gansvc.ops import fid_reference

    s1, s2, _ = covariance_pair(kind, 64)
    t1, t2 = torch.from_numpy(s1), torch.from_numpy(s2)
    kernel = fid_ops.trace_sqrt_product_details(t1, t2, method).value if fid_ops.selftest.kernels_for(t1) else None

    def broken(*args, **kwargs):
        raise AssertionError("the reference called a dispatching kernel")

    for name in ("ns_polar_step_", "sum_squared_difference", "symmetrize_checked", "trace_sqrt_product_details",
                 "feature_moments_update_", "feature_moments_merge_", "frechet_distance"):
        monkeypatch.setattr(fid_ops, name, broken)
    monkeypatch.setattr(torch.ops, "gansvc", None)  # any torch.ops.gansvc.* call fails
    reference = fid_reference.reference_trace_sqrt_product(t1, t2, method).value
    assert relative_error(reference, symmetric_trace(s1, s2)) <= RTOL
    if kernel is not None:
        assert relative_error(kernel, reference) <= RTOL
