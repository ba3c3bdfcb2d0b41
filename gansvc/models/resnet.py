"""A residual GAN (SNGAN, Miyato et al. 2018; BigGAN-style blocks) for 28, 32, 64 and 128 pixel images.

G: noise -> a base x base map (base 7 for 28 px, else 4) -> one up-sampling residual block per
doubling (BatchNorm, ReLU, nearest up-sampling, 3x3 convolutions, a 1x1 shortcut) -> BN, ReLU, 3x3
convolution, Tanh. With classes, every BatchNorm is conditional (a per-class scale and shift,
de Vries et al. 2017).
D: down-sampling residual blocks (the first one "optimised": convolution before the activation),
ReLU, a sum over positions, a linear logit; with classes, the projection term <embed(y), h>
(Miyato & Koyama 2018). Every D layer is spectrally normalised (1-Lipschitz), always.
Optional self-attention (SAGAN, Zhang et al. 2019) at one resolution in both networks.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from gansvc.models.conditional import batch_norm, check_labels, class_head, with_classes
from gansvc.models.dcgan import layout


class SelfAttention(nn.Module):
    """SAGAN self-attention over positions; starts as the identity (gamma = 0)."""

    def __init__(self, channels: int, wrap=lambda m: m):
        super().__init__()
        inner = max(1, channels // 8)
        self.query = wrap(nn.Conv2d(channels, inner, 1, bias=False))
        self.key = wrap(nn.Conv2d(channels, inner, 1, bias=False))
        self.value = wrap(nn.Conv2d(channels, channels, 1, bias=False))
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # [n, hw, inner]
        k = self.key(x).flatten(2)  # [n, inner, hw]
        attention = torch.softmax(q @ k, dim=-1)  # [n, hw, hw]
        out = (self.value(x).flatten(2) @ attention.transpose(1, 2)).view(n, c, h, w)
        return x + self.gamma * out


class GeneratorBlock(nn.Module):
    """BN-ReLU-up-conv-BN-ReLU-conv with an up-sampled 1x1 shortcut."""

    def __init__(self, cin: int, cout: int, num_classes: int):
        super().__init__()
        self.bn1, self.bn2 = batch_norm(cin, num_classes), batch_norm(cout, num_classes)
        self.conditional = num_classes > 0
        self.conv1, self.conv2 = nn.Conv2d(cin, cout, 3, 1, 1), nn.Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        extra = (labels,) if self.conditional else ()
        h = F.interpolate(F.relu(self.bn1(x, *extra)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), *extra)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class DiscriminatorBlock(nn.Module):
    """(ReLU)-conv-ReLU-conv-avgpool with a 1x1 shortcut; spectrally normalised."""

    def __init__(self, cin: int, cout: int, first: bool):
        super().__init__()
        self.first = first
        self.conv1 = spectral_norm(nn.Conv2d(cin, cout, 3, 1, 1))
        self.conv2 = spectral_norm(nn.Conv2d(cout, cout, 3, 1, 1))
        self.shortcut = spectral_norm(nn.Conv2d(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(h))), 2)
        shortcut = self.shortcut(F.avg_pool2d(x, 2)) if self.first else F.avg_pool2d(self.shortcut(x), 2)
        return h + shortcut


def attention_resolutions(image_size: int) -> tuple[int, ...]:
    """Return the resolutions where both G and D can hold self-attention (G's block outputs above the base,
    D's block outputs below the image size); ValueError for an image size the model does not build."""
    base, levels = layout(image_size)
    g_sizes = {base * 2 ** (i + 1) for i in range(levels)}
    d_sizes = {image_size // 2 ** (i + 1) for i in range(levels)}
    return tuple(sorted(g_sizes & d_sizes))


class ResNetGenerator(nn.Module):
    """Noise [N, z_dim] (and labels [N] with classes) -> images [N, C, S, S] in [-1, 1]."""

    def __init__(self, z_dim: int = 128, channels: int = 3, image_size: int = 32, width: int = 128,
                 num_classes: int = 0, attention: int = 0):  # fmt: skip
        super().__init__()
        self.z_dim, self.num_classes = z_dim, num_classes
        self.out_shape = (channels, image_size, image_size)
        self.base, levels = layout(image_size)
        self.width = width
        self.linear = nn.Linear(z_dim, width * self.base * self.base)
        self.blocks = nn.ModuleList(GeneratorBlock(width, width, num_classes) for _ in range(levels))
        sizes = [self.base * 2 ** (i + 1) for i in range(levels)]
        if attention and attention not in sizes:
            raise ValueError(f"attention: G's resolutions are {sizes}, got {attention}")
        self.attention_after = sizes.index(attention) if attention else -1
        self.attention = SelfAttention(width) if attention else None
        self.bn = nn.BatchNorm2d(width)
        self.out = nn.Conv2d(width, channels, 3, 1, 1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        check_labels(labels, self.num_classes, z.shape[0])
        h = self.linear(z.flatten(1)).view(z.shape[0], self.width, self.base, self.base)
        for i, block in enumerate(self.blocks):
            h = block(h, labels)
            if i == self.attention_after:
                h = self.attention(h)
        return torch.tanh(self.out(F.relu(self.bn(h))))


class ResNetDiscriminator(nn.Module):
    """Images [N, C, S, S] (and labels [N] with classes) -> one logit each [N]; every layer spectrally normalised."""

    def __init__(self, channels: int = 3, image_size: int = 32, width: int = 128, num_classes: int = 0,
                 attention: int = 0, aux_classifier: bool = False):  # fmt: skip
        super().__init__()
        self.num_classes = num_classes
        base, levels = layout(image_size)
        # one down-sampling block per doubling, and one more block at the base resolution (SNGAN)
        blocks, sizes = [], []
        size = image_size
        for i in range(levels):
            blocks.append(DiscriminatorBlock(channels if i == 0 else width, width, first=i == 0))
            size //= 2
            sizes.append(size)
        if attention and attention not in sizes:
            raise ValueError(f"attention: D's resolutions are {sizes}, got {attention}")
        self.attention_after = sizes.index(attention) if attention else -1
        self.attention = SelfAttention(width, wrap=spectral_norm) if attention else None
        self.blocks = nn.ModuleList(blocks)
        self.final = nn.ModuleList([spectral_norm(nn.Conv2d(width, width, 3, 1, 1)),
                                    spectral_norm(nn.Conv2d(width, width, 3, 1, 1))])  # fmt: skip
        self.linear = spectral_norm(nn.Linear(width, 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, width)) if num_classes else None
        head = class_head(width, num_classes, aux_classifier)
        self.classifier = spectral_norm(head) if head is not None else None  # every layer of this D is normalised

    def feature_blocks(self) -> list[nn.Module]:
        """Return D's blocks from the input on (FreezeD): the down-sampling residual blocks, self-attention with the
        block it follows; the block at the base resolution (final), the linear logit and the projection are the
        head, no block."""
        blocks = [nn.ModuleList([block]) for block in self.blocks]
        if self.attention is not None:
            blocks[self.attention_after].append(self.attention)
        return list(blocks)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, classes: bool = False):
        """Return D's logits [N]; with `classes`, (logits, the auxiliary classifier's class logits [N, classes])."""
        check_labels(labels, self.num_classes, x.shape[0])
        h = x
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == self.attention_after:
                h = self.attention(h)
        h = h + self.final[1](F.relu(self.final[0](F.relu(h))))  # a residual block without down-sampling
        h = F.relu(h).sum(dim=(2, 3))
        logits = self.linear(h).view(-1)
        if self.embed is not None:
            logits = logits + (self.embed(labels) * h).sum(1)  # projection (Miyato & Koyama 2018)
        return with_classes(logits, self.classifier, h, classes)
