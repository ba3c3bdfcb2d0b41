"""The Ray backend: each attempt of a job runs as gansvc's worker on a node of a Ray cluster.

`gansvc serve --backend ray --ray-address ADDRESS` (only this module imports ray). Ray places, counts resources
and notices dead nodes; gansvc keeps its job model, store, events and retries (the scheduler, unchanged).

- RayPool answers the scheduler's device questions from the cluster's per-node resources (service/placement.py):
  a job no node can ever hold is refused at submit (FAILED_PRECONDITION; Ray itself would wait silently), one
  that fits but not now stays QUEUED with what it waits for. Its allocation is a detached placement group
  (one bundle per node), taken only once Ray has placed it.
- Each attempt is a detached, named actor (AttemptActor, `gansvc:JOB:ATTEMPT` in the `gansvc` namespace) in the
  placement group; a job across nodes (nnodes > 1) has one per bundle (`gansvc:JOB:ATTEMPT:K` for bundle K > 0),
  each starting the worker as node K of a static torch.distributed rendezvous on bundle 0's node. An actor starts
  `python -m gansvc.service.worker` in the run directory (storage every node sees) in its own process group,
  exactly as the local executor does, keeps the worker's event lines until the server has them, relays "stop",
  and ends the process group on kill (Ray's kill would not reach the worker's children).
  A worker that no server polls for ORPHAN_SECONDS is ended by its actor, which then exits.
- A dead node ends its actors: the attempt is reported as a worker death naming the node, which the scheduler
  retries from the last checkpoint like any other. A restarted server re-attaches to the actors still running and
  resumes each relay after the last line whose events the store holds (stored with them: exactly once).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.util.placement_group import (NODE_ID_LABEL_KEY, get_placement_group, placement_group,
                                      remove_placement_group)
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

import gansvc
from gansvc.runtime import events
from gansvc.service.devices import Allocation
from gansvc.service.errors import WrongState
from gansvc.service.executor import ATTEMPT_BANNER, Attempt, AttemptListener, Executor, group_name
from gansvc.service.placement import NodeResources, Request, capacity, job_request, never_fits, waiting_for
from gansvc.service.store import JobRecord

log = logging.getLogger(__name__)
NAMESPACE = "gansvc"
ORPHAN_SECONDS = 60.0  # a worker nobody has polled this long is ended by its actor
ORPHAN_ENV = "GANSVC_RAY_ORPHAN_SECONDS"  # the server's environment may change it (tests; longer restarts)
POLL_SECONDS = 1.0  # the longest one poll of an actor waits for new events
PLACEMENT_WAIT_SECONDS = 5.0  # how long the scheduler waits for a new placement group before its next job
QUICK_ROUND_SECONDS = 0.25  # the scheduler's interval while a group is placed or a slot was just freed ...
QUICK_ROUNDS_SECONDS = 3.0  # ... for this long after the removal
PLACEMENT_GIVE_UP_SECONDS = 120.0  # a group Ray has not placed by then is removed and the job waits like any other
START_SECONDS = 120.0  # how long an attempt's actors may take to start its workers before it counts as a death


class Unplaceable(WrongState):
    """A job no node of the cluster can ever hold (FAILED_PRECONDITION at submit)."""


def actor_name(job_id: str, attempt: int, bundle: int = 0) -> str:
    """Return the name of the actor of one attempt's bundle (a restarted server finds it by this)."""
    return f"gansvc:{job_id}:{attempt}" + (f":{bundle}" if bundle else "")


def log_name(bundle: int) -> str:
    """Return the run directory's log file of the worker on bundle `bundle` (worker.log: bundle 0's, the one the
    scheduler quotes; every other node's its own file, since two nodes must not append to one shared file)."""
    return "worker.log" if bundle == 0 else f"worker.node{bundle}.log"


def connect(address: str) -> None:
    """Connect this process to the Ray cluster at `address` (ValueError naming it when that fails)."""
    if ray.is_initialized():
        return
    host, _, port = address.rpartition(":")
    if host and port.isdigit():  # ray.init retries an unreachable address for minutes: fail at once instead
        import socket

        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except OSError as error:
            raise ValueError(f"--ray-address {address}: no Ray head answers there ({error.strerror or error})") from None
    try:
        ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ValueError(f"--ray-address {address}: cannot connect to a Ray cluster there ({error})") from None


def cluster_nodes() -> list[NodeResources]:
    """Return the cluster's nodes with their CPU slots and GPUs, in all and free now."""
    from ray._private.state import available_resources_per_node

    free = available_resources_per_node()
    nodes = []
    for node in ray.nodes():
        total = node.get("Resources", {})
        available = free.get(node["NodeID"], {})
        nodes.append(NodeResources(
            id=node["NodeID"], address=node.get("NodeManagerAddress", "?"), alive=bool(node.get("Alive")),
            cpus=total.get("CPU", 0.0), gpus=total.get("GPU", 0.0),
            free_cpus=available.get("CPU", 0.0), free_gpus=available.get("GPU", 0.0),
            port=int(node.get("NodeManagerPort") or 0),
        ))  # fmt: skip
    return nodes


