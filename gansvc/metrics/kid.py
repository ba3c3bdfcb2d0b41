"""Kernel Inception Distance: the unbiased MMD² with the cubic polynomial kernel, averaged over subsets."""

from __future__ import annotations

import numpy as np
import torch


def polynomial_mmd2_unbiased(x, y, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> float:
    """Return the unbiased MMD² between rows x [m, d] and y [n, d] with k(a, b) = (gamma aᵀb + coef0)^degree.

    gamma defaults to 1/d (Bińkowski et al. 2018). The diagonal k(x_i, x_i) terms are left out of the
    within-set means, which makes the estimate unbiased (and possibly slightly negative).
    """
    x = _as_float64(x, "x")
    y = _as_float64(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same feature dimension, got {x.shape[1]} and {y.shape[1]}")
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 rows in each set, got {x.shape[0]} and {y.shape[0]}")
    return _mmd2_unbiased(x, y, degree, 1.0 / x.shape[1] if gamma is None else gamma, coef0)


def _mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, degree: int, gamma: float, coef0: float,
                   within_x: float | None = None, within_y: float | None = None) -> float:
    """The estimate of polynomial_mmd2_unbiased on checked float64 inputs (one kernel matrix at a time).

    within_x / within_y: the off-diagonal kernel sums of x and y when already known (a set used whole).
    """
    m, n = x.shape[0], y.shape[0]
    if within_x is None:
        within_x = _kernel_sum(x, x, True, degree, gamma, coef0)
    if within_y is None:
        within_y = _kernel_sum(y, y, True, degree, gamma, coef0)
    return (
        within_x / (m * (m - 1))
        + within_y / (n * (n - 1))
        - 2.0 * _kernel_sum(x, y, False, degree, gamma, coef0) / (m * n)
    )


def _kernel_sum(a: torch.Tensor, b: torch.Tensor, skip_diagonal: bool, degree: int, gamma: float, coef0: float):
    k = torch.addmm(torch.full((), coef0, dtype=torch.float64, device=a.device), a, b.T, alpha=gamma).pow_(degree)
    return float(k.sum() - k.diagonal().sum()) if skip_diagonal else float(k.sum())


def kid_subset_indices(n_real: int, n_fake: int, subsets: int, subset_size: int, seed: int = 0):
    """Yield (real rows, fake rows) index arrays of each subset: drawn without replacement, seeded."""
    rng = np.random.default_rng(seed)
    for _ in range(subsets):
        yield rng.choice(n_real, subset_size, replace=False), rng.choice(n_fake, subset_size, replace=False)


def kernel_inception_distance(
    real_features, fake_features, subsets: int = 100, subset_size: int = 1000, seed: int = 0, degree: int = 3
) -> tuple[float, float]:
    """Return (mean, std) of the unbiased polynomial-kernel MMD² over random subsets of both sets.

    `subset_size` is capped at the smaller set's size (as torch-fidelity and clean-fid do); the std is
    the population std over the subsets.
    """
    real = _as_float64(real_features, "real_features")
    fake = _as_float64(fake_features, "fake_features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake features differ in dimension: {real.shape[1]} and {fake.shape[1]}")
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    size = min(subset_size, real.shape[0], fake.shape[0])
    if size < 2:
        raise ValueError(f"KID needs at least 2 real and 2 fake samples, got {real.shape[0]} and {fake.shape[0]}")
    gamma = 1.0 / real.shape[1]
    real = real.to(fake.device)  # on the generated features' device (a GPU's in gansvc.metrics.evaluate)
    # A side whose subsets are the whole set (n = subset size) gives the same within-set sum every time (the
    # estimate does not depend on the rows' order): computed once. Both whole: every subset is the same.
    real_whole, fake_whole = size == real.shape[0], size == fake.shape[0]
    if real_whole and fake_whole:
        value = _mmd2_unbiased(real, fake, degree, gamma, 1.0)
        return value, 0.0
    within_real = _kernel_sum(real, real, True, degree, gamma, 1.0) if real_whole else None
    within_fake = _kernel_sum(fake, fake, True, degree, gamma, 1.0) if fake_whole else None
    values = [
        _mmd2_unbiased(real[r], fake[f], degree, gamma, 1.0, within_real, within_fake)
        for r, f in kid_subset_indices(real.shape[0], fake.shape[0], subsets, size, seed)
    ]
    return float(np.mean(values)), float(np.std(values))


def _as_float64(value, name: str) -> torch.Tensor:
    tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be feature rows [n, d], got shape {list(tensor.shape)}")
    tensor = tensor.detach().to(torch.float64)
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return tensor
