"""Class conditioning shared by the built-in models: conditional BatchNorm in G and the projection term in D.

- ConditionalBatchNorm (de Vries et al. 2017): BatchNorm without its own affine, then a per-class scale
  (initialised to 1) and shift (0), so at start every class is the unconditional network.
- Projection (Miyato & Koyama 2018): D's logit gets <embed(y), phi(x)> added, phi(x) its last features.
"""

from __future__ import annotations

import torch
from torch import nn


class ConditionalBatchNorm(nn.Module):
    """BatchNorm whose scale and shift are chosen by the class label."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 for conditional BatchNorm, got {num_classes}")
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.scale = nn.Embedding(num_classes, channels)
        self.shift = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * self.scale(labels)[:, :, None, None] + self.shift(labels)[:, :, None, None]


def batch_norm(channels: int, num_classes: int) -> nn.Module:
    """Return conditional BatchNorm with classes, plain BatchNorm2d without (the unconditional layout unchanged)."""
    return ConditionalBatchNorm(channels, num_classes) if num_classes else nn.BatchNorm2d(channels)


def run_sequence(layers: nn.Sequential, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Run layers in order, giving the labels to the conditional ones."""
    for layer in layers:
        x = layer(x, labels) if isinstance(layer, ConditionalBatchNorm) else layer(x)
    return x


def check_labels(labels: torch.Tensor | None, num_classes: int, n: int) -> None:
    """Raise a ValueError naming `labels` unless a conditional model got one class index per sample."""
    if not num_classes:
        return
    if torch.jit.is_tracing():  # n is a traced size there; comparing it would freeze the example's batch size
        if labels is None:
            raise ValueError("labels: a conditional model needs one label per sample")
        return
    if labels is None or labels.shape != (n,):
        got = None if labels is None else list(labels.shape)
        raise ValueError(f"labels: a conditional model needs one label per sample ([{n}]), got {got}")
