"""A bootstrap confidence interval of the FID: how much the score moves with the generated sample drawn.

The generated feature rows are resampled with replacement (as many rows as there are) `resamples` times;
each resample's FID against the same real statistics is computed (gansvc.metrics.fid), and the interval
is the percentile interval of those FIDs. The real statistics stay fixed: they are usually computed from
a whole split (or a published file), and the question the interval answers is how much a run's score
depends on the samples it happened to draw.

Bootstrap FIDs sit above the FID of the original sample (a resample repeats rows, which shrinks its
covariance), so the interval need not contain the point estimate; its width is what compares runs.
"""

from __future__ import annotations

import numpy as np
import torch

from gansvc.metrics.fid import GaussianStatistics, fid_from_features

DEFAULT_LEVEL = 0.95
MAX_RESAMPLES = 100_000


def resample_indices(count: int, resamples: int, seed: int = 0) -> np.ndarray:
    """Return [resamples, count] row indices drawn with replacement (NumPy's PCG64 seeded by `seed`)."""
    if count < 2:
        raise ValueError(f"a bootstrap needs at least 2 samples, got {count}")
    if not 1 <= resamples <= MAX_RESAMPLES:
        raise ValueError(f"resamples must be in [1, {MAX_RESAMPLES}], got {resamples}")
    return np.random.default_rng(seed).integers(0, count, size=(resamples, count))


def fid_bootstrap(
    real: GaussianStatistics, fake_features, resamples: int, seed: int = 0, level: float = DEFAULT_LEVEL
) -> dict:
    """Return {fid_ci_low, fid_ci_high, fid_ci_level, fid_bootstrap, fid_bootstrap_std} of generated feature
    rows [m, d] against real statistics: the percentile interval of `resamples` bootstrap FIDs."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    features = torch.as_tensor(np.asarray(fake_features) if not isinstance(fake_features, torch.Tensor)
                               else fake_features).detach().cpu()  # fmt: skip
    if features.dim() != 2:
        raise ValueError(f"fake features must be [m, d], got {list(features.shape)}")
    indices = resample_indices(features.shape[0], resamples, seed)
    values = np.array([fid_from_features(real, features[torch.from_numpy(rows)]).fid for rows in indices])
    tail = (1.0 - level) / 2.0
    low, high = np.percentile(values, [100.0 * tail, 100.0 * (1.0 - tail)])
    return {
        "fid_ci_low": float(low),
        "fid_ci_high": float(high),
        "fid_ci_level": float(level),
        "fid_bootstrap": int(resamples),
        "fid_bootstrap_std": float(values.std(ddof=1)) if resamples > 1 else 0.0,
    }
