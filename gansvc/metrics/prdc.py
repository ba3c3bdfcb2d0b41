"""Precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al. 2020) on features.

Each real sample gets a ball whose radius is the distance to its k-th nearest other real sample (and
each generated sample a ball among the generated ones); then

- precision: the share of generated samples inside at least one real ball (fidelity),
- recall:    the share of real samples inside at least one generated ball (diversity),
- density:   how many real balls hold each generated sample, averaged and divided by k,
- coverage:  the share of real samples whose ball holds at least one generated sample.

The order of the arguments matters (real first): precision and recall are not symmetric, and a
well-known implementation once shipped them swapped (tests/test_prdc.py checks the order). The
comparisons are strict (d < radius), as in Naeem et al.'s reference code.

Distances are computed in float64 in row chunks against the whole other set, so 50 000 x 50 000
needs memory for one chunk of distances (chunk x n x 8 bytes), never the whole matrix.
"""

from __future__ import annotations

import torch

CHUNK_BYTES = 256 * 2**20  # one chunk of float64 distances at most this large


def _as_float64(x, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must be a [N, d] feature matrix with N >= 2, got shape {list(x.shape)}")
    return x.detach().to(torch.float64)


def _chunks(n_rows: int, n_cols: int):
    step = max(1, CHUNK_BYTES // (8 * max(1, n_cols)))
    for lo in range(0, n_rows, step):
        yield lo, min(n_rows, lo + step)


def _squared_distances(a: torch.Tensor, b: torch.Tensor, b_norms: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between the rows of a and b ([len(a), len(b)]), clamped at 0."""
    d = torch.addmm(b_norms.unsqueeze(0), a, b.T, alpha=-2.0)
    d += a.square().sum(1, keepdim=True)
    return d.clamp_(min=0.0)


def knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Return each row's squared distance to its k-th nearest other row of x."""
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"k must be in [1, {x.shape[0] - 1}] for {x.shape[0]} samples, got {k}")
    norms = x.square().sum(1)
    radii = torch.empty(x.shape[0], dtype=torch.float64)
    for lo, hi in _chunks(x.shape[0], x.shape[0]):
        d = _squared_distances(x[lo:hi], x, norms)
        d[torch.arange(hi - lo), torch.arange(lo, hi)] = 0.0  # a row's distance to itself, exactly
        radii[lo:hi] = d.topk(k + 1, dim=1, largest=False).values[:, k]  # index 0 is the row itself
    return radii


def precision_recall_density_coverage(real, fake, k: int = 3) -> dict[str, float]:
    """Return {precision, recall, density, coverage, k, n_real, n_fake} of generated features `fake`
    [M, d] against real features `real` [N, d] (real first: the metrics are not symmetric)."""
    real, fake = _as_float64(real, "real"), _as_float64(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake features differ in dimension: {real.shape[1]} vs {fake.shape[1]}")
    real_radii, fake_radii = knn_radii(real, k), knn_radii(fake, k)
    real_norms, fake_norms = real.square().sum(1), fake.square().sum(1)

    inside_real_balls = torch.zeros(fake.shape[0], dtype=torch.int64)  # per fake: how many real balls hold it
    for lo, hi in _chunks(fake.shape[0], real.shape[0]):
        d = _squared_distances(fake[lo:hi], real, real_norms)
        inside_real_balls[lo:hi] = (d < real_radii.unsqueeze(0)).sum(1)

    recalled = torch.zeros(real.shape[0], dtype=torch.bool)  # per real: inside some fake ball
    covered = torch.zeros(real.shape[0], dtype=torch.bool)  # per real: its ball holds some fake
    for lo, hi in _chunks(real.shape[0], fake.shape[0]):
        d = _squared_distances(real[lo:hi], fake, fake_norms)
        recalled[lo:hi] = (d < fake_radii.unsqueeze(0)).any(1)
        covered[lo:hi] = d.min(1).values < real_radii[lo:hi]
    return {
        "precision": float((inside_real_balls > 0).double().mean()),
        "recall": float(recalled.double().mean()),
        "density": float(inside_real_balls.double().sum() / (k * fake.shape[0])),
        "coverage": float(covered.double().mean()),
        "k": k,
        "n_real": int(real.shape[0]),
        "n_fake": int(fake.shape[0]),
    }
