"""`stylish`: a small style-modulated GAN (a mapping network, per-layer scale and shift of the feature
maps; StyleGAN's idea without its machinery) with a minibatch-standard-deviation discriminator.

gansvc calls `build(data_shape=(C, H, W), num_classes=K, z_dim=Z, **model_args)` and trains the pair
it returns; model_args are the spec's `model_args` (here: width, mapping_layers).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def build(*, data_shape, num_classes, z_dim, width: int = 32, mapping_layers: int = 2):
    """Return (generator, discriminator) for square images `data_shape` = (C, S, S), S = 4 * 2^k or 28."""
    if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
        raise ValueError(f"stylish builds square images (C, S, S), got data of shape {tuple(data_shape)}")
    if not isinstance(width, int) or not 4 <= width <= 512:
        raise ValueError(f"width must be an integer in [4, 512], got {width!r}")
    if not isinstance(mapping_layers, int) or not 1 <= mapping_layers <= 8:
        raise ValueError(f"mapping_layers must be an integer in [1, 8], got {mapping_layers!r}")
    channels, size, _ = data_shape
    base = 7 if size % 7 == 0 else 4
    levels = 0
    while base * 2**levels < size:
        levels += 1
    if base * 2**levels != size or levels == 0:
        raise ValueError(f"stylish builds 28, 32, 64 or 128 pixel images, got {size}")
    return (Generator(z_dim, channels, base, levels, width, mapping_layers, num_classes),
            Discriminator(channels, levels, width, num_classes))  # fmt: skip


class Generator(nn.Module):
    def __init__(self, z_dim, channels, base, levels, width, mapping_layers, num_classes):
        super().__init__()
        self.base, self.width = base, width
        self.embed = nn.Embedding(num_classes, z_dim) if num_classes else None
        layers = []
        for _ in range(mapping_layers):
            layers += [nn.Linear(z_dim, z_dim), nn.LeakyReLU(0.2)]
        self.mapping = nn.Sequential(*layers)
        self.start = nn.Parameter(torch.randn(1, width, base, base))
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, 1, 1) for _ in range(levels))
        self.styles = nn.ModuleList(nn.Linear(z_dim, 2 * width) for _ in range(levels))
        self.out = nn.Conv2d(width, channels, 1)

    def forward(self, z, labels=None):
        if self.embed is not None and labels is not None:
            z = z * self.embed(labels)  # the class picks a direction in the latent space
        w = self.mapping(F.normalize(z, dim=1) * z.shape[1] ** 0.5)
        h = self.start.expand(z.shape[0], -1, -1, -1)
        for conv, style in zip(self.convs, self.styles):
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = conv(h)
            h = (h - h.mean(dim=(2, 3), keepdim=True)) / (h.std(dim=(2, 3), keepdim=True) + 1e-5)
            scale, shift = style(w).chunk(2, dim=1)
            h = F.leaky_relu(h * (1 + scale[:, :, None, None]) + shift[:, :, None, None], 0.2)
        return torch.tanh(self.out(h))


class Discriminator(nn.Module):
    def __init__(self, channels, levels, width, num_classes):
        super().__init__()
        self.input = nn.Conv2d(channels, width, 1)
        self.blocks = nn.ModuleList(nn.Conv2d(width, width, 3, 1, 1) for _ in range(levels))
        self.final = nn.Linear(width + 1, width)
        self.logit = nn.Linear(width, 1)
        self.embed = nn.Embedding(num_classes, width) if num_classes else None

    def forward(self, x, labels=None):
        h = F.leaky_relu(self.input(x), 0.2)
        for block in self.blocks:
            h = F.avg_pool2d(F.leaky_relu(block(h), 0.2), 2)
        h = h.mean(dim=(2, 3))
        # minibatch standard deviation (Karras et al.); the population form, so a batch of one gives 0, not NaN
        spread = h.std(dim=0, correction=0).mean().expand(h.shape[0], 1)
        h = F.leaky_relu(self.final(torch.cat([h, spread], dim=1)), 0.2)
        out = self.logit(h)  # [N, 1]: gansvc accepts [N] or [N, 1]
        if self.embed is not None and labels is not None:  # the projection term (Miyato & Koyama)
            out = out + (self.embed(labels) * h).sum(1, keepdim=True)
        return out
