"""The 8-Gaussians ring in 2-D, the classic mode-collapse test, and its modes-covered / high-quality metric.

Setting and metric as in VEEGAN (Srivastava et al., 2017) and PacGAN (Lin et al., 2018): eight
Gaussians with standard deviation 0.02 whose means sit evenly on a circle of radius 2. A generated
point is *high quality* when it lies within three standard deviations of its nearest mean; a mode is
*covered* when at least 20 of every 2 500 generated points are high-quality points registered to it
(PacGAN's "a mode is lost if fewer than 20 of 2 500 samples are registered into it").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NUM_MODES = 8
RADIUS = 2.0
STD = 0.02
HIGH_QUALITY_STDS = 3.0
COVERAGE_SHARE = 20 / 2500  # a mode needs this share of all samples to count as covered
EVAL_SAMPLES = 2500
TRAIN_POINTS = 64_000
TEST_POINTS = 10_000
_SPLIT_SEEDS = {"train": 0, "test": 1}


@dataclass
class PointData:
    """A 2-D point data set in memory: float32 points [N, 2] and the index of the mode each came from."""

    name: str
    points: torch.Tensor
    labels: torch.Tensor
    num_classes: int

    def __len__(self) -> int:
        return self.points.shape[0]


def ring_centers(dtype=torch.float64) -> torch.Tensor:
    """Return the 8 means [8, 2] on the circle of radius 2 (angles 0, 45, ... 315 degrees)."""
    angles = torch.arange(NUM_MODES, dtype=torch.float64) * (2 * math.pi / NUM_MODES)
    return (RADIUS * torch.stack([angles.cos(), angles.sin()], dim=1)).to(dtype)


def sample_ring(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Return n points float32 [n, 2] drawn evenly from the 8 modes, and their mode indices int64 [n]."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(NUM_MODES, (n,), generator=generator)
    noise = torch.randn(n, 2, generator=generator, dtype=torch.float64) * STD
    return (ring_centers()[labels] + noise).float(), labels


def load_gaussian_mixture(split: str = "train") -> PointData:
    """Return the fixed 8-Gaussians ring data set for `split` ('train' 64 000 points, 'test' 10 000)."""
    if split not in _SPLIT_SEEDS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    points, labels = sample_ring(TRAIN_POINTS if split == "train" else TEST_POINTS, _SPLIT_SEEDS[split])
    return PointData("gaussian-mixture", points, labels, NUM_MODES)


def ring_quality(samples: torch.Tensor) -> dict:
    """Return modes_covered (of 8), high_quality_fraction and per-mode high-quality counts for points [N, 2]."""
    if samples.ndim != 2 or samples.shape[1] != 2 or samples.shape[0] == 0:
        raise ValueError(f"samples must be points [N, 2] with N >= 1, got shape {tuple(samples.shape)}")
    points = samples.detach().to("cpu", torch.float64)
    distances = torch.cdist(points, ring_centers())
    nearest_distance, nearest = distances.min(dim=1)
    high_quality = nearest_distance <= HIGH_QUALITY_STDS * STD
    counts = torch.bincount(nearest[high_quality], minlength=NUM_MODES)
    needed = COVERAGE_SHARE * points.shape[0]
    return {
        "modes_covered": int((counts >= needed).sum()),
        "high_quality_fraction": float(high_quality.double().mean()),
        "mode_counts": counts.tolist(),
    }
