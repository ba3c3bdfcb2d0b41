"""Where a process stands among the ranks torchrun started, read from torchrun's environment, and how work
divides among them. Imports no torch: the launcher and the command line read it before any rank starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from gansvc.train.spec import SpecError


@dataclass(frozen=True)
class WorldInfo:
    """Where this process stands among the ranks torchrun started (one rank, world 1, when not under torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0

    @property
    def distributed(self) -> bool:
        """Return whether more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Return whether this is rank 0, the one that writes files and emits events."""
        return self.rank == 0


def launched_by_torchrun(environ=None) -> bool:
    """Return whether this process is a rank started by torchrun (so it must not launch torchrun itself)."""
    environ = os.environ if environ is None else environ
    return "TORCHELASTIC_RUN_ID" in environ or "WORLD_SIZE" in environ


def world_from_env(environ=None) -> WorldInfo:
    """Return the WorldInfo described by torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, ...), or a single rank.

    An inconsistent environment raises SpecError naming nproc (the setting that asked for several ranks).
    """
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return WorldInfo()

    def bad(message: str) -> SpecError:
        return SpecError("nproc", f"torchrun's environment is inconsistent: {message}")

    def number(name: str, default: int | None = None) -> int:
        text = environ.get(name)
        if text is None:
            if default is None:
                raise bad(f"{name} is not set, but WORLD_SIZE is: start the ranks with torchrun")
            return default
        try:
            return int(text)
        except ValueError:
            raise bad(f"{name}={text!r} is not an integer") from None

    world_size = number("WORLD_SIZE")
    rank = number("RANK")
    local_rank = number("LOCAL_RANK", rank)
    local_world_size = number("LOCAL_WORLD_SIZE", world_size)
    node_rank = number("GROUP_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise bad(f"RANK={rank} and WORLD_SIZE={world_size}: expected 0 <= RANK < WORLD_SIZE")
    if not 0 <= local_rank < local_world_size:
        raise bad(
            f"LOCAL_RANK={local_rank} and LOCAL_WORLD_SIZE={local_world_size}: "
            "expected 0 <= LOCAL_RANK < LOCAL_WORLD_SIZE"
        )
    return WorldInfo(rank, world_size, local_rank, local_world_size, node_rank)


def shard_bounds(total: int, rank: int, world_size: int) -> tuple[int, int]:
    """Return [start, stop) of rank's contiguous share of `total` items; the first total % world_size get one more."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of world size {world_size}: expected 0 <= rank < world size")
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    base, extra = divmod(total, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def local_batch_size(global_batch: int, world_size: int) -> int:
    """Return the per-rank batch of a global batch; SpecError naming batch_size when it does not divide evenly."""
    if global_batch % world_size:
        raise SpecError(
            "batch_size",
            f"the global batch {global_batch} does not divide among {world_size} processes; use a multiple "
            f"of {world_size} (e.g. {max(world_size, global_batch // world_size * world_size)})",
        )
    return global_batch // world_size
