"""Inception Score and KID against direct NumPy computations written out here from their definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gansvc.metrics.inception_score import inception_score, inception_score_per_split
from gansvc.metrics.kid import kernel_inception_distance, kid_subset_indices, polynomial_mmd2_unbiased
from tests.test_fid_ops import one_thread


@pytest.fixture(autouse=True, scope="module")
def single_threaded():
    """This module's computations on one thread (see tests/test_fid_ops.py: one_thread)."""
    with one_thread():
        yield


def numpy_inception_score(logits: np.ndarray, splits: int) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) per split, loops and all, from the softmax probabilities."""
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    n = len(p)
    scores = []
    for k in range(splits):
        part = p[k * n // splits : (k + 1) * n // splits]
        marginal = part.mean(0)
        kl = [sum(pi[c] * (np.log(pi[c]) - np.log(marginal[c])) for c in range(p.shape[1])) for pi in part]
        scores.append(np.exp(np.mean(kl)))
    return float(np.mean(scores)), float(np.std(scores))


def numpy_mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int = 3) -> float:
    """Unbiased MMD² with k(a, b) = (aᵀb / d + 1)^3, the diagonal terms excluded by explicit loops."""
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1.0) ** degree  # noqa: E731
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return float(kxx + kyy - 2 * kxy)


@pytest.mark.parametrize("n,classes,splits", [(100, 10, 10), (103, 10, 10), (50, 1008, 5), (20, 3, 1)])
def test_inception_score_matches_numpy(n, classes, splits):
    rng = np.random.default_rng(n + classes)
    logits = rng.standard_normal((n, classes)) * 3
    mean, std = inception_score(torch.from_numpy(logits).float(), splits)
    expected_mean, expected_std = numpy_inception_score(logits.astype(np.float32).astype(np.float64), splits)
    assert mean == pytest.approx(expected_mean, rel=1e-10)
    assert std == pytest.approx(expected_std, rel=1e-8, abs=1e-12)


def test_inception_score_limits():
    # Confident, evenly spread predictions score the number of classes; identical ones score 1.
    confident = torch.full((1000, 10), -1e4)
    confident[torch.arange(1000), torch.arange(1000) % 10] = 1e4
    assert inception_score(confident)[0] == pytest.approx(10.0, rel=1e-12)
    assert inception_score(torch.randn(1, 10).repeat(500, 1))[0] == pytest.approx(1.0, abs=1e-12)
    assert len(inception_score_per_split(torch.randn(30, 4), 3)) == 3


def test_inception_score_refuses_bad_input():
    with pytest.raises(ValueError, match="splits must be between 1 and the number of samples"):
        inception_score(torch.randn(5, 10), 10)
    with pytest.raises(ValueError, match="logits must be"):
        inception_score(torch.randn(5))
    with pytest.raises(ValueError, match="NaN"):
        inception_score(torch.full((4, 3), float("nan")), 2)


@pytest.mark.parametrize("m,n,d", [(2, 2, 3), (12, 9, 5), (30, 30, 64)])
def test_mmd2_matches_numpy(m, n, d):
    rng = np.random.default_rng(m * n * d)
    x, y = rng.standard_normal((m, d)) + 0.3, rng.standard_normal((n, d)) * 1.2
    assert polynomial_mmd2_unbiased(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(
        numpy_mmd2_unbiased(x, y), rel=1e-10, abs=1e-12
    )


def test_kid_matches_numpy_over_the_same_subsets():
    rng = np.random.default_rng(5)
    real, fake = rng.standard_normal((60, 8)), rng.standard_normal((45, 8)) + 0.5
    mean, std = kernel_inception_distance(real, fake, subsets=6, subset_size=20, seed=3)
    values = [numpy_mmd2_unbiased(real[r], fake[f]) for r, f in kid_subset_indices(60, 45, 6, 20, seed=3)]
    assert mean == pytest.approx(np.mean(values), rel=1e-10)
    assert std == pytest.approx(np.std(values), rel=1e-8)
    # The subset size is capped at the smaller set, as torch-fidelity does.
    capped = kernel_inception_distance(real, fake, subsets=2, subset_size=1000, seed=1)[0]
    direct = np.mean([numpy_mmd2_unbiased(real[r], fake[f]) for r, f in kid_subset_indices(60, 45, 2, 45, seed=1)])
    assert capped == pytest.approx(direct, rel=1e-10)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((2000, 16)), rng.standard_normal((2000, 16))
    same_mean, same_std = kernel_inception_distance(a, b, subsets=20, subset_size=500)
    assert abs(same_mean) < 3 * same_std / np.sqrt(20) + 1e-3
    shifted_mean, _ = kernel_inception_distance(a, b + 0.5, subsets=20, subset_size=500)
    assert shifted_mean > 10 * abs(same_mean) and shifted_mean > 0.01


def test_kid_refuses_bad_input():
    with pytest.raises(ValueError, match="differ in dimension: 3 and 4"):
        kernel_inception_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2 real and 2 fake"):
        kernel_inception_distance(np.zeros((5, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="NaN"):
        kernel_inception_distance(np.full((5, 3), np.nan), np.zeros((5, 3)))
