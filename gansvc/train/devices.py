"""The device a run (or each of its ranks) trains on, its torch.distributed backend, and the CPU cores it may use."""

from __future__ import annotations

import os

import torch

from gansvc.train.spec import SpecError
from gansvc.train.world import WorldInfo


def resolve_device(name: str) -> torch.device:
    """Return the torch.device for a spec's device setting (auto: CUDA when present, else CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SpecError("device", f"{name!r} asked for, but no CUDA device is available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SpecError("device", f"{name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def device_for_rank(setting: str, world: WorldInfo) -> torch.device:
    """Return the device of this rank for a spec's device setting: cuda:LOCAL_RANK on GPUs, the CPU otherwise.

    With several ranks a single GPU (cuda:N) cannot be shared, so 'cuda:N' is refused there; the GPUs a
    node offers are chosen with CUDA_VISIBLE_DEVICES instead (the service sets it to the job's devices).
    Raises SpecError naming the device setting.
    """
    if setting == "cpu":
        return torch.device("cpu")
    if setting == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if setting not in ("auto", "cuda"):
        if world.local_world_size > 1:
            raise SpecError(
                "device",
                f"{setting!r} names one GPU, but {world.local_world_size} ranks run on this node; use 'cuda' "
                "(rank r takes cuda:LOCAL_RANK) and choose the GPUs with CUDA_VISIBLE_DEVICES",
            )
        return torch.device(setting)
    if not torch.cuda.is_available():
        raise SpecError("device", f"{setting!r} asked for, but no CUDA device is available here")
    count = torch.cuda.device_count()
    if world.local_rank >= count:
        raise SpecError(
            "device",
            f"local rank {world.local_rank} needs cuda:{world.local_rank}, but only {count} CUDA device(s) are "
            f"visible here; start at most {count} processes per node",
        )
    return torch.device("cuda", world.local_rank)


def backend_for(device: torch.device) -> str:
    """Return the torch.distributed backend for a device type: nccl for CUDA, gloo for the CPU."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def cpu_threads() -> int:
    """Return the number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_for_load(cores: int, load: float | None) -> int:
    """Return the threads to use on `cores` cores when others keep `load` of them busy: the free cores, at least 1.

    On a busy CPU each of torch's parallel regions waits for a descheduled thread: with 2 threads on 2 cores
    at load 2 the default DCGAN ran at ~313 images/s where one thread runs it faster.
    """
    if load is None:
        return max(1, cores)
    return max(1, min(cores, int(cores - load + 0.5)))


def _cpu_times() -> tuple[int, int] | None:
    # (busy, total) jiffies of all cores from /proc/stat's first line; idle and iowait count as not busy
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)
    return total - fields[3] - fields[4], total


def system_load(window: float = 0.3) -> float | None:
    """Return how many cores other processes keep busy now, or None where the system does not tell.

    Measured over `window` seconds of /proc/stat while this process sleeps, not the 1-minute load average:
    that one still counts a build or set-up that just finished (after scripts/setup.sh's 2-minute compile it
    reads ~1.7 on an idle 2-core machine). Falls back to the load average where /proc/stat is missing.
    """
    import time

    first = _cpu_times()
    if first is None:
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return None
    time.sleep(window)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return None
    busy_fraction = (second[0] - first[0]) / (second[1] - first[1])
    return busy_fraction * (os.cpu_count() or 1)
