"""Models across ranks: DistributedDataParallel wrapping with SyncBatchNorm on GPUs, and back to per-process
BatchNorm for what runs on one rank (sampling, standing statistics)."""

from __future__ import annotations

import contextlib
import copy

import torch


def wrap_for_ranks(model: torch.nn.Module, device: torch.device, distributed: bool) -> torch.nn.Module:
    """Return `model` wrapped in DistributedDataParallel when several ranks take part, else `model`.

    Gradients are averaged over the ranks in backward; buffers (BatchNorm running statistics,
    spectral-norm power-iteration vectors) are sent from rank 0 before every forward. On GPUs,
    BatchNorm layers become SyncBatchNorm, so they normalise with the statistics of the global batch.
    """
    if not distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    from gansvc.models import has_batchnorm

    if device.type == "cuda" and has_batchnorm(model):
        # converts in place: the new layers share the old ones' parameters and buffers
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=True)


def sync_gradients(model: torch.nn.Module, sync: bool):
    """Return a context for a forward and backward through `model` that averages the gradients over the ranks only
    when `sync` (DDP's no_sync otherwise: the earlier micro-batches of an accumulated step add up locally)."""
    from torch.nn.parallel import DistributedDataParallel

    if sync or not isinstance(model, DistributedDataParallel):  # one rank: nothing to synchronise
        return contextlib.nullcontext()
    return model.no_sync()


class LocalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm for inputs of any rank [N, C, ...], normalising over this process's batch only."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input [N, C, ...], got {input.dim()}-D")


def without_sync_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Return `model`, or a copy of it whose SyncBatchNorm layers are per-process BatchNorm (same weights, statistics).

    A SyncBatchNorm in training mode waits for every rank; sampling and standing statistics run on one.
    """
    if not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules()):
        return model

    def convert(module: torch.nn.Module) -> torch.nn.Module:
        if isinstance(module, torch.nn.SyncBatchNorm):
            plain = LocalBatchNorm(
                module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
            )
            plain.load_state_dict(module.state_dict())
            held = [t for t in (module.weight, module.running_mean) if t is not None]
            return plain.to(held[0].device if held else "cpu").train(module.training)
        for name, child in module.named_children():
            module.add_module(name, convert(child))
        return module

    return convert(copy.deepcopy(model))
