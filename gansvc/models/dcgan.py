"""DCGAN (Radford et al., 2016) for square images of 28 (7 x 2^2), 32, 64 or 128 (4 x 2^k) pixels.

G: a transposed convolution from the noise to a base x base map of width * 2^(k-1) channels, then k
stride-2 up-convolutions halving the channels (BatchNorm + ReLU), Tanh at the end. D mirrors it with
stride-2 convolutions and LeakyReLU(0.2), then one base x base convolution to a single logit.
With classes, G's BatchNorms are conditional and D adds the projection term on its last feature map
(summed over positions); without classes the layout (and its state_dict) is the plain DCGAN's.
With `minibatch_std`, D's last convolution also sees ProGAN's minibatch standard-deviation channel.
With `upsample`, G doubles its maps by nearest-neighbour copies and a 3 x 3 convolution in place of each 4 x 4
stride-2 transposed convolution (Odena et al., 2016: no checkerboard of uneven kernel overlap).
With `pack` > 1, D is PacGAN's (Lin et al., 2018): it judges `pack` images at a time, stacked on the channels
(consecutive images in the batch), and returns one logit per pack.
"""

from __future__ import annotations

import torch
from torch import nn

from gansvc.models.conditional import batch_norm, check_labels, class_head, run_sequence, with_classes


def layout(image_size: int) -> tuple[int, int]:
    """Return (base, levels): image_size = base * 2**levels with base 7 (28 px) or 4; ValueError otherwise."""
    for base in (4, 7):
        levels = 0
        size = base
        while size < image_size:
            size *= 2
            levels += 1
        if size == image_size and levels >= 1:
            return base, levels
    raise ValueError(f"image_size: DCGAN builds 28, 32, 64 or 128 pixel images, got {image_size}")


class DCGANGenerator(nn.Module):
    """Noise [N, z_dim] -> images [N, C, S, S] in [-1, 1]."""

    def __init__(self, z_dim: int = 100, channels: int = 1, image_size: int = 28, width: int = 64,
                 num_classes: int = 0, upsample: bool = False):  # fmt: skip
        super().__init__()
        self.z_dim = z_dim
        self.num_classes = num_classes
        self.out_shape = (channels, image_size, image_size)
        base, levels = layout(image_size)
        ch = width * 2 ** (levels - 1)
        layers: list[nn.Module] = [nn.ConvTranspose2d(z_dim, ch, base, 1, 0, bias=False), batch_norm(ch, num_classes),
                                   nn.ReLU(True)]  # fmt: skip
        for _ in range(levels - 1):
            layers += [*up_convolution(ch, ch // 2, upsample, bias=False), batch_norm(ch // 2, num_classes),
                       nn.ReLU(True)]  # fmt: skip
            ch //= 2
        layers += [*up_convolution(ch, channels, upsample, bias=True), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if not self.num_classes:
            return self.main(z.view(z.shape[0], -1, 1, 1))
        check_labels(labels, self.num_classes, z.shape[0])
        return run_sequence(self.main, z.view(z.shape[0], -1, 1, 1), labels)


def up_convolution(in_channels: int, out_channels: int, upsample: bool, bias: bool) -> list[nn.Module]:
    """Return the layers that double a map's size: a 4 x 4 stride-2 transposed convolution, or with `upsample`
    nearest-neighbour doubling then a 3 x 3 convolution (every output pixel sees the same number of inputs)."""
    if upsample:
        return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=bias)]
    return [nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=bias)]


