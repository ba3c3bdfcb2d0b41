"""torch.distributed for the trainer: the process group torchrun describes, and the few collectives a GAN run needs.

gansvc does not distribute work itself: `torchrun` starts one process per device and sets RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE and the rendezvous; this module turns that environment into
a process group (NCCL on CUDA devices, gloo on CPUs), picks each rank's device (cuda:LOCAL_RANK), and
offers what the trainer adds on top of DistributedDataParallel:

- the slice of a global batch each rank computes (`shard_bounds`, `local_batch_size`),
- the mean over ranks of logged statistics (`DistributedContext.all_reduce_mean`),
- an agreed stop: every rank stops at the same step when any rank is asked to (`agree_stop`),
- the merge of FID feature statistics across ranks (`merge_feature_stats`) and a sharded evaluation.

Control traffic (stop flags, a resumed checkpoint) goes over a gloo group on the CPU even when the
training group is NCCL, so polling for a stop never waits for the GPU.

The launcher (gansvc.train.launch) talks to the ranks through environment variables:
GANSVC_LAUNCH_DIR, a folder on each node where a file `stop` asks for a checkpoint-and-stop, each rank
leaves its pid in `pids/` and a failing rank writes `failures/rank_<N>.json` (exit code, error, message);
GANSVC_EVENT_SOCKET, where rank 0 sends trainer events as JSON lines; GANSVC_AGENT_PID, the torchrun
agent each rank dies with.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from gansvc.train.launch import ENV_AGENT_PID, ENV_EVENT_SOCKET, ENV_LAUNCH_DIR, launched_by_torchrun  # noqa: F401

# Stop codes, ordered so that the maximum over ranks is the strongest reason.
STOP_NONE, STOP_BUDGET, STOP_REQUESTED = 0, 1, 2
DEFAULT_TIMEOUT = datetime.timedelta(minutes=10)  # a rank stuck this long in a collective fails the job


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


def world_from_env(environ=None) -> WorldInfo:
    """Return the WorldInfo described by torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, ...), or a single rank."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return WorldInfo()

    def number(name: str, default: int | None = None) -> int:
        text = environ.get(name)
        if text is None:
            if default is None:
                raise ValueError(f"{name} is not set, but WORLD_SIZE is: start the ranks with torchrun")
            return default
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{name}={text!r} is not an integer") from None

    world_size = number("WORLD_SIZE")
    rank = number("RANK")
    local_rank = number("LOCAL_RANK", rank)
    local_world_size = number("LOCAL_WORLD_SIZE", world_size)
    node_rank = number("GROUP_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world_size}: expected 0 <= RANK < WORLD_SIZE")
    if not 0 <= local_rank < local_world_size:
        raise ValueError(
            f"LOCAL_RANK={local_rank} and LOCAL_WORLD_SIZE={local_world_size}: expected 0 <= LOCAL_RANK < LOCAL_WORLD_SIZE"
        )
    return WorldInfo(rank, world_size, local_rank, local_world_size, node_rank)


def device_for_rank(setting: str, world: WorldInfo) -> torch.device:
    """Return the device of this rank for a spec's device setting: cuda:LOCAL_RANK on GPUs, the CPU otherwise.

    With several ranks a single GPU (cuda:N) cannot be shared, so 'cuda:N' is refused there; the GPUs a
    node offers are chosen with CUDA_VISIBLE_DEVICES instead (the service sets it to the job's devices).
    Raises ValueError naming the setting.
    """
    if setting == "cpu":
        return torch.device("cpu")
    if setting == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if setting not in ("auto", "cuda"):
        if world.local_world_size > 1:
            raise ValueError(
                f"device: {setting!r} names one GPU, but {world.local_world_size} ranks run on this node; use 'cuda' "
                "(rank r takes cuda:LOCAL_RANK) and choose the GPUs with CUDA_VISIBLE_DEVICES"
            )
        return torch.device(setting)
    if not torch.cuda.is_available():
        raise ValueError(f"device: {setting!r} asked for, but no CUDA device is available here")
    count = torch.cuda.device_count()
    if world.local_rank >= count:
        raise ValueError(
            f"device: local rank {world.local_rank} needs cuda:{world.local_rank}, but only {count} CUDA device(s) are "
            f"visible here; start at most {count} processes per node"
        )
    return torch.device("cuda", world.local_rank)


