"""The Python face of gansvc's kernels: each op runs the fused extension or the reference.

`d_loss` / `g_loss` return (loss, stats) and are differentiable (twice: the backward itself is
differentiable, for gradient penalties). See gansvc.losses for the user-facing names.
"""

from __future__ import annotations

import torch

from gansvc.ops import reference
from gansvc.ops._ext import cuda_compiled, load_extension, use_extension


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str, real_label: float = 1.0):
    """Return (loss, stats[mean D(x), mean D(G(z)), accuracy]) for kind bce | hinge | wasserstein."""
    if use_extension():
        return torch.ops.gansvc.d_loss(real_logits, fake_logits, kind, float(real_label))
    return reference.d_loss(real_logits, fake_logits, kind, real_label)


def g_loss(fake_logits: torch.Tensor, kind: str):
    """Return (loss, stats[mean D(G(z))]) for kind ns | minimax | hinge | wasserstein."""
    if use_extension():
        return torch.ops.gansvc.g_loss(fake_logits, kind)
    return reference.g_loss(fake_logits, kind)


__all__ = ["cuda_compiled", "d_loss", "g_loss", "load_extension", "reference", "use_extension"]
from gansvc.ops import fid  # noqa: E402  (the FID core: trace_sqrt_product, frechet_distance, feature moments)
