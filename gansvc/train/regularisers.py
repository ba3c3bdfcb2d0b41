"""Penalties on D's input gradient: WGAN-GP (Gulrajani et al., 2017) and R1 (Mescheder et al., 2018)."""

from __future__ import annotations

import torch


def mixing_weights(
    real: torch.Tensor, generator: torch.Generator, global_batch: int | None = None, offset: int = 0
) -> torch.Tensor:
    """Return the WGAN-GP mixing weights [n, 1, ...] of rows [offset, offset + n) of a global batch (n = len(real)).

    They are drawn for the whole global batch and sliced, as one process would draw them.
    """
    n = real.shape[0]
    shape = (global_batch or n,) + (1,) * (real.dim() - 1)
    return torch.rand(shape, device=real.device, generator=generator, dtype=real.dtype)[offset : offset + n]


def gradient_penalty(
    discriminator,
    real: torch.Tensor,
    fake: torch.Tensor,
    weight: float,
    generator: torch.Generator,
    global_batch: int | None = None,
    offset: int = 0,
    alpha: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return weight * E[(||grad D(x_hat)|| - 1)^2] at random points x_hat between real and fake samples.

    With several ranks, `real` and `fake` are rows [offset, offset + n) of a global batch of `global_batch`
    (see mixing_weights). `alpha` gives the mixing weights instead (a micro-batch's rows of the batch's).
    """
    if alpha is None:
        alpha = mixing_weights(real, generator, global_batch, offset)
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(x_hat).sum(), x_hat, create_graph=True)
    # the epsilon keeps the norm's derivative finite where a gradient is exactly zero
    norms = (grad.float().flatten(1).pow(2).sum(1) + 1e-12).sqrt()
    return weight * (norms - 1.0).pow(2).mean()


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor, gamma: float) -> torch.Tensor:
    """Return gamma / 2 * E[||grad D(x)||^2] on real samples (`real` must require grad before D saw it)."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return 0.5 * gamma * grad.float().flatten(1).pow(2).sum(1).mean()
