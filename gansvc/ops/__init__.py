"""The Python face of gansvc's kernels: each op runs the fused extension or the reference.

On a GPU the first op a process runs self-tests the kernels against the reference (gansvc.ops.selftest)
and falls back to the reference on a mismatch.

`d_loss` / `g_loss` return (loss, stats) and are differentiable (twice: the backward itself is
differentiable, for gradient penalties). See gansvc.losses for the user-facing names.
"""

from __future__ import annotations

import torch

from gansvc.ops import reference, selftest
from gansvc.ops._ext import cuda_compiled, load_extension, use_extension


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str, real_label: float = 1.0):
    """Return (loss, stats[mean D(x), mean D(G(z)), accuracy]) for kind bce | hinge | wasserstein."""
    if selftest.kernels_for(real_logits):
        return torch.ops.gansvc.d_loss(real_logits, fake_logits, kind, float(real_label))
    return reference.d_loss(real_logits, fake_logits, kind, real_label)


def g_loss(fake_logits: torch.Tensor, kind: str):
    """Return (loss, stats[mean D(G(z))]) for kind ns | minimax | hinge | wasserstein."""
    if selftest.kernels_for(fake_logits):
        return torch.ops.gansvc.g_loss(fake_logits, kind)
    return reference.g_loss(fake_logits, kind)


def d_loss_step(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str, real_label: float = 1.0):
    """Add d loss / d logits to the logits' gradients (as `loss.backward()` would) and return the detached
    [loss, mean D(x), mean D(G(z)), accuracy] of D's loss `kind`: one call and one output for a training step.

    No autograd node is built (so no create_graph / gradient penalty through it: use `d_loss` for that);
    leaf logits get their `.grad` directly, others through one autograd-engine call.
    """
    if selftest.kernels_for(real_logits):
        return load_extension().d_loss_step(real_logits, fake_logits, kind, float(real_label))
    loss, stats = reference.d_loss(real_logits, fake_logits, kind, real_label)
    if loss.requires_grad:
        loss.backward()
    return torch.cat([loss.detach().reshape(1), stats])


def g_loss_step(fake_logits: torch.Tensor, kind: str):
    """Add d loss / d logits to the logits' gradient and return the detached [loss, mean D(G(z))] of G's loss."""
    if selftest.kernels_for(fake_logits):
        return load_extension().g_loss_step(fake_logits, kind)
    loss, stats = reference.g_loss(fake_logits, kind)
    if loss.requires_grad:
        loss.backward()
    return torch.cat([loss.detach().reshape(1), stats])


def cpu_capability() -> str:
    """Return the CPU loss-kernel build in use: 'avx512', 'avx2' or 'default' ('reference' without the extension).

    Chosen once per process from GANSVC_CPU_CAPABILITY=default|avx2|avx512, else the widest the running CPU has.
    """
    module = load_extension()
    return module.cpu_capability() if module is not None else "reference"


__all__ = ["cpu_capability", "cuda_compiled", "d_loss", "d_loss_step", "g_loss", "g_loss_step", "load_extension",
           "reference", "use_extension"]
from gansvc.ops import fid  # noqa: E402  (the FID core: trace_sqrt_product, frechet_distance, feature moments)
