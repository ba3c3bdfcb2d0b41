"""The seeds' MLP GAN: G 100 -> 256 -> 256 -> 784 (Tanh), D 784 -> 256 -> 256 -> 1, ReLU between."""

from __future__ import annotations

import math

import torch
from torch import nn


class MLPGenerator(nn.Module):
    """Noise [N, z_dim] -> samples of `out_shape` ([C, H, W] images in [-1, 1] via Tanh, or raw 2-D points)."""

    def __init__(self, z_dim: int = 100, out_shape=(1, 28, 28), hidden: int = 256, tanh: bool = True):
        super().__init__()
        self.z_dim = z_dim
        self.out_shape = tuple(out_shape)
        layers = [
            nn.Linear(z_dim, hidden),
            nn.ReLU(True),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Linear(hidden, math.prod(self.out_shape)),
        ]
        if tanh:
            layers.append(nn.Tanh())
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z).view(z.shape[0], *self.out_shape)


class MLPDiscriminator(nn.Module):
    """Samples of `in_shape` -> one logit each [N] (no Sigmoid: the losses take logits)."""

    def __init__(self, in_shape=(1, 28, 28), hidden: int = 256):
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.main = nn.Sequential(
            nn.Linear(math.prod(self.in_shape), hidden),
            nn.ReLU(True),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x.flatten(1)).view(-1)
