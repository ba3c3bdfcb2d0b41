"""Evaluation on the device: the device-generic FID path (statistics where the features are, the Newton–Schulz
trace route with its bound), the route choice by measured float64 rate, and KID's whole-set shortcut. The GPU
route runs here on the CPU (forced), against the eigen route and NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gansvc.metrics.fid import (
    GaussianStatistics,
    fid_from_features,
    float64_gemm_rate,
    statistics_device,
    trace_report,
)
from gansvc.metrics.kid import kernel_inception_distance


def numpy_fid(mu1, s1, mu2, s2) -> float:
    eig = np.linalg.eigvals(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(eig.real, 0, None)).sum())


def relu_features(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weights = np.random.default_rng(0).standard_normal((16, d)) / 4
    return np.maximum((rng.standard_normal((n, 16)) + shift) @ weights + 0.1 * rng.standard_normal((n, d)), 0)


@pytest.fixture(scope="module")
def real_stats() -> GaussianStatistics:
    x = relu_features(2000, 48, seed=1)
    return GaussianStatistics(x.mean(0), np.cov(x, rowvar=False), 2000)


@pytest.mark.parametrize("m", [30, 400])  # the m×m route (m < d) and the d×d route
def test_newton_schulz_route_forced_on_the_cpu_matches_the_eigen_route(real_stats, m):
    fake = relu_features(m, 48, seed=2, shift=0.3).astype(np.float32)
    ns = fid_from_features(real_stats, torch.from_numpy(fake), method="newton-schulz")
    eig = fid_from_features(real_stats, torch.from_numpy(fake), method="eigh")
    x = fake.astype(np.float64)
    expected = numpy_fid(real_stats.mu, real_stats.sigma, x.mean(0), np.cov(x, rowvar=False))
    assert ns.fid == pytest.approx(expected, rel=1e-7) and eig.fid == pytest.approx(expected, rel=1e-7)
    report, eig_report = trace_report(ns), trace_report(eig)
    assert report["route"] == ("samples-newton-schulz" if m < 48 else "newton-schulz") and not report["fell_back"]
    assert 0 < report["error_bound"] <= 1e-9 and report["iterations"] > 0 and report["device"] == "cpu"
    assert eig_report["route"] in ("samples", "cholesky", "eigh") and 0 < eig_report["error_bound"] <= 1e-9
    # both bounds hold, so the two answers are within their sum of each other (the bounds' validity over many
    # seeds, sizes and ranks against 50-digit arithmetic: tests/test_fid_error_bound.py)
    gap = abs(ns.trace.value - eig.trace.value) / eig.trace.value
    assert gap <= report["error_bound"] + eig_report["error_bound"], (gap, report, eig_report)


def test_newton_schulz_fallback_is_reported(real_stats, monkeypatch):
    from gansvc.ops import fid as fid_ops

    fake = torch.from_numpy(relu_features(400, 48, seed=3))
    real_details = fid_ops.trace_sqrt_product_details
    monkeypatch.setattr(fid_ops, "trace_sqrt_product_details",
                        lambda s1, s2, method: real_details(s1, s2, method, max_iter=1))
    result = fid_from_features(real_stats, fake, method="newton-schulz")
    report = trace_report(result)
    assert report["fell_back"] and report["route"] in ("cholesky", "eigh") and 0 < report["error_bound"] <= 1e-9
    assert result.fid == pytest.approx(fid_from_features(real_stats, fake, method="eigh").fid, rel=1e-12)


def test_statistics_stay_where_the_features_are(real_stats):
    fake = torch.from_numpy(relu_features(100, 48, seed=4))
    result = fid_from_features(real_stats, fake)
    assert result.device == "cpu" and result.fake.count == 100
    np.testing.assert_allclose(result.fake.sigma, np.cov(fake.numpy(), rowvar=False), rtol=1e-12, atol=1e-14)


def test_route_device_is_chosen_by_measured_float64_rate():
    assert statistics_device("cpu") == torch.device("cpu")
    rates = {"cpu": 5e10}
    gpu = torch.device("cuda", 0)
    rates["cuda"] = 6e13  # a datacentre GPU: the features stay there
    assert statistics_device(gpu, rate=lambda d: rates[d.type]) == gpu
    rates["cuda"] = 3e10  # a consumer GPU's float64: the CPU does the float64 work
    assert statistics_device(gpu, rate=lambda d: rates[d.type]) == torch.device("cpu")
    measured = float64_gemm_rate(torch.device("cpu"))
    assert measured > 1e7 and measured == float64_gemm_rate(torch.device("cpu"))  # measured once


def numpy_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    m, n = len(x), len(y)
    return (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()


def test_kid_with_whole_sets_computes_the_one_subset_once():
    rng = np.random.default_rng(5)
    real, fake = rng.standard_normal((40, 12)), rng.standard_normal((40, 12)) + 0.2
    mean, std = kernel_inception_distance(real, fake, subsets=100, subset_size=1000)
    assert mean == pytest.approx(numpy_mmd2(real, fake), rel=1e-12) and std == 0.0


def test_kid_with_one_whole_side_matches_numpy_over_the_subsets():
    from gansvc.metrics.kid import kid_subset_indices

    rng = np.random.default_rng(6)
    real, fake = rng.standard_normal((50, 12)), rng.standard_normal((30, 12)) + 0.2
    values = [numpy_mmd2(real[r], fake[f]) for r, f in kid_subset_indices(50, 30, 7, 30, seed=2)]
    mean, std = kernel_inception_distance(real, fake, subsets=7, subset_size=30, seed=2)
    assert mean == pytest.approx(np.mean(values), rel=1e-12) and std == pytest.approx(np.std(values), rel=1e-9)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_features_give_the_cpu_fid(real_stats):
    fake = torch.from_numpy(relu_features(400, 48, seed=7))
    on_gpu = fid_from_features(real_stats, fake.cuda())
    on_cpu = fid_from_features(real_stats, fake)
    assert on_gpu.device.startswith("cuda") and trace_report(on_gpu)["route"] in ("newton-schulz", "cholesky", "eigh")
    assert on_gpu.fid == pytest.approx(on_cpu.fid, rel=1e-8)
