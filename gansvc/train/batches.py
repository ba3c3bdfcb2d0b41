"""Training batches: one sample order (`BatchOrder`) read from a tensor on the device (`DeviceBatches`, the
data set held there whole: no DataLoader, no per-image work) or streamed from disk through a DataLoader
(`StreamedBatches`, a data set larger than the memory budget). For the same seed both serve the same
samples in the same order, and both resume mid-epoch from the same state.
"""

from __future__ import annotations

import torch

from gansvc.images import uint8_to_unit_range
from gansvc.train.spec import SpecError
from gansvc.train.world import local_batch_size


class BatchOrder:
    """The order samples are read in: a fresh permutation each epoch, the last partial batch dropped.

    All randomness comes from one CPU torch.Generator, so the order is reproducible and resumable.
    With several ranks, `batch_size` is the global batch: every rank draws the same permutation and
    takes rows [rank * b, (rank + 1) * b) of each global batch (b = batch_size / world_size), so the
    ranks read disjoint shards of every epoch, together exactly the batches one process would read,
    and the state (permutation, position) is the same on every rank and for any number of ranks.

    With `balance_labels` (one class label per sample, [num_samples]) the batches are class-balanced: each
    global batch of B samples over C classes holds floor(B / C) of every class, and the B mod C left over go
    to classes in turn (a fresh class order each epoch), so over C batches every class gets the same count.
    Each class is read in a fresh permutation of its samples, taken up again from a new one when used up: an
    epoch of equal classes visits every sample once (the dropped remainder aside); a small class repeats within
    an epoch, a large one is sub-sampled. Samples are shuffled within each batch, so every rank's rows mix the
    classes. The epoch's order is held as `perm` like the plain permutation: the state is the same.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, device: torch.device, rank: int = 0,
                 world_size: int = 1, balance_labels: torch.Tensor | None = None):  # fmt: skip
        if num_samples < batch_size:
            raise SpecError("batch_size", f"{batch_size} is larger than the data set ({num_samples} samples)")
        self.num_samples = num_samples
        self.local_batch_size = local_batch_size(batch_size, world_size)
        self.batch_size = batch_size
        self.offset = rank * self.local_batch_size
        self.device = device  # where the permutation lives (the in-memory data's device)
        self.generator = torch.Generator().manual_seed(seed)
        self.batches_per_epoch = num_samples // batch_size
        self.perm: torch.Tensor | None = None
        self.position = 0
        self.batches_served = 0
        self.classes: list[torch.Tensor] | None = None  # balanced batches: each class's sample indices
        if balance_labels is not None:
            labels = balance_labels.long().cpu()
            if labels.shape != (num_samples,):
                raise ValueError(f"balance_labels must be [{num_samples}], one per sample; got {list(labels.shape)}")
            present = torch.unique(labels)
            self.classes = [torch.nonzero(labels == k).view(-1) for k in present.tolist()]

    def _epoch_order(self) -> torch.Tensor:
        """Return the next epoch's sample order: a permutation, or with classes the balanced batches (see above)."""
        if self.classes is None:
            return torch.randperm(self.num_samples, generator=self.generator)
        count, batches, size = len(self.classes), self.batches_per_epoch, self.batch_size
        per_class, extra = divmod(size, count)
        # extra slot e of batch j goes to class rotation[(j * extra + e) % count]: each class in turn
        rotation = torch.randperm(count, generator=self.generator)
        slots = torch.arange(batches * extra).remainder(count)
        takes = torch.full((batches, count), per_class, dtype=torch.int64)
        takes.view(-1).index_add_(0, (torch.arange(batches).repeat_interleave(extra) * count
                                      + rotation[slots]), torch.ones(batches * extra, dtype=torch.int64))
        streams = []  # each class's samples for the epoch, in fresh permutations of the class
        for k, members in enumerate(self.classes):
            needed = int(takes[:, k].sum())
            rounds = -(-needed // members.numel())
            order = torch.cat([members[torch.randperm(members.numel(), generator=self.generator)]
                               for _ in range(rounds)])  # fmt: skip
            streams.append(order[:needed].split(takes[:, k].tolist()))
        rows = []
        for j in range(batches):
            batch = torch.cat([streams[k][j] for k in range(count)])
            rows.append(batch[torch.randperm(size, generator=self.generator)])
        return torch.cat(rows)

    def next_index(self) -> torch.Tensor:
        """Return the sample indices of this rank's rows of the next global batch (on `device`)."""
        if self.perm is None or self.position + self.batch_size > self.perm.shape[0]:
            self.perm = self._epoch_order().to(self.device)
            self.position = 0
        start = self.position + self.offset
        index = self.perm[start : start + self.local_batch_size]
        self.position += self.batch_size
        self.batches_served += 1
        return index

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


def to_unit_range(batch: torch.Tensor) -> torch.Tensor:
    """Return a batch as float32: uint8 images scaled to [-1, 1], float data (2-D points) as is."""
    if batch.dtype == torch.uint8:
        return uint8_to_unit_range(batch)
    return batch.float()


class _OrderDelegate:
    """The BatchOrder's counters and state as the batches' own (what the trainer and checkpoints read)."""

    order: BatchOrder

    @property
    def batch_size(self) -> int:
        return self.order.batch_size

    @property
    def local_batch_size(self) -> int:
        return self.order.local_batch_size

    @property
    def batches_per_epoch(self) -> int:
        return self.order.batches_per_epoch

    @property
    def batches_served(self) -> int:
        return self.order.batches_served

    @property
    def num_samples(self) -> int:
        """Return the number of samples in the data set."""
        return self.order.num_samples

    @property
    def epoch(self) -> float:
        """Return the number of passes over the data so far (fractional)."""
        return self.order.epoch

    def state_dict(self) -> dict:
        """Return what resumes the exact batch sequence (the same for in-memory and streamed batches)."""
        return self.order.state_dict()

    def next(self) -> torch.Tensor:
        """Return this rank's rows of the next global batch: float32 [B / world_size, ...] ([-1, 1] for images).

        Its labels (int64 on the device, or None for unlabelled data) are `last_labels` afterwards.
        """
        return self.next_labelled()[0]

    def next_labelled(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (this rank's rows of the next global batch, their labels or None); see next()."""
        raise NotImplementedError


class DeviceBatches(_OrderDelegate):
    """Shuffled batches of a tensor on the device, in BatchOrder's order (see there); labels alongside.

    uint8 images become float32 in [-1, 1] one batch at a time; float data (2-D points) is used as is.
    `labels` (int64 [N] on the device, aligned with the data's rows, or None) gives each batch's labels.
    """

    def __init__(self, data: torch.Tensor, batch_size: int, seed: int, device: torch.device, rank: int = 0,
                 world_size: int = 1, labels: torch.Tensor | None = None,
                 balance_labels: torch.Tensor | None = None):  # fmt: skip
        self.order = BatchOrder(data.shape[0], batch_size, seed, device, rank, world_size, balance_labels)
        if labels is not None and labels.shape != (data.shape[0],):
            raise ValueError(f"labels must be [{data.shape[0]}], one per sample; got {list(labels.shape)}")
        self.data = data.to(device)
        self.labels = None if labels is None else labels.to(device=device, dtype=torch.int64)
        self.device = device
        self.last_labels: torch.Tensor | None = None

    def next_labelled(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (this rank's rows of the next global batch, their labels or None); see next()."""
        index = self.order.next_index()
        self.last_labels = None if self.labels is None else self.labels.index_select(0, index)
        return to_unit_range(self.data.index_select(0, index)), self.last_labels

    def images_at(self, index: torch.Tensor) -> torch.Tensor:
        """Return the samples at `index` as stored (uint8 images), on the device."""
        return self.data.index_select(0, index.to(self.device))

    def load_state_dict(self, state: dict) -> None:
        """Restore the batch sequence saved by state_dict."""
        self.order.load_state_dict(state)


class _IndexBatches:
    """The DataLoader's batch sampler: this rank's index lists from a copy of the order, endlessly.

    The loader reads ahead of what the trainer has taken, so it walks a copy; the batches' own order
    advances only as batches are served, which keeps state_dict exact mid-epoch.
    """

    def __init__(self, order: BatchOrder):
        self.order = order

    def __iter__(self):
        ahead = BatchOrder.__new__(BatchOrder)
        ahead.__dict__.update(self.order.__dict__)
        ahead.generator = torch.Generator()
        ahead.generator.set_state(self.order.generator.get_state())
        while True:
            yield ahead.next_index().tolist()


def collate_samples(samples: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (uint8 images [n, C, H, W], int64 labels [n]) from a list of (image, label) samples."""
    return torch.stack([s[0] for s in samples]), torch.tensor([s[1] for s in samples], dtype=torch.int64)


class StreamedBatches(_OrderDelegate):
    """Batches read from a map-style Dataset of (uint8 image [C, H, W], int label; -1 = unlabelled) through a
    DataLoader with `workers` processes, in the same order DeviceBatches would serve the same data.

    Pinned memory (and asynchronous copies) only when the device is CUDA. `describe_error(error)`,
    where given, turns an error from reading a sample (raised in a worker) into the one the run fails with.
    """

    def __init__(self, dataset, batch_size: int, seed: int, device: torch.device, rank: int = 0, world_size: int = 1,
                 workers: int = 2, labelled: bool = True, describe_error=None, prefetch: int = 4,
                 balance_labels: torch.Tensor | None = None):  # fmt: skip
        self.order = BatchOrder(len(dataset), batch_size, seed, torch.device("cpu"), rank, world_size, balance_labels)
        self.dataset = dataset
        self.device = device
        self.workers = workers
        self.labelled = labelled
        self.describe_error = describe_error
        self.prefetch = prefetch
        self.last_labels: torch.Tensor | None = None
        self._iterator = None

    def _loader(self):
        pin = self.device.type == "cuda"
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=_IndexBatches(self.order), num_workers=self.workers,
            collate_fn=collate_samples, pin_memory=pin, prefetch_factor=self.prefetch if self.workers else None,
        )  # fmt: skip
        return iter(loader)

    def next_labelled(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (this rank's rows of the next global batch, their labels or None); see next()."""
        if self._iterator is None:
            self._iterator = self._loader()
        try:
            images, labels = next(self._iterator)
        except Exception as error:  # noqa: BLE001 - a sample could not be read (in a worker): say which
            self.close()
            if self.describe_error is None:
                raise
            raise self.describe_error(error) from error
        self.order.next_index()  # the batch just served: advance the order that state_dict saves
        blocking = self.device.type != "cuda"
        batch = to_unit_range(images.to(self.device, non_blocking=not blocking))
        self.last_labels = labels.to(self.device, non_blocking=not blocking) if self.labelled else None
        return batch, self.last_labels

    def images_at(self, index: torch.Tensor) -> torch.Tensor:
        """Return the samples at `index` (uint8 images), read from the data set, on the device."""
        return torch.stack([self.dataset[int(i)][0] for i in index.tolist()]).to(self.device)

    def load_state_dict(self, state: dict) -> None:
        """Restore the batch sequence saved by state_dict (the loader restarts from there)."""
        self.close()
        self.order.load_state_dict(state)

    def close(self) -> None:
        """Stop the loader's worker processes (a later batch starts new ones where the order stands)."""
        iterator, self._iterator = self._iterator, None
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
