"""Class conditioning shared by the built-in models: conditional BatchNorm in G and the projection term in D.

- ConditionalBatchNorm (de Vries et al. 2017): BatchNorm without its own affine, then a per-class scale
  (initialised to 1) and shift (0), so at start every class is the unconditional network.
- Projection (Miyato & Koyama 2018): D's logit gets <embed(y), phi(x)> added, phi(x) its last features.
- Auxiliary classifier (AC-GAN, Odena et al. 2017), beside the projection: a linear head on the same phi(x) gives
  class logits, which D(x, labels, classes=True) returns with the logit (the trainer's `ac_weight` term).
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


def class_head(features: int, num_classes: int, aux_classifier: bool) -> nn.Linear | None:
    """Return D's auxiliary classifier (features -> one logit per class) when asked, else None."""
    if not aux_classifier:
        return None
    if num_classes < 1:
        raise ValueError("aux_classifier: an auxiliary classifier needs classes (a conditional model)")
    head = nn.Linear(features, num_classes)
    nn.init.normal_(head.weight, 0.0, 0.02)  # as small as D's other weights at start
    nn.init.zeros_(head.bias)
    return head


def with_classes(logits: torch.Tensor, head: nn.Module | None, features: torch.Tensor, classes: bool):
    """Return D's output: the logits, or (logits, class logits [N, classes]) when `classes` is asked."""
    if not classes:
        return logits
    if head is None:
        raise ValueError("classes: this discriminator has no auxiliary classifier (built without aux_classifier)")
    return logits, head(features)