def backend_for(device: torch.device) -> str:
    """Return the torch.distributed backend for a device type: nccl for CUDA, gloo for the CPU."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


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
    """Return the per-rank batch of a global batch; ValueError naming batch_size when it does not divide evenly."""
    if global_batch % world_size:
        raise ValueError(
            f"batch_size: the global batch {global_batch} does not divide among {world_size} processes; use a multiple "
            f"of {world_size} (e.g. {max(world_size, global_batch // world_size * world_size)})"
        )
    return global_batch // world_size


def die_with_parent(parent_pid: int | None = None) -> None:
    """Ask Linux to SIGKILL this process when its parent (the torchrun agent) dies, so no rank outlives its launcher.

    `parent_pid` is the pid the parent is expected to have; if the parent is already gone (this process
    was re-parented before the request took effect) the process exits at once.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    expected = os.getppid() if parent_pid is None else parent_pid
    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != expected:
        os._exit(1)


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
    Raises ValueError naming the setting when the device cannot serve this rank.
    """
    world = world_from_env()
    if not world.distributed:
        from gansvc.train.trainer import resolve_device

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
    import copy

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


# ---------------------------------------------------------------------- FID feature statistics
def merge_feature_stats(stats, context: DistributedContext | None = None):
    """Return a FeatureStats holding every rank's rows (the same on every rank); `stats` is left unchanged.

    Uses Chan et al.'s pairwise formula as a sum over ranks: the global count and mean come from an
    all-reduce of (count, count * mean); the scatter matrix is Σ_r [M2_r + n_r (μ_r - μ)(μ_r - μ)ᵀ],
    a second all-reduce. That is exact in float64 and never forms Σxxᵀ - nμμᵀ, which loses digits when
    |μ| >> σ. Ranks with no rows take part with zeros.
    """
    from gansvc.metrics.fid import FeatureStats

    if (context is not None and not context.distributed) or (context is None and not _group_active()):
        return FeatureStats.from_state_dict(stats.state_dict(), device=stats.device)
    device = _collective_device()
    local_dim = stats.dim or 0
    meta = torch.tensor([local_dim], dtype=torch.int64, device=device)
    dist.all_reduce(meta, op=dist.ReduceOp.MAX)
    dim = int(meta.item())
    if dim == 0:
        return FeatureStats(device=stats.device)
    if local_dim not in (0, dim):
        raise ValueError(f"feature dimensions differ across ranks: this rank has {local_dim}, another {dim}")
    count = float(stats.count)
    zeros = {"dtype": torch.float64, "device": device}
    mean = stats.state_dict()["mean"].to(device) if stats.count else torch.zeros(dim, **zeros)
    m2 = stats.state_dict()["m2"].to(device) if stats.count else torch.zeros(dim, dim, **zeros)
    first = torch.cat([torch.tensor([count], dtype=torch.float64, device=device), mean * count])
    dist.all_reduce(first, op=dist.ReduceOp.SUM)
    total = first[0].item()
    if total == 0:
        return FeatureStats(dim, device=stats.device)
    global_mean = first[1:] / total
    delta = mean - global_mean
    scatter = m2 + count * torch.outer(delta, delta)
    dist.all_reduce(scatter, op=dist.ReduceOp.SUM)
    state = {"count": int(round(total)), "mean": global_mean, "m2": scatter}
    return FeatureStats.from_state_dict(state, device=stats.device)


def _group_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _collective_device() -> torch.device:
    """Return where tensors of the default group's collectives must live (the current GPU for NCCL)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@torch.no_grad()