class MinibatchStd(nn.Module):
    """ProGAN's minibatch standard deviation (Karras et al., 2018): one channel appended to a feature map [N, C, H, W]
    holding, for each image, the standard deviation of every feature over its group of images, averaged over
    features and positions. A collapsed G (images alike) shows up there, so D can penalise a lack of variety.

    Groups of `group` images (the largest size up to it that divides N), image i in group i mod N/size, as ProGAN
    strides them; float32 statistics under autocast. No parameters: the state_dict is unchanged.
    """

    def __init__(self, group: int):
        super().__init__()
        if group < 1:
            raise ValueError(f"minibatch_std: group size must be >= 1, got {group}")
        self.group = group

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n, _, height, width = h.shape
        size = next(g for g in range(min(self.group, n), 0, -1) if n % g == 0)
        y = h.float().reshape(size, n // size, *h.shape[1:])
        std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt()  # [N / size, C, H, W]
        spread = std.mean(dim=(1, 2, 3)).repeat(size)  # image i: its group's (i mod N / size)
        return torch.cat([h, spread.to(h.dtype).view(n, 1, 1, 1).expand(n, 1, height, width)], dim=1)

    def extra_repr(self) -> str:
        return f"group={self.group}"


class DCGANDiscriminator(nn.Module):
    """Images [N, C, S, S] -> one logit each [N]. norm: 'batch' (classic DCGAN) or 'none' (with SN / penalties)."""

    def __init__(self, channels: int = 1, image_size: int = 28, width: int = 64, norm: str = "batch",
                 num_classes: int = 0, aux_classifier: bool = False, minibatch_std: int = 0,
                 pack: int = 1, classifier_classes: int = 0):  # fmt: skip
        super().__init__()
        self.num_classes = num_classes
        if norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none', got {norm!r}")
        if pack < 1 or (pack > 1 and num_classes):
            raise ValueError(f"pack must be >= 1 and 1 for a conditional D, got {pack}")
        self.pack = pack
        base, levels = layout(image_size)
        layers: list[nn.Module] = [nn.Conv2d(channels * pack, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = width
        for _ in range(levels - 1):
            layers.append(nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=norm != "batch"))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(ch * 2))
            layers.append(nn.LeakyReLU(0.2, True))
            ch *= 2
        self.minibatch_std = MinibatchStd(minibatch_std) if minibatch_std else None
        layers.append(nn.Conv2d(ch + (1 if self.minibatch_std is not None else 0), 1, base, 1, 0))
        self.main = nn.Sequential(*layers)
        self.embed = nn.Embedding(num_classes, ch) if num_classes else None
        # the auxiliary classifier: of the conditioning classes, or (classifier_classes, an unconditional D) of the
        # data's labels
        self.classifier = (class_head(ch, classifier_classes, True) if classifier_classes and not num_classes
                           else class_head(ch, num_classes, aux_classifier))  # fmt: skip
        init_weights(self)
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, 0.0, 0.02)  # the projection starts as small as the other weights

    def feature_blocks(self) -> list[nn.Module]:
        """Return D's blocks from the input on (FreezeD): each stride-2 convolution with its BatchNorm and
        activation; the last convolution to the logit and the class projection are the head, no block."""
        blocks: list[list[nn.Module]] = []
        for layer in self.main[:-1]:
            if isinstance(layer, nn.Conv2d):
                blocks.append([])
            blocks[-1].append(layer)
        return [nn.Sequential(*block) for block in blocks]

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, classes: bool = False):
        """Return D's logits [N] ([N / pack] packed); with `classes`, (logits, the auxiliary classifier's class logits
        [N, classes])."""
        if self.pack > 1:
            x = packed(x, self.pack)
        if self.embed is None and self.minibatch_std is None and not classes:
            return self.main(x).view(-1)
        h = self.main[:-1](x)
        head_input = h if self.minibatch_std is None else self.minibatch_std(h)
        logits = self.main[-1](head_input).view(-1)
        features = h.sum(dim=(2, 3))
        if self.embed is not None:
            check_labels(labels, self.num_classes, x.shape[0])
            logits = logits + (self.embed(labels) * features).sum(1)
        return with_classes(logits, self.classifier, features, classes)


def packed(x: torch.Tensor, pack: int) -> torch.Tensor:
    """Return images [N, C, H, W] as N / pack stacks [N / pack, pack * C, H, W] of consecutive images; ValueError
    when pack does not divide N."""
    n, c, height, width = x.shape
    if n % pack:
        raise ValueError(f"pack: D judges {pack} images at a time, and a batch of {n} does not split into packs")
    return x.reshape(n // pack, pack * c, height, width)


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02), BatchNorm scale N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:  # conditional BatchNorm keeps its own (1, 0) start
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