def node_names(node_ids: list[str]) -> tuple[str, ...]:
    """Return 'ADDRESS (ID8)' for each node id (the id alone for a node Ray no longer lists)."""
    by_id = {n.id: n for n in cluster_nodes()}
    return tuple(by_id[i].name if i in by_id else f"? ({i[:8]})" for i in node_ids)


@dataclass(frozen=True)
class RayAllocation(Allocation):
    """A job's placement: its detached placement group (by name) and the nodes of its bundles."""

    request: Request | None = None
    group: str = ""
    node_ids: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()  # 'ADDRESS (ID8)' per bundle
    endpoints: tuple[str, ...] = ()  # 'ADDRESS:PORT' per bundle (Job.nodes)

    @property
    def addresses(self) -> tuple[str, ...]:
        """Return the address of each bundle's node (Job.nodes: NodeState.address of ServerInfo.nodes)."""
        return self.endpoints

    @property
    def label(self) -> str:
        """Return the allocation as users see it, with its nodes: 'cpu on node 127.0.0.1 (1a2b3c4d)'."""
        what = self.kind if self.kind == "cpu" else f"{self.request.gpus if self.request else '?'} GPU(s)"
        return f"{what} on node{'s' if len(self.nodes) > 1 else ''} {', '.join(self.nodes)}"

    def worker_env(self) -> dict[str, str]:
        """Return the worker's device environment (a CUDA job's GPUs are the ones Ray gave its actor)."""
        return super().worker_env() if self.kind == "cpu" else {}


