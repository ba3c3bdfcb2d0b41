"""The devices jobs run on: a pool of GPUs (from --devices) and a number of CPU job slots."""

from __future__ import annotations

import os
import re
import socket
import threading
from dataclasses import dataclass

_GPU = re.compile(r"^(?:cuda:)?(\d+)$")


@dataclass(frozen=True)
class Allocation:
    """Devices given to one job: 'cpu', or GPUs by their physical index."""

    kind: str  # "cpu" | "cuda"
    gpus: tuple[int, ...] = ()
    cpu_threads: int = 1

    @property
    def label(self) -> str:
        """Return the allocation as users see it: 'cpu' or 'cuda:0,cuda:1'."""
        return "cpu" if self.kind == "cpu" else ",".join(f"cuda:{i}" for i in self.gpus)

    def worker_env(self) -> dict[str, str]:
        """Return the environment that confines a worker process to these devices."""
        if self.kind == "cpu":
            threads = str(self.cpu_threads)
            # PASSIVE: OpenMP threads sleep instead of spinning while they wait. On a shared CPU
            # (several jobs, or anything else running) spinning threads slowed training 30x here.
            policy = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
            return {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                    "OMP_WAIT_POLICY": policy}  # fmt: skip
        return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, self.gpus))}

    @property
    def addresses(self) -> tuple[str, ...]:
        """Return the address of each node the job runs on (Job.nodes): this machine's, on the local backend."""
        return (local_node_address(),)

    @property
    def spec_device(self) -> str:
        """Return the spec's device inside the worker ('cpu' or 'cuda': the visible GPUs are the allocation)."""
        return self.kind


def local_node_address() -> str:
    """Return how the local backend names its one node (Job.nodes, ServerInfo.nodes): this machine's host name."""
    return socket.gethostname() or "127.0.0.1"


def detect_gpu_count() -> int:
    """Return how many CUDA devices torch sees here (0 without torch or CUDA)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class DevicePool:
    """Hands out GPUs and CPU slots to jobs, and checks up front that a request can ever be met."""

    def __init__(self, gpus: list[int], cpu_slots: int, cpu_count: int | None = None):
        if cpu_slots < 1:
            raise ValueError(f"cpu job slots must be >= 1, got {cpu_slots}")
        self.gpus = sorted(set(gpus))
        self.cpu_slots = cpu_slots
        self.cpu_count = cpu_count or os.cpu_count() or 1
        self._cpu_threads = max(1, self.cpu_count // cpu_slots)
        self._lock = threading.Lock()
        self._busy_gpus: set[int] = set()
        self._busy_cpu = 0

    @classmethod
    def from_flag(cls, devices: str, cpu_slots: int) -> DevicePool:
        """Return the pool for --devices: 'cpu', 'all' (every visible GPU) or a list like 'cuda:0,cuda:1'."""
        text = devices.strip().lower()
        if text in ("", "cpu"):
            return cls([], cpu_slots)
        if text == "all":
            return cls(list(range(detect_gpu_count())), cpu_slots)
        gpus = []
        for item in text.split(","):
            match = _GPU.match(item.strip())
            if not match:
                raise ValueError(f"--devices: {item.strip()!r} is not a GPU; expected cpu, all or e.g. cuda:0,cuda:1")
            gpus.append(int(match.group(1)))
        return cls(gpus, cpu_slots)

    def describe(self) -> str:
        """Return the pool in words, e.g. 'GPUs cuda:0, cuda:1 and 1 CPU job slot'."""
        gpus = ", ".join(f"cuda:{i}" for i in self.gpus) if self.gpus else "no GPUs"
        slots = f"{self.cpu_slots} CPU job slot{'s' if self.cpu_slots != 1 else ''}"
        return f"{'GPUs ' if self.gpus else ''}{gpus} and {slots}"

    def check(self, device: str, nproc: int = 1, nnodes: int = 1, threads: int = 0) -> str | None:
        """Return why a job asking for `device` x `nproc` (on `nnodes` nodes) can never run here, or None when it
        can. (`threads` counts on a cluster's nodes only: here a CPU job's slot shares the cores.)"""
        if nnodes > 1:
            return f"nnodes {nnodes}: jobs across nodes need the Ray backend (gansvc serve --backend ray)"
        kind, wanted = self._request(device)
        if kind == "cpu":
            # several CPU processes (torch.distributed over gloo) in one job slot: at least a core each
            if nproc > self.cpu_count:
                return f"nproc {nproc} CPU processes need {nproc} cores, but this server has {self.cpu_count}"
            return None
        if not self.gpus:
            return f"device {device!r} needs a GPU, but this server has none ({self.describe()})"
        if wanted is not None and wanted not in self.gpus:
            return f"device {device!r} is not in this server's pool ({self.describe()})"
        if nproc > len(self.gpus):
            return f"nproc {nproc} needs {nproc} GPUs, but the pool has {len(self.gpus)}"
        return None

    def capacity(self, device: str, nproc: int = 1, nnodes: int = 1, threads: int = 0) -> int:
        """Return how many such jobs the pool runs at once (a sweep's default concurrency): its CPU job slots, or
        its GPUs' room for `nproc` GPUs each."""
        kind, wanted = self._request(device)
        if kind == "cpu":
            return self.cpu_slots
        return 1 if wanted is not None else len(self.gpus) // max(1, nproc)

    def kind(self, device: str) -> str:
        """Return the kind of device ('cpu' or 'cuda') a job asking for `device` runs on here."""
        return self._request(device)[0]

    def allocate(self, device: str, nproc: int = 1, nnodes: int = 1, threads: int = 0,
                 name: str = "") -> Allocation | None:  # fmt: skip
        """Take devices for a job now; return them, or None when they are busy (the job waits). (`nnodes`,
        `threads` and the placement's `name` matter on a cluster only.)"""
        kind, wanted = self._request(device)
        with self._lock:
            if kind == "cpu":
                if self._busy_cpu >= self.cpu_slots:
                    return None
                self._busy_cpu += 1
                return Allocation("cpu", cpu_threads=self._cpu_threads)
            free = [g for g in self.gpus if g not in self._busy_gpus and (wanted is None or g == wanted)]
            if len(free) < nproc:
                return None
            chosen = tuple(free[:nproc])
            self._busy_gpus.update(chosen)
            return Allocation("cuda", gpus=chosen)

    def release(self, allocation: Allocation) -> None:
        """Give a job's devices back."""
        with self._lock:
            if allocation.kind == "cpu":
                self._busy_cpu = max(0, self._busy_cpu - 1)
            else:
                self._busy_gpus.difference_update(allocation.gpus)

    def _request(self, device: str) -> tuple[str, int | None]:
        device = (device or "auto").strip().lower()
        if device == "auto":
            return ("cuda", None) if self.gpus else ("cpu", None)
        if device == "cpu":
            return "cpu", None
        if device == "cuda":
            return "cuda", None
        match = _GPU.match(device)
        if device.startswith("cuda:") and match:
            return "cuda", int(match.group(1))
        raise ValueError(f"device {device!r}: expected auto, cpu, cuda or cuda:N")
