"""The FID bootstrap interval against a direct NumPy/SciPy computation on the same resamples."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from gansvc.metrics.bootstrap import fid_bootstrap, resample_indices
from gansvc.metrics.fid import GaussianStatistics


def direct_fid(real: GaussianStatistics, rows: np.ndarray) -> float:
    """FID in float64 with SciPy's matrix square root: the textbook formula."""
    mu, sigma = rows.mean(0), np.cov(rows, rowvar=False, ddof=1)
    root = scipy.linalg.sqrtm(real.sigma @ sigma)
    return float(((real.mu - mu) ** 2).sum() + np.trace(real.sigma) + np.trace(sigma) - 2.0 * np.trace(root).real)


def real_stats(rng, d: int) -> GaussianStatistics:
    real = rng.normal(size=(400, d)) @ rng.normal(size=(d, d)) / np.sqrt(d)
    return GaussianStatistics(real.mean(0), np.cov(real, rowvar=False, ddof=1), 400)


@pytest.mark.parametrize(("m", "d"), [(80, 6), (20, 32)])  # more samples than features, and fewer (low rank)
def test_bootstrap_interval_matches_a_direct_computation(m, d):
    rng = np.random.default_rng(1)
    real = real_stats(rng, d)
    fake = rng.normal(loc=0.3, size=(m, d))
    resamples, seed = 40, 5
    result = fid_bootstrap(real, fake, resamples, seed=seed, level=0.9)
    values = np.array([direct_fid(real, fake[rows]) for rows in resample_indices(m, resamples, seed)])
    low, high = np.percentile(values, [5.0, 95.0])
    assert result["fid_ci_low"] == pytest.approx(low, rel=1e-6)
    assert result["fid_ci_high"] == pytest.approx(high, rel=1e-6)
    assert result["fid_bootstrap_std"] == pytest.approx(values.std(ddof=1), rel=1e-5)
    assert result["fid_bootstrap"] == resamples and result["fid_ci_level"] == 0.9


def test_resamples_draw_with_replacement_reproducibly():
    a, b = resample_indices(50, 30, seed=3), resample_indices(50, 30, seed=3)
    assert np.array_equal(a, b) and a.shape == (30, 50) and a.min() >= 0 and a.max() < 50
    # with replacement: some resample repeats a row (chance of none in 30 draws of 50 from 50 is ~1e-20)
    assert any(len(np.unique(row)) < 50 for row in a)
    assert not np.array_equal(a, resample_indices(50, 30, seed=4))


def test_bad_bootstrap_settings_raise():
    real = real_stats(np.random.default_rng(0), 4)
    with pytest.raises(ValueError, match="resamples"):
        fid_bootstrap(real, np.zeros((10, 4)), 0)
    with pytest.raises(ValueError, match="level"):
        fid_bootstrap(real, np.zeros((10, 4)), 5, level=1.5)
    with pytest.raises(ValueError, match="at least 2"):
        resample_indices(1, 5)
