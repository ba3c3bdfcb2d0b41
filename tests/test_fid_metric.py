"""FID at the metric level: FeatureStats, statistics files, the m < d choice, the real-set cache, and
FID of Fashion-MNIST's train set against its test set and against noise with the shipped fmnist-cnn.

Oracles: NumPy (np.mean, np.cov in float64) and pytorch-fid's formula with scipy.linalg.sqrtm.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from gansvc.metrics import FeatureStats, GaussianStatistics, fid_from_features, frechet_distance
from gansvc.metrics import reference as reference_module
from gansvc.metrics.fid import load_statistics, save_statistics
from gansvc.ops import fid as fid_ops
from gansvc.ops._ext import load_extension
from tests.test_fid_ops import one_thread

pytestmark = pytest.mark.skipif(load_extension() is None, reason="gansvc._C is not built (run scripts/setup.sh)")


@pytest.fixture(autouse=True, scope="module")
def single_threaded():
    """This module's computations on one thread (see tests/test_fid_ops.py: one_thread)."""
    with one_thread():
        yield

# FID(Fashion-MNIST train, test) with fmnist-cnn features measured 0.40 (60 000 vs 10 000 images).
# Two disjoint random parts of the *train* set, 50 000 vs 10 000, give 0.54 and 30 000 vs 30 000
# give 0.31: the train/test value is finite-sample noise of one distribution. Dropping one class of
# ten from the train set already gives 17, uniform noise ~760. A bound of 1.0 therefore passes
# "same distribution up to sampling" and fails a generator that misses a class.
TRAIN_VS_TEST_BOUND = 1.0
NOISE_LOWER_BOUND = 300.0


def pytorch_fid(mu1, s1, mu2, s2) -> float:
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real)


# ------------------------------------------------------------------ FeatureStats


def test_feature_stats_match_numpy_for_any_batch_sizes():
    rng = np.random.default_rng(0)
    d = 700  # the CPU route gathers rows into chunks of 2**23 // 700 = 11983: batches below, at and across that
    assert fid_ops.syrk_chunk_rows(d) == 11983
    x = (rng.standard_normal((30000, d)) * rng.uniform(0.1, 5, d) + rng.uniform(-50, 50, d)).astype(np.float32)
    stats = FeatureStats()
    start = 0
    for size in (1, 7, 2995, 11982, 11983, 3032):
        stats.update(torch.from_numpy(x[start : start + size]))
        start += size
    assert stats.count == 30000 and stats.dim == d
    exact = x.astype(np.float64)
    np.testing.assert_allclose(stats.mean().numpy(), exact.mean(0), rtol=1e-13, atol=1e-12)
    cov = stats.covariance().numpy()
    np.testing.assert_allclose(cov, np.cov(exact, rowvar=False), rtol=1e-11, atol=1e-12)
    assert np.array_equal(cov, cov.T)


