"""What a job asks of a cluster's nodes, and whether the nodes can hold it: ever (admission) and now (waiting).

Pure functions over a list of NodeResources (what Ray reports per node), so the Ray backend's admission and
its QUEUED messages are tested without a cluster. A job asks for one bundle per node (`nnodes` of them, each
on a different node): GPUs for a CUDA job (one per process), CPU slots for a CPU job (`nproc` processes of
`threads` threads each, at least one slot per process).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeResources:
    """One node of the cluster: its id, its address, its CPU slots and GPUs in all and free now, and its liveness."""

    id: str
    address: str
    cpus: float
    gpus: float
    free_cpus: float = 0.0
    free_gpus: float = 0.0
    alive: bool = True
    port: int = 0  # the node's raylet (node manager) port: with the address, unique even for nodes of one machine

    @property
    def endpoint(self) -> str:
        """Return the node's address as Job.nodes and ServerInfo.nodes name it: 'ADDRESS:PORT' of its raylet."""
        return f"{self.address}:{self.port}" if self.port else self.address

    @property
    def name(self) -> str:
        """Return the node as users see it: 'ADDRESS (first 8 hex digits of its id)'."""
        return f"{self.address} ({self.id[:8]})"


@dataclass(frozen=True)
class Request:
    """What one job asks: `cpus` slots and `gpus` GPUs on each of `nnodes` different nodes."""

    kind: str  # "cpu" | "cuda"
    cpus: int
    gpus: int
    nnodes: int = 1

    def bundle(self) -> dict[str, float]:
        """Return one node's share as Ray resources (a placement-group bundle)."""
        wanted = {"CPU": float(self.cpus), "GPU": float(self.gpus)}
        return {name: amount for name, amount in wanted.items() if amount}

    def describe(self) -> str:
        """Return the request in words, e.g. '2 GPUs on each of 2 nodes' or '1 CPU slot on one node'."""
        parts = []
        if self.gpus:
            parts.append(_count(self.gpus, "GPU"))
        if self.cpus:
            parts.append(_count(self.cpus, "CPU slot"))
        where = "on one node" if self.nnodes == 1 else f"on each of {self.nnodes} nodes"
        return f"{' and '.join(parts)} {where}"


def job_request(kind: str, nproc: int = 1, threads: int = 0, nnodes: int = 1) -> Request:
    """Return what a job of `kind` ('cpu' | 'cuda') with these spec values asks of each of its nodes."""
    nproc, threads, nnodes = max(1, int(nproc)), max(0, int(threads)), max(1, int(nnodes))
    if kind == "cuda":
        # one GPU per process; CPU threads only when the spec names them (a GPU job's own CPU use is small)
        return Request("cuda", cpus=threads, gpus=nproc, nnodes=nnodes)
    return Request("cpu", cpus=nproc * max(1, threads), gpus=0, nnodes=nnodes)


def _fits(request: Request, cpus: float, gpus: float) -> bool:
    return cpus >= request.cpus and gpus >= request.gpus


def never_fits(request: Request, nodes: list[NodeResources]) -> str | None:
    """Return why no set of the cluster's live nodes can ever hold `request` (naming what it asks and what the
    largest node offers), or None when some can."""
    alive = [n for n in nodes if n.alive]
    if not alive:
        return f"the job asks for {request.describe()}, but the cluster has no live node"
    holding = [n for n in alive if _fits(request, n.cpus, n.gpus)]
    if len(holding) >= request.nnodes:
        return None
    largest = max(alive, key=lambda n: (n.gpus, n.cpus) if request.gpus else (n.cpus, n.gpus))
    offers = f"{_count(largest.gpus, 'GPU')} and {_count(largest.cpus, 'CPU slot')}"
    if request.nnodes > len(alive):
        return f"the job asks for {request.describe()}, but the cluster has {_count(len(alive), 'live node')}"
    if request.nnodes > 1 and holding:
        return (f"the job asks for {request.describe()}, but only {_count(len(holding), 'node')} of the cluster's "
                f"{len(alive)} can hold that share (the largest node offers {offers})")
    return f"the job asks for {request.describe()}, but the largest node offers {offers}"


def capacity(request: Request, nodes: list[NodeResources]) -> int:
    """Return how many jobs of this request the live nodes hold at once (all resources free; a sweep's default
    number of trials at once)."""
    per_node = []
    for node in (n for n in nodes if n.alive):
        room = [int(have // want) for have, want in ((node.cpus, request.cpus), (node.gpus, request.gpus)) if want]
        per_node.append(min(room) if room else 0)
    if request.nnodes == 1:
        return sum(per_node)
    # each job takes one share on each of nnodes different nodes: greedily from the nodes with the most room
    count, room = 0, sorted(per_node, reverse=True)
    while len([r for r in room if r > 0]) >= request.nnodes:
        for index in range(request.nnodes):
            room[index] -= 1
        room.sort(reverse=True)
        count += 1
    return count


def waiting_for(request: Request, nodes: list[NodeResources]) -> str | None:
    """Return what a job that fits the cluster waits for now (e.g. 'waiting for 2 GPUs on one node; free: 1'),
    or None when enough nodes have the resources free."""
    alive = [n for n in nodes if n.alive]
    free = [n for n in alive if _fits(request, n.free_cpus, n.free_gpus)]
    if len(free) >= request.nnodes:
        return None
    # the most a node has free of the scarcer thing the job asks for
    if request.gpus:
        most = max((n.free_gpus for n in alive), default=0)
        shown = f"{_number(most)} GPU{'s' if most != 1 else ''}"
    else:
        most = max((n.free_cpus for n in alive), default=0)
        shown = f"{_number(most)} CPU slot{'s' if most != 1 else ''}"
    if request.nnodes > 1:
        return f"waiting for {request.describe()}; {_count(len(free), 'node')} {'has' if len(free) == 1 else 'have'}" \
               f" that free now"
    return f"waiting for {request.describe()}; free: at most {shown} on a node"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _count(value: float, noun: str) -> str:
    return f"{_number(value)} {noun}{'' if value == 1 else 's'}"
