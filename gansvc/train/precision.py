"""Training precision: autocast for bf16 and fp16, and fp16's gradient scaling (CUDA only).

fp16 has 5 exponent bits: small gradients underflow to zero. A GradScaler multiplies each loss by a
scale before its backward, unscales the gradients before the optimiser step, skips a step whose
gradients overflowed (and halves the scale), and doubles the scale after 2000 clean steps. D and G get
one scaler each, since each optimiser steps (and its scaler updates) on its own, n_critic times for D.
The scalers' state (scale, steps since the last overflow) is in the checkpoint: a resume is exact.
bf16 has float32's exponent range and needs no scaler (the CPU's choice; fp16 is refused there).
"""

from __future__ import annotations

import contextlib

import torch

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device_type: str):
    """Return a fresh autocast context for `precision` on `device_type` (a no-op for fp32)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """Return a GradScaler for one optimiser when `precision` is fp16, else None."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def backward(loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
    """Run `loss`'s backward, scaled by `scaler`'s current scale when there is one."""
    (loss if scaler is None else scaler.scale(loss)).backward()


def optimiser_step(optimiser: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """Step `optimiser`; with a scaler: on the unscaled gradients, skipped if they overflowed; then update the scale."""
    if scaler is None:
        optimiser.step()
        return
    # unscaled in place here, whichever optimiser: the gradients left on the parameters (the logged grad norms)
    # are the true ones
    scaler.unscale_(optimiser)
    scaler.step(optimiser)
    scaler.update()
