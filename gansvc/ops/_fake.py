"""Shapes of the extension's loss ops for FakeTensor tracing (torch.compile, torch.export)."""

from __future__ import annotations

import torch


def _opmath_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


@torch.library.register_fake("gansvc::d_loss_fused")
def _d_loss_fused_fake(real_logits, fake_logits, kind, real_label=1.0):
    dtype = _opmath_dtype(real_logits)
    return (
        real_logits.new_empty((), dtype=dtype),
        torch.empty_like(real_logits, memory_format=torch.contiguous_format),
        torch.empty_like(fake_logits, memory_format=torch.contiguous_format),
        real_logits.new_empty((3,), dtype=dtype),
    )


@torch.library.register_fake("gansvc::g_loss_fused")
def _g_loss_fused_fake(fake_logits, kind):
    dtype = _opmath_dtype(fake_logits)
    return (
        fake_logits.new_empty((), dtype=dtype),
        torch.empty_like(fake_logits, memory_format=torch.contiguous_format),
        fake_logits.new_empty((1,), dtype=dtype),
    )
