"""Exponential moving average of the generator's weights, and BatchNorm statistics for the averaged model."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """A frozen copy of a model whose parameters track an exponential moving average of the model's.

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so early averages are not
    dominated by the random initial weights in short runs. Buffers (BatchNorm running statistics)
    are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards `model`'s current weights."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        averaged = list(self.model.parameters())
        current = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(averaged, current, 1.0 - decay)
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            mine.copy_(theirs)

    def state_dict(self) -> dict:
        """Return the averaged weights and the update count."""
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned."""
        self.model.load_state_dict(state["model"])
        self.updates = state["updates"]


@torch.no_grad()
def with_standing_batchnorm(
    generator: nn.Module, z_dim: int, device, seed: int = 0, batches: int = 8, batch_size: int = 256
) -> nn.Module:
    """Return an eval-mode copy of `generator` whose BatchNorm statistics are recomputed from its own outputs.

    The running statistics a generator keeps belong to the raw weights of past steps; for averaged
    (EMA) weights they are stale. Forwarding fresh noise through the copy in train mode with a
    cumulative average (BigGAN's "standing statistics") gives statistics that match its weights.
    A model without BatchNorm is returned as an eval-mode copy unchanged.
    """
    model = copy.deepcopy(generator)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        rng = torch.Generator(device=device).manual_seed(seed)
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
        model.train()
        classes = getattr(model, "num_classes", 0)  # a conditional G: every class, uniformly
        for _ in range(batches):
            z = torch.randn(batch_size, z_dim, device=device, generator=rng)
            if classes:
                model(z, torch.randint(0, classes, (batch_size,), device=device, generator=rng))
            else:
                model(z)
        for norm in norms:
            norm.momentum = 0.1
    return model.eval().requires_grad_(False)