class RayPool:
    """The scheduler's device pool over a Ray cluster: admission from per-node totals, placement by Ray."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # which nodes see the jobs directory (service/ray_nodes.py; set by the server once the start's probe passed):
        # only those get work
        self.probes = None
        # placement groups Ray is still placing (a busy cluster takes seconds): name -> (group, when created)
        self._placing: dict[str, tuple[object, float]] = {}
        self._released = float("-inf")  # time.monotonic() of the last removal of a job's group

    def _admissible(self) -> list[NodeResources]:
        """Return the nodes a job may ever be placed on: all but those that failed the shared-storage probe."""
        nodes = cluster_nodes()
        return self.probes.admissible(nodes) if self.probes is not None else nodes

    def _usable(self) -> list[NodeResources]:
        """Return the nodes that may get work now: those that passed the shared-storage probe."""
        nodes = cluster_nodes()
        return self.probes.usable(nodes) if self.probes is not None else nodes

    # what validation, GetServerInfo and the serve banner read
    @property
    def gpus(self) -> list[int]:
        """Return one index per GPU of the cluster (GetServerInfo counts them)."""
        return list(range(int(sum(n.gpus for n in cluster_nodes() if n.alive))))

    @property
    def cpu_slots(self) -> int:
        """Return the cluster's CPU slots."""
        return int(sum(n.cpus for n in cluster_nodes() if n.alive))

    cpu_count = cpu_slots

    def describe(self) -> str:
        """Return the cluster in words: its live nodes, GPUs and CPU slots."""
        alive = [n for n in cluster_nodes() if n.alive]
        gpus, cpus = sum(n.gpus for n in alive), sum(n.cpus for n in alive)
        return f"Ray cluster of {len(alive)} nodes with {gpus:g} GPUs and {cpus:g} CPU slots"

    def add_devices(self, info, running_jobs) -> None:
        """Add each live node's CPU slots and GPUs to a ServerInfo as devices named 'node ADDRESS (ID8) cpu|gpu',
        with the running jobs placed there (their device label names the node)."""
        for node in cluster_nodes():
            if not node.alive or not (node.cpus or node.gpus):
                continue
            here = {job.id: job.device for job in running_jobs if f"({node.id[:8]})" in (job.device or "")}
            for kind, total, free in (("cpu", node.cpus, node.free_cpus), ("gpu", node.gpus, node.free_gpus)):
                if total:
                    held = [job for job, device in here.items() if device.startswith("cpu") == (kind == "cpu")]
                    info.devices.add(name=f"node {node.name} {kind}", description=f"{total:g} {kind.upper()} slots",
                                     busy=free < 1, jobs=held, slots=int(total), free_slots=int(free))  # fmt: skip

    def add_nodes(self, info, running_jobs) -> None:
        """Add every node Ray lists (dead ones too) to ServerInfo.nodes: its address, liveness, why it gets no work
        (the shared-storage probe), and its CPU slots and GPUs with the running jobs placed there (Job.nodes)."""
        for node in cluster_nodes():
            problem = self.probes.problem(node.id) if self.probes is not None and node.alive else ""
            state = info.nodes.add(id=node.id, address=node.endpoint, alive=node.alive, problem=problem)
            here = [job for job in running_jobs if node.endpoint in job.nodes]
            for kind, total, free in (("cpu", node.cpus, node.free_cpus), ("gpu", node.gpus, node.free_gpus)):
                if total:
                    held = [job.id for job in here if (job.device or "").startswith("cpu") == (kind == "cpu")]
                    state.devices.add(name=kind, description=f"{total:g} {kind.upper()} slots", busy=free < 1,
                                      jobs=held, slots=int(total), free_slots=int(free))  # fmt: skip

    def kind(self, device: str) -> str:
        """Return 'cpu' or 'cuda': what a job asking for `device` runs on in this cluster."""
        device = (device or "auto").strip().lower()
        if device == "auto":
            return "cuda" if any(n.gpus for n in cluster_nodes() if n.alive) else "cpu"
        if device in ("cpu", "cuda"):
            return device
        raise ValueError(f"device {device!r}: the Ray backend places jobs on nodes; expected auto, cpu or cuda")

    def request(self, device: str, nproc: int = 1, nnodes: int = 1, threads: int = 0) -> Request:
        """Return what a job asks of each of its nodes."""
        return job_request(self.kind(device), nproc, threads, nnodes)

    def check(self, device: str, nproc: int = 1, nnodes: int = 1, threads: int = 0) -> str | None:
        """Return None when the cluster can ever hold the job; raise Unplaceable naming what it asks and what the
        largest node offers when no set of nodes can hold it (ValueError for a device the backend does not take)."""
        problem = never_fits(self.request(device, nproc, nnodes, threads), self._admissible())
        if problem:
            raise Unplaceable(problem)
        return None

    def capacity(self, device: str, nproc: int = 1, nnodes: int = 1, threads: int = 0) -> int:
        """Return how many such jobs the nodes that may get work hold at once (a sweep's default concurrency)."""
        return capacity(self.request(device, nproc, nnodes, threads), self._usable())

    def waiting_for(self, device: str, nproc: int = 1, nnodes: int = 1, threads: int = 0) -> str | None:
        """Return what a queued job waits for now ('waiting for 1 CPU slot on one node; ...'), or None."""
        return waiting_for(self.request(device, nproc, nnodes, threads), self._usable())

    def allocate(self, device: str, nproc: int = 1, nnodes: int = 1, threads: int = 0,
                 name: str = "") -> RayAllocation | None:  # fmt: skip
        """Place the job's bundles (a detached placement group called `name`); return them, or None when the
        cluster has no room now or Ray is still placing them (the job waits; the scheduler asks again)."""
        request = self.request(device, nproc, nnodes, threads)
        with self._lock:
            placing = self._placing.get(name)
            if placing is None:
                usable = self._usable()
                if waiting_for(request, usable):
                    return None
                strategy = "STRICT_SPREAD" if request.nnodes > 1 else "PACK"
                # only on the nodes that passed the shared-storage probe (Ray's own node-id label)
                selector = [{NODE_ID_LABEL_KEY: f"in({','.join(n.id for n in usable)})"}] * request.nnodes \
                    if self.probes is not None else None
                remove_group(name)  # one a dead server left while Ray was placing it
                group = placement_group([request.bundle()] * request.nnodes, strategy=strategy, name=name,
                                        lifetime="detached", bundle_label_selector=selector)  # fmt: skip
                placing = self._placing[name] = (group, time.monotonic())
                wait = PLACEMENT_WAIT_SECONDS
            else:
                wait = 0.0
            group, since = placing
            ready, _ = ray.wait([group.ready()], timeout=wait)
            if not ready:
                # A busy cluster places a group in seconds: it stays asked for (removing it and asking again after a
                # fixed wait would never place anything once placing takes longer). One still unplaced after
                # PLACEMENT_GIVE_UP_SECONDS was taken by work Ray runs for others: the job waits like any other.
                if time.monotonic() - since >= PLACEMENT_GIVE_UP_SECONDS:
                    del self._placing[name]
                    remove_placement_group(group)
                return None
            del self._placing[name]
        return allocation_of(request, name)

    def forget_placing(self, keep: set[str] | frozenset = frozenset()) -> None:
        """Remove the placement groups still being placed for jobs that no longer wait (cancelled while queued, or
        every one when the server stops): `keep` names the groups of the jobs still queued."""
        with self._lock:
            for name in [n for n in self._placing if n not in keep]:
                group, _ = self._placing.pop(name)
                try:
                    remove_placement_group(group)
                except Exception:  # noqa: BLE001 - gone with its nodes
                    pass

    def release(self, allocation: Allocation) -> None:
        """Give the job's bundles back (remove its placement group)."""
        if isinstance(allocation, RayAllocation) and allocation.group:
            remove_group(allocation.group)
            self._released = time.monotonic()

    def round_seconds(self, usual: float) -> float:
        """Return how soon the scheduler looks at the queue again: soon while Ray places a group or just after a
        group was removed (Ray's view of the free slots lags a removal by up to a second: looking again only
        after the usual interval kept a freed slot idle for ~2 s), else `usual`."""
        with self._lock:
            soon = bool(self._placing) or time.monotonic() - self._released < QUICK_ROUNDS_SECONDS
        return min(usual, QUICK_ROUND_SECONDS) if soon else usual


