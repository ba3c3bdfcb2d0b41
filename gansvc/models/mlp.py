"""The seeds' MLP GAN: G 100 -> 256 -> 256 -> 784 (Tanh), D 784 -> 256 -> 256 -> 1, ReLU between.

With classes, G takes a learnt label embedding beside the noise (its first layer widens by the
embedding size) and D adds the projection term <embed(y), h> on its last hidden features; without
classes the networks are the seeds' exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gansvc.models.conditional import check_labels, class_head, with_classes


class MLPGenerator(nn.Module):
    """Noise [N, z_dim] -> samples of `out_shape` ([C, H, W] images in [-1, 1] via Tanh, or raw 2-D points)."""

    def __init__(self, z_dim: int = 100, out_shape=(1, 28, 28), hidden: int = 256, tanh: bool = True,
                 num_classes: int = 0):  # fmt: skip
        super().__init__()
        self.z_dim = z_dim
        self.num_classes = num_classes
        self.out_shape = tuple(out_shape)
        self.embed = nn.Embedding(num_classes, min(z_dim, 50)) if num_classes else None
        layers = [
            nn.Linear(z_dim + (self.embed.embedding_dim if num_classes else 0), hidden),
            nn.ReLU(True),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Linear(hidden, math.prod(self.out_shape)),
        ]
        if tanh:
            layers.append(nn.Tanh())
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            check_labels(labels, self.num_classes, z.shape[0])
            z = torch.cat([z, self.embed(labels)], dim=1)
        return self.main(z).view(z.shape[0], *self.out_shape)


class MLPDiscriminator(nn.Module):
    """Samples of `in_shape` -> one logit each [N] (no Sigmoid: the losses take logits)."""

    def __init__(self, in_shape=(1, 28, 28), hidden: int = 256, num_classes: int = 0, aux_classifier: bool = False):
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, hidden) if num_classes else None
        self.main = nn.Sequential(
            nn.Linear(math.prod(self.in_shape), hidden),
            nn.ReLU(True),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Linear(hidden, 1),
        )
        self.classifier = class_head(hidden, num_classes, aux_classifier)

    def feature_blocks(self) -> list[nn.Module]:
        """Return D's blocks from the input on (FreezeD): each hidden Linear layer with its ReLU; the last Linear
        to the logit and the class projection are the head, no block."""
        return [self.main[0:2], self.main[2:4]]

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, classes: bool = False):
        """Return D's logits [N]; with `classes`, (logits, the auxiliary classifier's class logits [N, classes])."""
        if self.embed is None:
            return self.main(x.flatten(1)).view(-1)
        check_labels(labels, self.num_classes, x.shape[0])
        h = self.main[:-1](x.flatten(1))
        return with_classes(self.main[-1](h).view(-1) + (self.embed(labels) * h).sum(1), self.classifier, h, classes)
