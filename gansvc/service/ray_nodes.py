"""Which nodes of a Ray cluster see the jobs directory: every node at the server's start, each later one before it
gets work.

Run directories must be on storage every node sees (docs/cluster.md). At start the server probes every live node
(service/ray_executor.py's probe_storage: a file written here is read there, and the node's answer read back) and
refuses to start when one does not see the directory. A node that joins later is probed by a thread of this
module as soon as Ray lists it; until it has passed, the Ray pool places nothing there (RayPool.probes), and one
that fails is logged and shown in ServerInfo.nodes (NodeState.problem). A failed node is probed again every
RETRY_SECONDS, so mounting the directory there afterwards is enough to bring it into service.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from gansvc.service.placement import NodeResources
from gansvc.service.ray_executor import cluster_nodes, probe_storage

log = logging.getLogger(__name__)
POLL_SECONDS = 2.0  # how often the cluster's node list is read for newcomers
RETRY_SECONDS = 60.0  # how often a node that failed the probe is probed again
NOT_PROBED = "not probed yet: it gets work once it has shown it sees the jobs directory"


class NodeProbes:
    """The shared-storage probe's verdict per node id ('' = sees the jobs directory), kept up to date."""

    def __init__(self, jobs_dir: Path, poll_seconds: float = POLL_SECONDS, retry_seconds: float = RETRY_SECONDS):
        self.jobs_dir = Path(jobs_dir)
        self.poll_seconds = poll_seconds
        self.retry_seconds = retry_seconds
        self._lock = threading.Lock()
        self._verdicts: dict[str, tuple[str, float]] = {}  # node id -> (problem or '', when probed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check_start(self) -> None:
        """Probe every live node; raise RuntimeError naming each one that does not see the jobs directory."""
        nodes = [n for n in cluster_nodes() if n.alive]
        problems = self._probe(nodes)
        if problems:
            named = "; ".join(f"{n.name}: {problems[n.id]}" for n in nodes if n.id in problems)
            raise RuntimeError(f"the jobs directory {self.jobs_dir} must be on storage every Ray node sees "
                               f"(docs/cluster.md); not seen by: {named}")  # fmt: skip

    def start(self) -> None:
        """Start the thread that probes the nodes that join later (and retries the ones that failed)."""
        self._thread = threading.Thread(target=self._loop, name="gansvc-node-probes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread."""
        self._stop.set()

    def problem(self, node_id: str) -> str:
        """Return why the node gets no work ('' when it passed the probe; NOT_PROBED before its probe)."""
        with self._lock:
            verdict = self._verdicts.get(node_id)
        return NOT_PROBED if verdict is None else verdict[0]

    def usable(self, nodes: list[NodeResources]) -> list[NodeResources]:
        """Return the nodes that may get work now: alive, and passed the probe."""
        with self._lock:
            return [n for n in nodes if n.alive and self._verdicts.get(n.id, ("?", 0.0))[0] == ""]

    def admissible(self, nodes: list[NodeResources]) -> list[NodeResources]:
        """Return the nodes a job may be admitted for: all but those that failed the probe (a node not probed yet
        may pass: a job that only it could hold waits rather than being refused)."""
        with self._lock:
            return [n for n in nodes if self._verdicts.get(n.id, ("", 0.0))[0] == ""]

    def _probe(self, nodes: list[NodeResources]) -> dict[str, str]:
        problems = probe_storage(self.jobs_dir, nodes) if nodes else {}
        now = time.monotonic()
        with self._lock:
            for node in nodes:
                self._verdicts[node.id] = (problems.get(node.id, ""), now)
        return problems

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self._probe_newcomers()
            except Exception:  # noqa: BLE001 - a Ray hiccup must not end the probing of later nodes
                log.exception("probing the cluster's new nodes failed")

    def _probe_newcomers(self) -> None:
        now = time.monotonic()
        with self._lock:
            verdicts = dict(self._verdicts)
        due = [n for n in cluster_nodes() if n.alive and (
            n.id not in verdicts or (verdicts[n.id][0] and now - verdicts[n.id][1] >= self.retry_seconds))]
        if not due:
            return
        problems = self._probe(due)
        for node in due:
            before = verdicts.get(node.id, (None, 0.0))[0]
            if node.id in problems and not before:  # newly failing (a retry that fails again stays quiet)
                log.warning("node %s gets no work: it does not see the jobs directory %s (%s); docs/cluster.md",
                            node.name, self.jobs_dir, problems[node.id])  # fmt: skip
            elif node.id not in problems and before != "":
                log.info("node %s sees the jobs directory: it gets work from now on", node.name)