def allocation_of(request: Request, name: str) -> RayAllocation | None:
    """Return the allocation of the placed placement group `name` (None when there is no such group)."""
    from ray.util import placement_group_table

    try:
        group = get_placement_group(name)
    except ValueError:
        return None
    table = placement_group_table(group)
    node_ids = tuple(table.get("bundles_to_node_id", {}).get(i, "") for i in range(request.nnodes))
    by_id = {n.id: n for n in cluster_nodes()}
    endpoints = tuple(by_id[i].endpoint if i in by_id else "?" for i in node_ids)
    return RayAllocation(kind=request.kind, cpu_threads=max(1, request.cpus), request=request, group=name,
                         node_ids=node_ids, nodes=node_names(list(node_ids)), endpoints=endpoints)  # fmt: skip


def remove_group(name: str) -> None:
    """Remove the placement group `name` if it exists."""
    try:
        remove_placement_group(get_placement_group(name))
    except ValueError:  # already gone
        pass


# --------------------------------------------------------------------------- on the node
@ray.remote(max_restarts=0, max_concurrency=4)
class AttemptActor:
    """Runs one attempt's worker process on its node and holds its event lines until the server takes them."""

    def __init__(self, job_dir: str, env: dict, banner: str, orphan_seconds: float = ORPHAN_SECONDS,
                 log: str = "worker.log"):  # fmt: skip
        self.job_dir = Path(job_dir)
        self.env = env
        self.banner = banner
        self.orphan_seconds = orphan_seconds
        self.log = log
        self.worker_args: list[str] = []
        self.lines: list[bytes] = []
        self.first = 0  # the index of self.lines[0] among all the worker's lines
        self.returncode: int | None = None
        self.process: subprocess.Popen | None = None
        self.control_fd = -1
        self.last_poll = time.monotonic()
        self.changed = threading.Condition()
        self._started = threading.Event()
        self._error = ""
        # From creation on: an actor whose server died before it asked for the worker ends itself too.
        threading.Thread(target=self._watchdog, name="gansvc-orphan-watchdog", daemon=True).start()

    def rendezvous_endpoint(self) -> str:
        """Return 'ADDRESS:PORT': this node's address and a port free on it now, for a job's static rendezvous (the
        torchrun agent of node 0, started here next, listens on it)."""
        import socket

        address = ray.util.get_node_ip_address()
        with socket.socket() as probe:
            probe.bind((address, 0))
            return f"{address}:{probe.getsockname()[1]}"

    def start(self, worker_args: list[str] | tuple = ()) -> dict:
        """Start the worker (from a thread that lives as long as it: PR_SET_PDEATHSIG is the forking thread's), with
        `worker_args` (a job across nodes: its node rank and rendezvous); return its pid and this node."""
        self.last_poll = time.monotonic()
        self.worker_args = list(worker_args)
        threading.Thread(target=self._supervise, name="gansvc-worker", daemon=True).start()
        self._started.wait()
        if self._error:
            raise OSError(self._error)
        return {"pid": self.process.pid, "node_id": ray.get_runtime_context().get_node_id()}

    def has_worker(self) -> bool:
        """Return whether start() started the worker (a restarted server re-attaches only to such an actor)."""
        self.last_poll = time.monotonic()
        return self.process is not None

    def _supervise(self) -> None:
        event_read, event_write = os.pipe()
        control_read, control_write = os.pipe()
        env = dict(os.environ)
        env.update(self.env)
        if ray.get_gpu_ids():  # the GPUs Ray gave this actor (set before a CUDA job's worker imports torch)
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(int(i)) for i in ray.get_gpu_ids())
        package_parent = str(Path(gansvc.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        command = [
            sys.executable, "-m", "gansvc.service.worker", "--job-dir", str(self.job_dir),
            "--event-fd", str(event_write), "--control-fd", str(control_read), "--parent-pid", str(os.getpid()),
            *self.worker_args,
        ]  # fmt: skip
        try:
            with open(self.job_dir / self.log, "ab") as output:
                output.write(self.banner.encode())
                output.flush()
                self.process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                    pass_fds=(event_write, control_read), start_new_session=True, env=env, cwd=self.job_dir,
                )  # fmt: skip
        except OSError as error:
            self._error = f"could not start the worker on this node: {error}"
            self._started.set()
            return
        finally:
            os.close(event_write)
            os.close(control_read)
        self.control_fd = control_write
        self._started.set()
        buffer = b""
        with os.fdopen(event_read, "rb", buffering=0) as pipe:
            while True:
                chunk = pipe.read(1 << 16)
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                self._add([line for line in lines if line.strip()])
        if buffer.strip():
            self._add([buffer])
        code = self.process.wait()
        with self.changed:
            self.returncode = code
            self.changed.notify_all()

    def _add(self, lines: list[bytes]) -> None:
        if lines:
            with self.changed:
                self.lines.extend(lines)
                self.changed.notify_all()

    def _watchdog(self) -> None:
        while True:
            time.sleep(min(5.0, self.orphan_seconds / 4))
            if time.monotonic() - self.last_poll > self.orphan_seconds:
                # No server watches this attempt any more: what it does would be recorded by nobody.
                self.kill()
                if self.process is not None:
                    self.process.wait()
                os._exit(0)

    def poll(self, acked: int, wait: float = POLL_SECONDS) -> tuple[int, list[bytes], int | None]:
        """Forget the lines before index `acked` (the server stored them; -1: keep all); return (index of the first
        line returned, the lines kept, the worker's exit status once it has exited and every line is out)."""
        self.last_poll = time.monotonic()
        with self.changed:
            if acked > self.first:
                del self.lines[: acked - self.first]
                self.first = acked
            start = max(acked, self.first)
            if start - self.first >= len(self.lines) and self.returncode is None:
                self.changed.wait(timeout=wait)
            out = self.lines[start - self.first :]
            done = self.returncode if self.returncode is not None and not out else None
            return start, list(out), done

    def stop(self) -> None:
        """Ask the worker to checkpoint and stop."""
        if self.control_fd >= 0 and self.returncode is None:
            try:
                os.write(self.control_fd, b"stop\n")
            except OSError:  # exiting: its exit ends the attempt
                pass

    def kill(self) -> None:
        """SIGKILL the worker's process group (the worker and every process it started)."""
        from gansvc.runtime.process import signal_group

        process = self.process
        if process is not None and process.poll() is None:
            import signal

            if not signal_group(process.pid, signal.SIGKILL):
                process.kill()


# --------------------------------------------------------------------------- in the server
class RayAttempt(Attempt):
    """One attempt's actors, seen from the server: a relay thread polls them and reports to the scheduler.

    Bundle 0's actor relays the worker's events (its rank 0 writes the run directory). A job across nodes also has
    an actor on each other bundle (`others`): the relay polls them too, once a second (which keeps their orphan
    watchdogs quiet), and the first of them that ends badly, or is lost with its node, ends the attempt: every
    bundle's process group is ended, and a death there (a signal, a lost node) is a worker death of the attempt.
    """

    def __init__(self, job: JobRecord, job_dir: Path, allocation: RayAllocation, listener: AttemptListener,
                 actor, node_id: str, pid: int, acked: int = 0, others: list | tuple = (),
                 other_nodes: list | tuple = (), starting: bool = False):  # fmt: skip
        super().__init__(job, job_dir, allocation)
        self.starting = starting  # the relay thread starts the workers first (RayExecutor.start does not wait)
        self.listener = listener
        self.actor = actor
        self.node_id = node_id
        self._pid = pid
        self._acked = acked
        self.others = list(others)  # the actors of bundles 1, 2, ...
        self.other_nodes = list(other_nodes)
        self._other_acked = [0] * len(self.others)
        self._other_final: dict[int, events.Event] = {}
        self._other_done: set[int] = set()
        self._cause: events.Failed | None = None  # why another bundle ended the attempt, when one did

    @property
    def actors(self) -> list:
        """Return every bundle's actor, bundle 0's first."""
        return [self.actor, *self.others]

    @property
    def pid(self) -> int:
        """Return 0: the worker is a process of another machine (the store keeps it for local workers only)."""
        return 0

    def watch(self) -> None:
        """Start the thread that relays the actor's events and reports the worker's exit."""
        threading.Thread(target=self._relay, name=f"gansvc-ray-{self.job_id}", daemon=True).start()

    def _send_stop(self) -> None:
        """Ask every bundle's actor to tell its worker to stop (the ranks agree on the step to stop at)."""
        for actor in self.actors:
            actor.stop.remote()

    def kill(self) -> None:
        """End every bundle's worker process group on its node (through its actor)."""
        self.killed = True
        for actor in self.actors:
            actor.kill.remote()

    def close(self) -> None:
        """End the actors; the placement group is released by the scheduler (pool.release)."""
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone with its node
                pass

    def _start_workers(self) -> bool:
        """Start each bundle's worker through its actor (a job across nodes: node K of a static rendezvous at a free
        port of bundle 0's node); return False, the attempt's last word said, when they did not start."""
        actors = self.actors
        try:
            worker_args = [[] for _ in actors]
            if len(actors) > 1:
                endpoint = ray.get(actors[0].rendezvous_endpoint.remote(), timeout=START_SECONDS)
                worker_args = [["--node-rank", str(k), "--rdzv-endpoint", endpoint] for k in range(len(actors))]
            ray.get([actor.start.remote(args) for actor, args in zip(actors, worker_args)], timeout=START_SECONDS)
        except (ray.exceptions.RayError, OSError) as error:
            for actor in actors:
                RayExecutor._end(actor, "")
            cause = getattr(error, "cause", None)
            # the worker's own start failed on its node (OSError there): that is the job's failure; an actor or
            # node lost meanwhile, or no start in time, is a death, retried
            died = not isinstance(cause if cause is not None else error, OSError)
            first_line = str(cause if cause is not None else error).strip().splitlines()
            self.final = events.Failed(reason=f"the attempt's actors did not start its workers: "
                                              f"{first_line[-1] if first_line else type(error).__name__}",
                                       died=died)  # fmt: skip
            return False
        if self.killed:  # killed, or asked to stop, while the workers were starting: tell them now
            self.kill()
        elif self.stop_requested_at is not None:
            self._send_stop()
        return True

    def _relay(self) -> None:
        if self.starting:
            self.starting = False
            if not self._start_workers():
                self.listener.worker_exited(self, -9)
                return
        returncode = None
        failures = 0
        checked = 0.0
        while returncode is None:
            if self.others and time.monotonic() - checked >= POLL_SECONDS:
                checked = time.monotonic()
                self._check_others()
            try:
                start, lines, done = ray.get(self.actor.poll.remote(self._acked), timeout=POLL_SECONDS + 30)
                failures = 0
            except ray.exceptions.GetTimeoutError:
                failures += 1
                if failures < 3 and self._node_alive():
                    continue
                returncode = self._lost()
                break
            except ray.exceptions.RayError as error:
                returncode = self._lost(str(error))
                break
            except Exception:  # a store failure must not leave the job RUNNING forever
                log.exception("relaying the events of %s failed", self.job_id)
                self.kill()
                continue
            try:
                self._record(lines, start + len(lines))
            except Exception:
                log.exception("storing the events of %s failed", self.job_id)
                self.kill()
            self._acked = start + len(lines)
            returncode = done
        if self.others:
            self._settle_others()
        self.listener.worker_exited(self, returncode)

    def _check_others(self, wait: float = 0.0) -> None:
        """Poll the other bundles' actors once; note each one's last word and end, and end the attempt when one
        of them ended badly or was lost."""
        pending = [k for k in range(len(self.others)) if k not in self._other_done]
        replies = [self.others[k].poll.remote(self._other_acked[k], wait) for k in pending]
        for k, reply in zip(pending, replies):
            try:
                start, lines, done = ray.get(reply, timeout=POLL_SECONDS + 30)
            except ray.exceptions.GetTimeoutError:
                continue  # a busy node: asked again next time (its death shows as an actor error)
            except ray.exceptions.RayError as error:
                self._other_done.add(k)
                self._bundle_ended(k, error=str(error))
                continue
            self._other_acked[k] = start + len(lines)
            for line in lines:
                event = events.decode(line)
                if isinstance(event, (events.Finished, events.Failed)):
                    self._other_final[k] = event
            if done is not None:
                self._other_done.add(k)
                if done != 0:
                    self._bundle_ended(k, returncode=done)

    def _bundle_ended(self, k: int, returncode: int | None = None, error: str = "") -> None:
        """Bundle k+1's worker ended badly (returncode) or its actor is gone (error): the first such end is the
        attempt's cause, and every bundle's processes are ended."""
        if self._cause is not None or isinstance(self.final, events.Finished):
            return
        bundle, nnodes = k + 1, len(self.others) + 1
        where = node_names([self.other_nodes[k]])[0] if k < len(self.other_nodes) else "?"
        said = self._other_final.get(k)
        if error:
            node_died = "node" in error.lower() and ("died" in error.lower() or "dead" in error.lower())
            alive = any(n.id == self.other_nodes[k] and n.alive for n in cluster_nodes()) if not node_died else False
            state = "lost its gansvc actor" if alive else "was lost"
            self._cause = events.Failed(reason=f"the node {where} running node {bundle} of {nnodes} of the job {state}",
                                        died=True)  # fmt: skip
        elif isinstance(said, events.Failed):
            self._cause = events.Failed(reason=f"node {bundle} of {nnodes} ({where}): {said.reason}", error=said.error,
                                        died=said.died)  # fmt: skip
        else:
            from gansvc.service.scheduler import describe_exit

            self._cause = events.Failed(reason=f"node {bundle} of {nnodes} ({where}): {describe_exit(returncode)}",
                                        died=True)  # fmt: skip
        log.warning("job %s: %s; ending every node's processes", self.job_id, self._cause.reason)
        self.kill()

    def _settle_others(self, timeout: float = 30.0) -> None:
        """Bundle 0's worker has ended: wait for the other bundles' workers to end (killing them after `timeout`),
        and decide the attempt's last word."""
        deadline = time.monotonic() + timeout
        while len(self._other_done) < len(self.others) and time.monotonic() < deadline:
            self._check_others(wait=POLL_SECONDS)
        if len(self._other_done) < len(self.others):
            for actor in self.others:
                actor.kill.remote()
        cause = self._cause
        if cause is None or isinstance(self.final, events.Finished):
            return
        # A death anywhere (a signal, a lost node) is the attempt's, retried. Another bundle's error of its own wins
        # over what bundle 0 said only when bundle 0 was ended because of it (its ranks then lost their peers).
        if cause.died or self.final is None or (self.killed and not self.final.died):
            self.final = cause

    def _node_alive(self) -> bool:
        return any(n.id == self.node_id and n.alive for n in cluster_nodes())

    def _lost(self, error: str = "") -> int:
        """The actor is gone (its node died, or it was killed): say so as the worker's last word; return -9."""
        if self.final is None and not self.killed:
            # The actor's death can reach us before the GCS has marked its node dead (its health checks take
            # seconds): Ray's own words on the death, or a short wait for the node's state, tell the two apart.
            node_died = "node" in error.lower() and ("died" in error.lower() or "dead" in error.lower())
            deadline = time.monotonic() + 30.0
            while not node_died and self._node_alive() and time.monotonic() < deadline:
                time.sleep(0.5)
            where = node_names([self.node_id])[0]
            state = "was lost" if node_died or not self._node_alive() else "lost its gansvc actor"
            self.final = events.Failed(reason=f"the node {where} running the worker {state}", died=True)
        return -9

    def _record(self, lines: list[bytes], relayed: int) -> None:
        batch = []
        for line in lines:
            event = events.decode(line)
            if isinstance(event, (events.Finished, events.Failed)):
                self.final = event
            elif event.stored:
                batch.append(event)
        if batch:  # stored with the position after them: a restarted server relays from there (exactly once)
            self.listener.worker_events(self, batch, relayed)


@ray.remote(num_cpus=0, max_retries=0)
def _probe_on_node(path: str, token: str) -> str:
    """Read the server's probe file on this node and answer with a file of its own; return '' or the problem."""
    probe = Path(path)
    try:
        seen = probe.read_text(encoding="utf-8")
    except OSError as error:
        return f"cannot read {probe} ({error.strerror or error})"
    if seen != token:
        return f"{probe} holds something else there: not the same file system"
    try:
        (probe.parent / f"{probe.name}.{ray.get_runtime_context().get_node_id()}").write_text(token, encoding="utf-8")
    except OSError as error:
        return f"cannot write in {probe.parent} ({error.strerror or error})"
    return ""


def probe_storage(jobs_dir: Path, nodes: list[NodeResources] | None = None,
                  timeout: float = 120.0) -> dict[str, str]:  # fmt: skip
    """Prove that each of `nodes` (default: every live node) sees `jobs_dir`: a file written here is read there, and
    each node's answer file is read back here. Return {node id: what went wrong} for the nodes that do not."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = os.urandom(16).hex()
    probe = jobs_dir / f".gansvc-probe-{token[:8]}"
    probe.write_text(token, encoding="utf-8")
    nodes = [n for n in cluster_nodes() if n.alive] if nodes is None else nodes
    problems = {}
    try:
        answers = [_probe_on_node.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n.id, soft=False))
                   .remote(str(probe), token) for n in nodes]  # fmt: skip
        for node, answer in zip(nodes, answers):
            try:
                problem = ray.get(answer, timeout=timeout)
            except ray.exceptions.RayError as error:
                problem = f"the probe did not run there ({type(error).__name__})"
            back = probe.parent / f"{probe.name}.{node.id}"
            if not problem and not (back.is_file() and back.read_text(encoding="utf-8") == token):
                problem = f"its file in {jobs_dir} is not seen here"
            if problem:
                problems[node.id] = problem
    finally:
        for path in jobs_dir.glob(f"{probe.name}*"):
            path.unlink(missing_ok=True)
    return problems


class RayExecutor(Executor):
    """Starts each attempt in a detached actor placed in the job's placement group."""

    def __init__(self, orphan_seconds: float | None = None):
        if orphan_seconds is None:
            text = os.environ.get(ORPHAN_ENV, "")
            try:
                orphan_seconds = float(text) if text else ORPHAN_SECONDS
            except ValueError:
                raise ValueError(f"${ORPHAN_ENV}: got {text!r}, expected seconds") from None
        if not orphan_seconds > 0:
            raise ValueError(f"${ORPHAN_ENV}: got {orphan_seconds}, expected seconds > 0")
        self.orphan_seconds = orphan_seconds

    def start(self, job: JobRecord, job_dir: Path, allocation: Allocation, attempt: int,
              listener: AttemptListener) -> RayAttempt:  # fmt: skip
        """Create the attempt's actor on each bundle's node and return the attempt at once; its relay thread has
        the actors start the workers (RayAttempt._start_workers: a start that fails is the attempt's end)."""
        assert isinstance(allocation, RayAllocation), "the Ray executor runs jobs the Ray pool placed"
        request = allocation.request
        group = get_placement_group(allocation.group)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        actors = []
        for bundle in range(request.nnodes):
            which = f", node {bundle} of {request.nnodes}" if request.nnodes > 1 else ""
            banner = f"\n{ATTEMPT_BANNER}{attempt} on {allocation.label}{which}, {stamp} =====\n"
            actors.append(AttemptActor.options(
                name=actor_name(job.id, attempt, bundle), namespace=NAMESPACE, lifetime="detached",
                num_cpus=request.cpus, num_gpus=request.gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=bundle),
            ).remote(str(job_dir), allocation.worker_env(), banner, self.orphan_seconds, log_name(bundle)))  # fmt: skip
        # The actors start on their nodes meanwhile; the attempt's relay thread asks them for the workers, so the
        # scheduler places the next job without waiting for this one's processes (seconds each on a busy node).
        return RayAttempt(job, job_dir, allocation, listener, actors[0], allocation.node_ids[0], 0,
                          others=actors[1:], other_nodes=list(allocation.node_ids[1:]), starting=True)  # fmt: skip

    def reattach(self, job: JobRecord, job_dir: Path, pool, listener: AttemptListener) -> RayAttempt | None:
        """Return the running attempt of a job a dead server left RUNNING, bound to its actors (None: one of its
        bundles' actors is gone, and the others are ended)."""
        nproc, nnodes = int(job.spec.get("nproc", 1) or 1), int(job.spec.get("nnodes", 1) or 1)
        actors = _attempt_actors(job.id, job.attempts, nnodes)
        threads = int(job.spec.get("threads", 0) or 0)
        request = pool.request(job.spec.get("device", "auto"), nproc, nnodes, threads)
        allocation = allocation_of(request, group_name(job.id, job.attempts))
        alive = None not in actors and allocation is not None
        try:
            # an actor whose worker was never started (the server died first) holds nothing to re-attach to
            alive = alive and all(ray.get([a.has_worker.remote() for a in actors], timeout=30))
        except ray.exceptions.RayError:
            alive = False
        if not alive:
            for actor in actors:
                if actor is not None:
                    self._end(actor, "")
            remove_group(group_name(job.id, job.attempts))
            return None
        # The relay resumes after the lines whose events the store holds (stored with them, in one transaction):
        # the lines the old server stored but had not yet acknowledged are not stored twice.
        return RayAttempt(job, job_dir, allocation, listener, actors[0], allocation.node_ids[0], 0,
                          acked=job.relayed, others=actors[1:], other_nodes=allocation.node_ids[1:])  # fmt: skip

    def kill_stale(self, job: JobRecord, job_dir: Path) -> bool:
        """End the actors (and workers) a dead server left for the job's last attempt, if any; return whether one
        was."""
        actors = [a for a in _attempt_actors(job.id, job.attempts, int(job.spec.get("nnodes", 1) or 1)) if a]
        for actor in actors:
            self._end(actor, "")
        remove_group(group_name(job.id, job.attempts))
        return bool(actors)

    @staticmethod
    def _end(actor, group: str) -> None:
        try:
            ray.get(actor.kill.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - gone already
            pass
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001
            pass
        if group:
            remove_group(group)


def _attempt_actors(job_id: str, attempt: int, nnodes: int) -> list:
    """Return the actor of each bundle of one attempt (None for one that is gone)."""
    actors = []
    for bundle in range(max(1, nnodes)):
        try:
            actors.append(ray.get_actor(actor_name(job_id, attempt, bundle), namespace=NAMESPACE))
        except ValueError:
            actors.append(None)
    return actors
