"""The loss ops in plain PyTorch: the oracle the fused kernels are tested against, and the
fallback where the extension is not built. Same signatures and outputs as torch.ops.gansvc.*."""

from __future__ import annotations

import torch
import torch.nn.functional as F

D_KINDS = ("bce", "hinge", "wasserstein")
G_KINDS = ("ns", "minimax", "hinge", "wasserstein")


def _check_logits(logits: torch.Tensor, argument: str) -> None:
    if not logits.is_floating_point():
        raise ValueError(f"{argument} must be a floating-point tensor (float16, bfloat16, float32, float64), "
                         f"got {logits.dtype}")
    if logits.numel() == 0:
        raise ValueError(f"{argument} is empty: a loss needs at least one logit")


def _opmath(logits: torch.Tensor) -> torch.Tensor:
    return logits.reshape(-1).to(torch.float64 if logits.dtype == torch.float64 else torch.float32)


def d_loss(real_logits, fake_logits, kind: str, real_label: float = 1.0):
    """Return (loss, stats[mean D(x), mean D(G(z)), accuracy]) of the discriminator loss `kind`."""
    _check_logits(real_logits, "real_logits")
    _check_logits(fake_logits, "fake_logits")
    if real_logits.device != fake_logits.device:
        raise ValueError(f"real_logits and fake_logits must be on the same device, got "
                         f"{real_logits.device} and {fake_logits.device}")
    if real_logits.dtype != fake_logits.dtype:
        raise ValueError(f"real_logits and fake_logits must have the same dtype, got "
                         f"{real_logits.dtype} and {fake_logits.dtype}")
    if kind not in D_KINDS:
        raise ValueError(f"kind must be one of 'bce', 'hinge', 'wasserstein' for the D loss, got {kind!r}")
    if not 0.0 < real_label <= 1.0:
        raise ValueError(f"real_label must be in (0, 1], got {real_label}")
    r, f = _opmath(real_logits), _opmath(fake_logits)
    if kind == "bce":
        # softplus forms: BCE(s, 1) = softplus(-s), BCE(s, 0) = softplus(s); the smoothed label
        # mixes both (written so that +-inf logits give inf, not inf - inf).
        real_term = F.softplus(-r)
        if real_label != 1.0:
            real_term = real_label * real_term + (1.0 - real_label) * F.softplus(r)
        loss = real_term.mean() + F.softplus(f).mean()
        mean_real, mean_fake = torch.sigmoid(r).mean(), torch.sigmoid(f).mean()
    elif kind == "hinge":
        loss = F.relu(1.0 - r).mean() + F.relu(1.0 + f).mean()
        mean_real, mean_fake = r.mean(), f.mean()
    else:
        loss = f.mean() - r.mean()
        mean_real, mean_fake = r.mean(), f.mean()
    correct = (r > 0).sum() + (f < 0).sum()
    accuracy = correct.to(r.dtype) / (r.numel() + f.numel())
    stats = torch.stack([mean_real, mean_fake, accuracy]).detach()
    return loss, stats


def g_loss(fake_logits, kind: str):
    """Return (loss, stats[mean D(G(z))]) of the generator loss `kind`."""
    _check_logits(fake_logits, "fake_logits")
    if kind not in G_KINDS:
        raise ValueError(f"kind must be one of 'ns', 'minimax', 'hinge', 'wasserstein' for the G loss, got {kind!r}")
    f = _opmath(fake_logits)
    if kind == "ns":
        loss, mean_fake = F.softplus(-f).mean(), torch.sigmoid(f).mean()
    elif kind == "minimax":
        loss, mean_fake = -F.softplus(f).mean(), torch.sigmoid(f).mean()
    else:
        loss, mean_fake = -f.mean(), f.mean()
    return loss, mean_fake.detach().reshape(1)
