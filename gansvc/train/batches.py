"""Random mini-batches sliced on the device from a data set held there whole (no DataLoader, no per-image work)."""

from __future__ import annotations

import torch

from gansvc.train.spec import SpecError
from gansvc.train.world import local_batch_size


class DeviceBatches:
    """Shuffled batches of a tensor on the device: a fresh permutation each epoch, the last partial batch dropped.

    uint8 images become float32 in [-1, 1] one batch at a time; float data (2-D points) is used as is.
    All randomness comes from one CPU torch.Generator, so the order is reproducible and resumable.

    With several ranks, `batch_size` is the global batch: every rank draws the same permutation and
    takes rows [rank * b, (rank + 1) * b) of each global batch (b = batch_size / world_size), so the
    ranks read disjoint shards of every epoch, together exactly the batches one process would read,
    and the state (permutation, position) is the same on every rank and for any number of ranks.
    """

    def __init__(
        self, data: torch.Tensor, batch_size: int, seed: int, device: torch.device, rank: int = 0, world_size: int = 1
    ):
        if data.shape[0] < batch_size:
            raise SpecError("batch_size", f"{batch_size} is larger than the data set ({data.shape[0]} samples)")
        self.local_batch_size = local_batch_size(batch_size, world_size)
        self.data = data.to(device)
        self.batch_size = batch_size
        self.offset = rank * self.local_batch_size
        self.device = device
        self.generator = torch.Generator().manual_seed(seed)
        self.batches_per_epoch = data.shape[0] // batch_size
        self.perm: torch.Tensor | None = None
        self.position = 0
        self.batches_served = 0

    def next(self) -> torch.Tensor:
        """Return this rank's rows of the next global batch: float32 [B / world_size, ...] ([-1, 1] for images)."""
        if self.perm is None or self.position + self.batch_size > self.perm.shape[0]:
            self.perm = torch.randperm(self.data.shape[0], generator=self.generator).to(self.device)
            self.position = 0
        start = self.position + self.offset
        index = self.perm[start : start + self.local_batch_size]
        self.position += self.batch_size
        self.batches_served += 1
        batch = self.data.index_select(0, index)
        if batch.dtype == torch.uint8:
            return batch.float().mul_(2.0 / 255.0).sub_(1.0)
        return batch.float()

    @property
    def epoch(self) -> float:
        """Return the number of passes over the data so far (fractional)."""
        return self.batches_served / self.batches_per_epoch

    def state_dict(self) -> dict:
        """Return what resumes the exact batch sequence: generator state, current permutation and position."""
        return {
            "generator": self.generator.get_state(),
            "perm": None if self.perm is None else self.perm.cpu(),
            "position": self.position,
            "batches_served": self.batches_served,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the batch sequence saved by state_dict."""
        self.generator.set_state(state["generator"])
        self.perm = None if state["perm"] is None else state["perm"].to(self.device)
        self.position = state["position"]
        self.batches_served = state["batches_served"]
