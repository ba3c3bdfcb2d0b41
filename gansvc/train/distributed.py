"""torch.distributed for the trainer: the process group torchrun describes, and the few collectives a GAN run needs.

gansvc does not distribute work itself: `torchrun` starts one process per device and sets RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE and the rendezvous; `init` turns that environment into a
process group (NCCL on CUDA devices, gloo on CPUs) on each rank's device (cuda:LOCAL_RANK), and
`DistributedContext` offers what the trainer adds on top of DistributedDataParallel: the mean over
ranks of logged statistics, an agreed stop (every rank stops at the same step when any rank is asked
to), objects broadcast from rank 0.

Control traffic (stop flags, a resumed checkpoint) goes over a gloo group on the CPU even when the
training group is NCCL, so polling for a stop never waits for the GPU.

The rest of the distributed support lives beside it, and its names are re-exported here:
gansvc.train.world (the world from torchrun's environment, shards of a batch), gansvc.train.devices
(each rank's device and backend), gansvc.train.ddp (DDP wrapping, BatchNorm conversion),
gansvc.train.sharded_eval (FID statistics merged across ranks) and gansvc.train.sidechannel (the
launcher's stop file, failure records and event socket).
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from gansvc.runtime.process import die_with_parent
from gansvc.train.ddp import LocalBatchNorm, without_sync_batchnorm, wrap_for_ranks
from gansvc.train.devices import backend_for, device_for_rank, resolve_device
from gansvc.train.sharded_eval import evaluate_sharded, merge_feature_stats
from gansvc.train.sidechannel import (
    ENV_AGENT_PID, ENV_EVENT_SOCKET, ENV_LAUNCH_DIR, EventSender, event_sender_from_env, is_peer_failure, launch_dir,
    record_failure, register_rank_pid, stop_file_requested,
)  # fmt: skip
from gansvc.train.world import WorldInfo, launched_by_torchrun, local_batch_size, shard_bounds, world_from_env

__all__ = [
    "DEFAULT_TIMEOUT", "ENV_AGENT_PID", "ENV_EVENT_SOCKET", "ENV_LAUNCH_DIR", "STOP_BUDGET", "STOP_NONE",
    "STOP_REQUESTED", "DistributedContext", "EventSender", "LocalBatchNorm", "WorldInfo", "backend_for",
    "device_for_rank", "evaluate_sharded", "event_sender_from_env", "init", "is_peer_failure", "launch_dir",
    "launched_by_torchrun", "local_batch_size", "merge_feature_stats", "record_failure", "register_rank_pid",
    "shard_bounds", "stop_file_requested", "without_sync_batchnorm", "world_from_env", "wrap_for_ranks",
]  # fmt: skip

# Stop codes, ordered so that the maximum over ranks is the strongest reason.
STOP_NONE, STOP_BUDGET, STOP_REQUESTED = 0, 1, 2
DEFAULT_TIMEOUT = datetime.timedelta(minutes=10)  # a rank stuck this long in a collective fails the job


class DistributedContext:
    """The process group of one training run: world, device, the training and control groups, and collectives.

    With a world of one every collective is the identity, so the trainer calls them unconditionally.
    """

    def __init__(self, world: WorldInfo, device: torch.device, owns_group: bool = False):
        self.world = world
        self.device = device
        self.backend = backend_for(device) if world.distributed else None
        self.owns_group = owns_group
        self.control_group = None
        if world.distributed:
            # Stop flags and objects go over gloo on the CPU: no GPU sync to ask "should we stop?" each step.
            self.control_group = None if self.backend == "gloo" else dist.new_group(backend="gloo")

    @property
    def distributed(self) -> bool:
        """Return whether more than one rank takes part."""
        return self.world.distributed

    @property
    def is_main(self) -> bool:
        """Return whether this is rank 0."""
        return self.world.is_main

    def _group_for(self, tensor: torch.Tensor):
        # CPU tensors go over the gloo control group: NCCL only moves GPU memory
        return self.control_group if tensor.device.type == "cpu" else None

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Return `tensor` replaced in place by its mean over the ranks (every rank gets the same values)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self._group_for(tensor))
            tensor.div_(self.world.world_size)
        return tensor

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Return `tensor` replaced in place by its sum over the ranks."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self._group_for(tensor))
        return tensor

    def agree_stop(self, code: int) -> int:
        """Return the strongest stop code of all ranks (STOP_NONE < STOP_BUDGET < STOP_REQUESTED), the same on each."""
        if not self.distributed:
            return code
        flag = torch.tensor([code], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.control_group)
        return int(flag.item())

    def broadcast_object(self, value, src: int = 0):
        """Return rank `src`'s `value` on every rank (pickled over the CPU control group)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=src, group=self.control_group)
        return box[0]

    def all_gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Return the CPU concatenation, in rank order, of every rank's rows [n_r, ...] (n_r may differ)."""
        if not self.distributed:
            return rows
        parts: list = [None] * self.world.world_size
        dist.all_gather_object(parts, rows.cpu(), group=self.control_group)
        return torch.cat(parts)

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.distributed:
            dist.barrier(group=self.control_group)

    def close(self) -> None:
        """Destroy the process group if this context created it."""
        if self.owns_group and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_group = False


def init(device_setting: str = "auto", timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> DistributedContext:
    """Return the DistributedContext of this process: a process group joined when torchrun started several ranks.

    Outside torchrun (or with WORLD_SIZE=1) nothing is initialised and the device follows the spec.
    Raises SpecError naming the setting when the environment or the device cannot serve this rank.
    """
    world = world_from_env()
    if not world.distributed:
        return DistributedContext(world, resolve_device(device_setting))
    if os.environ.get(ENV_AGENT_PID):
        die_with_parent(int(os.environ[ENV_AGENT_PID]))
    register_rank_pid()
    device = device_for_rank(device_setting, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend_for(device), timeout=timeout, **kwargs)
        owns = True
    elif dist.get_world_size() != world.world_size:
        raise RuntimeError(f"a process group of {dist.get_world_size()} ranks exists, torchrun says {world.world_size}")
    return DistributedContext(world, device, owns_group=owns)