def evaluate_sharded(
    fake: torch.Tensor,
    context: DistributedContext,
    real: str = "fashion-mnist:test",
    extractor: str = "fmnist-cnn",
    data_root=None,
    device="cpu",
    *,
    is_splits: int = 10,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> dict | None:
    """Return gansvc.metrics.evaluate's scores of the images every rank holds a shard of, on rank 0 (None elsewhere).

    Each rank extracts the features of its own images; FID comes from FeatureStats merged across the
    ranks (merge_feature_stats), the Inception Score and KID from the logits and feature rows gathered
    to rank 0 in rank order, so the scores equal those of one process scoring all the images at once.
    """
    from gansvc.metrics.evaluate import get_extractor
    from gansvc.metrics.fid import FeatureStats, frechet_distance
    from gansvc.metrics.inception_score import inception_score
    from gansvc.metrics.kid import kernel_inception_distance
    from gansvc.metrics.reference import real_reference

    net = get_extractor(extractor, device)
    features, logits = net(fake) if fake.shape[0] else _empty_features(net)
    merged = merge_feature_stats(FeatureStats(net.feature_dim).update(features.double()), context)
    all_logits = context.all_gather_rows(logits)
    all_features = context.all_gather_rows(features)
    if not context.is_main:
        return None
    if merged.count < 2:
        raise ValueError(f"FID needs at least 2 generated samples, got {merged.count}")
    reference = real_reference(real, net, data_root)
    fid = frechet_distance(reference.stats, merged.statistics())
    is_mean, is_std = inception_score(all_logits, splits=min(is_splits, merged.count))
    kid_mean = kid_std = None
    if reference.kid_features is not None:
        kid_mean, kid_std = kernel_inception_distance(
            reference.kid_features, all_features, kid_subsets, kid_subset_size, seed
        )
    return {
        "fid": fid, "is_mean": is_mean, "is_std": is_std, "kid_mean": kid_mean, "kid_std": kid_std,
        "n_real": reference.count, "n_fake": merged.count, "extractor": extractor,
    }  # fmt: skip


def _empty_features(net) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty(0, net.feature_dim), torch.empty(0, net.num_classes)


# ---------------------------------------------------------------------- the launcher's side channels
def launch_dir() -> Path | None:
    """Return the launcher's folder for this node (GANSVC_LAUNCH_DIR), or None outside gansvc.train.launch."""
    folder = os.environ.get(ENV_LAUNCH_DIR)
    return Path(folder) if folder else None


def stop_file_requested() -> bool:
    """Return whether the launcher asked for a checkpoint-and-stop (GANSVC_LAUNCH_DIR/stop exists)."""
    folder = os.environ.get(ENV_LAUNCH_DIR)
    return bool(folder) and os.path.exists(os.path.join(folder, "stop"))


def register_rank_pid() -> None:
    """Leave this rank's pid in GANSVC_LAUNCH_DIR/pids, so the launcher can sweep up any rank left behind."""
    folder = launch_dir()
    if folder is None:
        return
    try:
        (folder / "pids").mkdir(exist_ok=True)
        (folder / "pids" / str(os.getpid())).write_text(str(world_from_env().rank), encoding="utf-8")
    except OSError:
        pass


def record_failure(exit_code: int, error: BaseException | None = None, message: str = "") -> Path | None:
    """Write this rank's failure (exit code, error type, message, traceback) for the launcher; return the file.

    Does nothing outside a launch that asked for it (no GANSVC_LAUNCH_DIR). The first failure a
    rank records is kept: a later, consequential one does not replace the cause.
    """
    folder = launch_dir()
    if folder is None:
        return None
    world = world_from_env()
    (folder / "failures").mkdir(exist_ok=True)
    path = folder / "failures" / f"rank_{world.rank}.json"
    if path.exists():
        return path
    if error is not None and not message:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    record = {
        "consequential": is_peer_failure(error, message),
        "rank": world.rank,
        "local_rank": world.local_rank,
        "node_rank": world.node_rank,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "exit_code": int(exit_code),
        "error": type(error).__name__ if error is not None else "",
        "message": message,
        "traceback": "".join(traceback.format_exception(error)) if error is not None else "",
        "time": time.time(),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        return None
    return path


# What a rank sees when another rank died or hung: its own error is then a consequence, not the cause.
_PEER_FAILURE_SIGNS = (
    "connection closed by peer", "connection reset by peer", "broken pipe", "remote worker", "remote process exited",
    "communicator was aborted", "ncclremoteerror", "timed out", "collective operation timeout", "socket closed",
    "connection refused", "gloo/transport/",  # any error of gloo's TCP transport is about the other end
)  # fmt: skip


def is_peer_failure(error: BaseException | None, message: str = "") -> bool:
    """Return whether an error is how a collective fails when another rank died or hung (gloo, NCCL, the store)."""
    if error is not None and isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = (message or (str(error) if error is not None else "")).lower()
    return any(sign in text for sign in _PEER_FAILURE_SIGNS)


class EventSender:
    """Sends trainer events from rank 0 to the launcher's socket as JSON lines (GANSVC_EVENT_SOCKET)."""

    def __init__(self, address: str):
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(_socket_address(address))

    def __call__(self, event: dict) -> None:
        data = (json.dumps(event, default=_jsonable) + "\n").encode()
        with self.lock:
            self.sock.sendall(data)

    def close(self) -> None:
        """Close the connection (the launcher sees end-of-file)."""
        self.sock.close()


def event_sender_from_env() -> EventSender | None:
    """Return an EventSender to the launcher's socket when one was given and this is rank 0, else None."""
    address = os.environ.get(ENV_EVENT_SOCKET)
    if not address or not world_from_env().is_main:
        return None
    return EventSender(address)


def _socket_address(address: str) -> str:
    # '@name' is Linux's abstract namespace: no file to clean up, no path length or permission trouble.
    return "\0" + address[1:] if address.startswith("@") else address


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)
