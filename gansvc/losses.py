"""The GAN loss families a user names — bce, hinge, wasserstein — on the fused kernels.

All losses take discriminator *logits* (raw outputs, no sigmoid) and are means over the batch.
For `bce` the discriminator loss is the SUM of the real and the fake term,
BCE(D(x), 1) + BCE(D(G(z)), 0) = softplus(-s_real) + softplus(s_fake), so at the equilibrium
D = 1/2 it equals 2 ln 2 ≈ 1.386 and the non-saturating generator loss equals ln 2 ≈ 0.693,
the values the source documents derive.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from gansvc import ops

FAMILIES = ("bce", "hinge", "wasserstein")


class DiscriminatorLoss(NamedTuple):
    """The D loss and the statistics a user watches, all 0-dim tensors (float32, or float64 input)."""

    loss: torch.Tensor
    mean_real: torch.Tensor  # mean D(x): sigmoid of the logits for bce, raw critic value otherwise
    mean_fake: torch.Tensor  # mean D(G(z)), same convention
    accuracy: torch.Tensor  # share of real logits > 0 and fake logits < 0


class GeneratorLoss(NamedTuple):
    """The G loss and mean D(G(z)) (sigmoid for bce, raw otherwise), 0-dim tensors."""

    loss: torch.Tensor
    mean_fake: torch.Tensor


def discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, family: str = "bce", real_label: float = 1.0
) -> DiscriminatorLoss:
    """Return D's loss for `family` in one fused pass; `real_label < 1` is one-sided label smoothing."""
    loss, stats = ops.d_loss(real_logits, fake_logits, family, real_label)
    return DiscriminatorLoss(loss, stats[0], stats[1], stats[2])


def relativistic_logits(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return RaGAN's relative logits (Jolicoeur-Martineau 2018): each side's logits less the other side's mean.

    D's relativistic average loss is the plain D loss of these; G's is the same loss with the roles swapped,
    `discriminator_loss(fake_rel, real_rel)`: G is rewarded for fakes that look more real than the average real
    and for reals that then look less real than the average fake. Gradients flow through both means.
    """
    return real_logits - fake_logits.mean(), fake_logits - real_logits.mean()


def generator_loss(fake_logits: torch.Tensor, family: str = "bce", saturating: bool = False) -> GeneratorLoss:
    """Return G's loss: for bce the non-saturating -log D(G(z)), or log(1 - D(G(z))) if `saturating`."""
    loss, stats = ops.g_loss(fake_logits, generator_kind(family, saturating))
    return GeneratorLoss(loss, stats[0])


def generator_kind(family: str, saturating: bool = False) -> str:
    """Return the kernels' name of G's loss for `family`: ns | minimax (bce) | hinge | wasserstein."""
    if family == "bce":
        return "minimax" if saturating else "ns"
    if saturating:
        raise ValueError(f"saturating=True applies to the bce family only, not {family!r}")
    return family
