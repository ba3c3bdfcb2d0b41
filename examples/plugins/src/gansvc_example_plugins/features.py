"""`shapes-features`: a small feature network for the shapes data set: fixed, seeded random
convolutions (no weights file to ship or download) followed by a global pooling, 64 features; and
logits from a fixed random projection so the Inception Score path can be exercised.

Random-feature networks are a weak but honest FID extractor for toy data: the same weights on every
machine (seed 0), so scores compare across runs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ShapesFeatures(nn.Module):
    input_size = 32  # gansvc resizes images to this (antialiased bilinear)
    input_channels = 1  # it takes grey images (gansvc repeats grey to 3 channels only for 3-channel extractors)

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv2d(1, 32, 5, 2, 2)
        self.conv2 = nn.Conv2d(32, 64, 3, 2, 1)
        self.head = nn.Linear(64, 3)
        for module in (self.conv1, self.conv2, self.head):
            with torch.no_grad():
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / module.weight[0].numel() ** 0.5)
                module.bias.zero_()
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        return torch.cat([h.mean(dim=(2, 3))[:, :32], h.amax(dim=(2, 3))[:, 32:]], dim=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward(x))


def build(*, device="cpu"):
    """Return the extractor on `device`."""
    return ShapesFeatures().to(device)