def test_feature_stats_reads_between_small_batches_see_every_row():
    """Small CPU batches wait in a buffer: every read (mean, covariance, state_dict, merge) folds them in first."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((900, 40)).astype(np.float32) * 2 + 3
    stats, other = FeatureStats(), FeatureStats()
    for start in range(0, 600, 50):
        stats.update(torch.from_numpy(x[start : start + 50]))
        seen = x[: start + 50].astype(np.float64)
        np.testing.assert_allclose(stats.mean().numpy(), seen.mean(0), rtol=1e-12)
        if start:
            np.testing.assert_allclose(stats.covariance().numpy(), np.cov(seen, rowvar=False), rtol=1e-10, atol=1e-12)
    other.update(torch.from_numpy(x[600:]))
    state = other.state_dict()
    assert state["count"] == 300
    np.testing.assert_allclose(state["mean"].numpy(), x[600:].astype(np.float64).mean(0), rtol=1e-12)
    stats.update(torch.from_numpy(x[:0]))  # an empty batch changes nothing
    stats.merge(other)
    assert stats.count == 900
    np.testing.assert_allclose(stats.covariance().numpy(), np.cov(x.astype(np.float64), rowvar=False),
                               rtol=1e-10, atol=1e-12)
    # a float64 batch after float32 ones: the float32 rows are folded in first, then the float64 ones
    stats.update(torch.from_numpy(x[:10].astype(np.float64)))
    both = np.concatenate([x, x[:10]]).astype(np.float64)
    np.testing.assert_allclose(stats.covariance().numpy(), np.cov(both, rowvar=False), rtol=1e-10, atol=1e-12)


def test_feature_stats_merge_across_workers_equals_one_stream():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((3000, 12)) * 3 + 7)
    whole = FeatureStats().update(x)
    workers = [FeatureStats().update(x[i::3]) for i in range(3)]  # e.g. three processes
    merged = FeatureStats()
    for worker in workers:  # as a gather would deliver them: through state_dict
        merged.merge(FeatureStats.from_state_dict(worker.state_dict()))
    assert merged.count == 3000
    np.testing.assert_allclose(merged.mean().numpy(), whole.mean().numpy(), rtol=1e-13)
    np.testing.assert_allclose(merged.covariance().numpy(), whole.covariance().numpy(), rtol=1e-11)
    empty = FeatureStats(12)
    assert empty.merge(FeatureStats()).count == 0


def test_feature_stats_accepts_numpy_and_4d_features_and_refuses_bad_ones():
    stats = FeatureStats(4)
    stats.update(np.ones((3, 4, 1, 1)))
    stats.update(np.arange(8.0).reshape(2, 4))
    assert stats.count == 5
    with pytest.raises(ValueError, match="batch has 5 features per row, these statistics have 4"):
        stats.update(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="feature rows"):
        stats.update(torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match="at least 2 rows"):
        FeatureStats(3).update(torch.zeros(1, 3)).covariance()
    for bad in (float("nan"), float("inf"), -float("inf")):
        rows = torch.ones(6, 4)
        rows[4, 2] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            stats.update(rows)
    assert stats.count == 5  # a refused batch leaves the statistics as they were
    np.testing.assert_allclose(stats.covariance().numpy(), np.cov(np.array([[1.0] * 4] * 3 + [[0, 1, 2, 3],
                                                                  [4, 5, 6, 7]]), rowvar=False), rtol=1e-13)


def test_feature_stats_other_dtypes_and_the_extension_route_agree_with_numpy():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 9)) * 4 + 20
    for dtype in (torch.float16, torch.bfloat16, torch.int32, torch.float64):
        rows = torch.from_numpy(x).to(dtype)
        stats = FeatureStats().update(rows[:100]).update(rows[100:])
        exact = rows.double().numpy()
        np.testing.assert_allclose(stats.covariance().numpy(), np.cov(exact, rowvar=False), rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(stats.mean().numpy(), exact.mean(0), rtol=1e-13)
    # the device route's op (the extension or its reference) on the CPU gives the same statistics
    mean, m2 = torch.zeros(9, dtype=torch.float64), torch.zeros(9, 9, dtype=torch.float64)
    count = fid_ops.feature_moments_update_(mean, m2, 0, torch.from_numpy(x))
    np.testing.assert_allclose((m2 / (count - 1)).numpy(), np.cov(x, rowvar=False), rtol=1e-11)


def test_feature_stats_memory_does_not_grow_with_the_number_of_rows():
    stats = FeatureStats(64)
    for _ in range(20):
        stats.update(torch.randn(5000, 64))
    state = stats.state_dict()
    assert state["mean"].numel() == 64 and state["m2"].shape == (64, 64) and stats.count == 100_000


# ------------------------------------------------------------------ statistics files (pytorch-fid's .npz)


def test_statistics_round_trip_in_pytorch_fid_format(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 6))
    stats = GaussianStatistics(x.mean(0), np.cov(x, rowvar=False), 50)
    path = save_statistics(tmp_path / "stats.npz", stats, kid_features=x.astype(np.float32))
    with np.load(path) as raw:  # what pytorch-fid reads: f["mu"], f["sigma"]
        np.testing.assert_array_equal(raw["mu"], stats.mu)
        np.testing.assert_array_equal(raw["sigma"], stats.sigma)
    loaded, extra = load_statistics(path)
    assert loaded.count == 50 and extra["kid_features"].shape == (50, 6)
    np.savez(tmp_path / "pytorch_fid.npz", mu=stats.mu, sigma=stats.sigma)  # a file pytorch-fid wrote
    assert load_statistics(tmp_path / "pytorch_fid.npz")[0].count is None
    np.savez(tmp_path / "bad.npz", mean=stats.mu)
    with pytest.raises(ValueError, match="need the keys mu and sigma; missing mu, sigma"):
        load_statistics(tmp_path / "bad.npz")


# ------------------------------------------------------------------ FID from features: the m < d route


@pytest.mark.parametrize("m", [5, 40, 80, 300])
def test_fid_from_features_matches_pytorch_fid_and_picks_the_route(m):
    d = 64
    rng = np.random.default_rng(m)
    real = rng.standard_normal((400, d)) @ (rng.standard_normal((d, d)) / 8 + np.eye(d))
    fake = rng.standard_normal((m, d)) * 1.1 + 0.2
    real_stats = GaussianStatistics(real.mean(0), np.cov(real, rowvar=False))
    result = fid_from_features(real_stats, torch.from_numpy(fake))
    expected = pytorch_fid(real_stats.mu, real_stats.sigma, fake.mean(0), np.cov(fake, rowvar=False))
    assert abs(result.fid - expected) <= 1e-6 * abs(expected)
    assert result.trace.route == ("samples" if m < d else "cholesky")
    assert result.fake.count == m


def test_fid_is_zero_for_the_same_features():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 20)) + 4
    stats = FeatureStats().update(x).statistics()
    assert abs(frechet_distance(stats, stats)) <= 1e-10 * np.trace(stats.sigma)
    assert abs(fid_from_features(stats, x).fid) <= 1e-10 * np.trace(stats.sigma)


# ------------------------------------------------------------------ Fashion-MNIST with the shipped classifier


@pytest.fixture(scope="module")
def fmnist_references(tmp_path_factory, fashion_mnist_root):
    """Train and test statistics through real_reference with a private cache (computed once here)."""
    from gansvc.metrics import get_extractor

    cache = tmp_path_factory.mktemp("cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("GANSVC_CACHE_DIR", str(cache))
    try:
        extractor = get_extractor("fmnist-cnn")
        train = reference_module.real_reference("fashion-mnist:train", extractor, fashion_mnist_root)
        test = reference_module.real_reference("fashion-mnist:test", extractor, fashion_mnist_root)
        yield extractor, train, test, cache
    finally:
        patch.undo()


def test_fid_train_vs_test_is_small_and_noise_is_large(fmnist_references):
    extractor, train, test, _ = fmnist_references
    assert (train.count, test.count) == (60_000, 10_000)
    fid = frechet_distance(train.stats, test.stats)
    assert 0 < fid < TRAIN_VS_TEST_BOUND, fid
    expected = pytorch_fid(train.stats.mu, train.stats.sigma, test.stats.mu, test.stats.sigma)
    assert abs(fid - expected) <= 1e-6 * expected
    noise = torch.rand(2000, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise_features, _ = extractor(noise)
    assert fid_from_features(train.stats, noise_features).fid > NOISE_LOWER_BOUND


def test_reference_statistics_are_cached_and_reused(fmnist_references, fashion_mnist_root, monkeypatch):
    extractor, _, test, cache = fmnist_references
    monkeypatch.setenv("GANSVC_CACHE_DIR", str(cache))
    assert test.cache_path is not None and test.cache_path.parent == cache / "fid-stats"
    with np.load(test.cache_path) as raw:
        assert set(raw.files) >= {"mu", "sigma", "kid_features"} and raw["kid_features"].shape == (10_000, 128)
    assert not list(cache.glob("fid-stats/.*.tmp"))  # atomic writes leave no temp files

    def fail(*args, **kwargs):
        raise AssertionError("the features were computed again instead of read from the cache")

    monkeypatch.setattr(reference_module, "_compute", fail)
    reference_module._MEMO.clear()  # the file, not this process's memory, is what is tested here
    again = reference_module.real_reference("fashion-mnist:test", extractor, fashion_mnist_root)
    np.testing.assert_array_equal(again.stats.sigma, test.stats.sigma)
    assert again.count == 10_000
    # A different subset is a different key: computed, not confused with the cached full set.
    with pytest.raises(AssertionError, match="computed again"):
        reference_module.real_reference("fashion-mnist:test", extractor, fashion_mnist_root, n_real=500)


def test_a_pytorch_fid_statistics_file_serves_as_the_real_side(fmnist_references, tmp_path):
    extractor, _, test, _ = fmnist_references
    path = tmp_path / "fid_stats_fmnist_test.npz"
    np.savez(path, mu=test.stats.mu, sigma=test.stats.sigma)
    reference = reference_module.real_reference(str(path), extractor)
    np.testing.assert_array_equal(reference.stats.sigma, test.stats.sigma)
    assert reference.kid_features is None and reference.count is None
    np.savez(tmp_path / "wrong_dim.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(ValueError, match="2048-d features but the fmnist-cnn extractor gives 128-d"):
        reference_module.real_reference(str(tmp_path / "wrong_dim.npz"), extractor)
