"""Scenarios of `gansvc serve --backend ray` on a real Ray cluster of this machine (tests/test_ray_backend.py).

Run inside a network namespace that has only loopback (`unshare -n`), so every Ray socket is on 127.0.0.1:
    python tests/ray_cluster_scenarios.py OUT_DIR DATA_ROOT
It starts a Ray head (no CPU slots: it only coordinates) and three worker nodes of one CPU slot each as separate
processes (ray.cluster_utils.Cluster), a real `gansvc serve --backend ray` process, drives it through the gRPC
client, and writes what it observed to OUT_DIR/results.json; the test asserts on that. Only this cluster is ended.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from ray.cluster_utils import Cluster

from gansvc.client import GanClient, state_name
from gansvc.runtime.process import children
from waiting import wait_for

RUN = {
    "dataset": "fashion-mnist", "model": "mlp", "mlp_hidden": 64, "z_dim": 16, "batch_size": 32, "log_every": 50,
    "sample_every": 0, "eval_samples": 0, "tensorboard": False, "device": "cpu",
}  # fmt: skip
LONG = 1500  # steps of the jobs that lose a node or their server mid-run (tens of seconds on a busy 2-core machine)
NODE = re.compile(r"\(([0-9a-f]{8})\)")


def add_node(cluster: Cluster, tries: int = 3):
    """Return a new one-slot worker node of `cluster`. Ray gives a node 30 s to register, which a loaded machine
    can miss (seen in CI: "timed out during startup", no raylet log written): the processes of a failed try
    (children of this one) are ended and the node is started again (as bench/cluster.py's start_cluster does)."""
    for attempt in range(1, tries + 1):
        before = set(children())
        try:
            return cluster.add_node(num_cpus=1)
        except Exception as error:  # noqa: BLE001 - Ray's own "timed out during startup"
            print(f"a node did not start (try {attempt} of {tries}): {error}", file=sys.stderr, flush=True)
            for pid in set(children()) - before:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if attempt == tries:
                raise
    raise AssertionError("unreachable")


class Server:
    """`python -m gansvc serve --backend ray` in a child process, ready once it has written its ready file."""

    def __init__(self, out: Path, data_root: Path, ray_address: str, listen: str = "127.0.0.1:0",
                 env: dict | None = None, extra: tuple[str, ...] = ()):  # fmt: skip
        self.ready = out / f"ready-{time.monotonic_ns()}.json"
        self.log_path = out / f"server-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        command = [sys.executable, "-m", "gansvc", "serve", "--backend", "ray", "--ray-address", ray_address,
                   "--listen", listen, "--state-dir", str(out / "state"), "--data-root", str(data_root),
                   "--ready-file", str(self.ready), *extra]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                        env=dict(os.environ, **(env or {})))  # fmt: skip
        deadline = time.monotonic() + 120
        while not self.ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"server did not start:\n{self.log_path.read_text()}")
            time.sleep(0.1)
        self.address = json.loads(self.ready.read_text())["address"]

    def stop(self) -> None:
        """SIGTERM the server and wait for it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def history(client: GanClient, job_id: str) -> list[dict]:
    """Return the job's stored events as (sequence, type, time, and the state change's fields or the step)."""
    out = []
    for event in client.watch(job_id, history_only=True):
        kind = event.WhichOneof("payload")
        item = {"sequence": event.sequence, "type": kind,
                "time": event.time.ToSeconds() if hasattr(event.time, "ToSeconds") else 0.0}  # fmt: skip
        if kind == "state":
            item.update(state=state_name(event.state.state), reason=event.state.reason, device=event.state.device)
        elif kind == "log":
            item.update(message=event.log.message)
        elif kind in ("progress", "metrics", "checkpoint"):
            item.update(step=getattr(event, kind).step)
        out.append(item)
    return out


def worker_pids(job_id: str) -> list[int]:
    """Return the pids of every process on this machine whose command line names the job's directory."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if job_id.encode() in command and b"gansvc" in command:
                pids.append(int(entry.name))
    return pids


def finished(client: GanClient, job_id: str, timeout: float = 240.0) -> str:
    """Wait for the job to end; return its state."""
    return wait_for(lambda: (s := state_name(client.get_job(job_id).state)) in ("SUCCEEDED", "FAILED", "CANCELLED")
                    and s, timeout, f"job {job_id} to end")  # fmt: skip


def main(out: Path, data_root: Path) -> None:
    results: dict = {}
    started = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [add_node(cluster) for _ in range(3)]
    cluster.wait_for_nodes()
    results["cluster_start_s"] = time.monotonic() - started
    server = None
    try:
        server = Server(out, data_root, cluster.address)
        client = GanClient(server.address)

        # 1. a job no node can hold is refused at once
        t = time.monotonic()
        try:
            client.submit_training(dict(RUN, steps=10, nproc=2, batch_size=32))
            results["infeasible"] = {"code": "OK"}
        except grpc.RpcError as error:
            results["infeasible"] = {"code": error.code().name, "details": error.details(),
                                     "seconds": time.monotonic() - t}  # fmt: skip

        # 2. six jobs on three one-slot nodes: one per node at a time, all succeed; the queued ones say why
        jobs = [client.submit_training(dict(RUN, steps=200, seed=i)).id for i in range(6)]
        waiting = wait_for(lambda: next((j.message for j in map(client.get_job, jobs)
                                         if j.message.startswith("waiting for")), None), 60, "a waiting message")
        results["waiting_message"] = waiting
        results["info_devices"] = [{"name": d.name, "jobs": list(d.jobs), "slots": d.slots, "free": d.free_slots}
                                   for d in client.server_info().devices]  # fmt: skip
        results["six"] = {job: {"state": finished(client, job), "events": history(client, job)} for job in jobs}

        # 3. a node removed mid-job: the job finishes on another node from its checkpoint
        job = client.submit_training(dict(RUN, steps=LONG, checkpoint_every=100, log_every=50)).id
        wait_for(lambda: any(e["type"] == "checkpoint" for e in history(client, job)), 120, "a checkpoint")
        running = [e for e in history(client, job) if e["type"] == "state" and e["state"] == "RUNNING"][-1]
        lost = NODE.search(running["device"]).group(1)
        node = next(n for n in workers if n.node_id.startswith(lost))
        cluster.remove_node(node, allow_graceful=False)
        results["node_loss"] = {"lost": lost, "state": finished(client, job, 300), "events": history(client, job),
                                "steps": [step for step, _ in client.metrics(job)]}  # fmt: skip
        workers.remove(node)
        workers.append(add_node(cluster))  # back to three nodes
        cluster.wait_for_nodes()

        # 4. cancel: the job ends, and no process of it is left on any node
        job = client.submit_training(dict(RUN, steps=10**6, checkpoint_every=5000)).id
        wait_for(lambda: any(e["type"] == "progress" for e in history(client, job)), 120, "progress")
        before = worker_pids(job)
        client.cancel(job)
        state = finished(client, job, 180)
        time.sleep(2)
        results["cancel"] = {"state": state, "pids_before": before, "pids_after": worker_pids(job)}

        # 5. the server killed with -9 mid-job and restarted: the job's worker keeps running and is re-attached, and
        # each of its events is stored once (log_every 10: a poll's worth of events is in flight at the kill)
        job = client.submit_training(dict(RUN, steps=LONG, checkpoint_every=100, log_every=10)).id
        wait_for(lambda: any(e["type"] == "checkpoint" for e in history(client, job)), 120, "a checkpoint")
        pids = worker_pids(job)
        port = server.address.rsplit(":", 1)[1]
        server.process.kill()
        server.process.wait()
        server.log.close()
        time.sleep(3)
        alive_meanwhile = worker_pids(job)
        server = Server(out, data_root, cluster.address, listen=f"127.0.0.1:{port}")
        client = GanClient(server.address)
        results["restart"] = {"pids_before": pids, "pids_while_down": alive_meanwhile,
                              "state": finished(client, job, 300), "events": history(client, job),
                              "steps": [step for step, _ in client.metrics(job)],
                              "train_steps": [r["step"] for r in map(json.loads, (out / "state" / "jobs" / job /
                                              "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]}
        server.stop()

        # 5b. a worker no server watches ends itself (its actor's watchdog: GANSVC_RAY_ORPHAN_SECONDS, here 15 s)
        server = Server(out, data_root, cluster.address, env={"GANSVC_RAY_ORPHAN_SECONDS": "15"})
        client = GanClient(server.address)
        job = client.submit_training(dict(RUN, steps=10**6, checkpoint_every=0)).id
        wait_for(lambda: any(e["type"] == "progress" for e in history(client, job)), 120, "progress")
        pids = worker_pids(job)
        server.process.kill()
        server.process.wait()
        server.log.close()
        killed = time.monotonic()
        gone = wait_for(lambda: not worker_pids(job) and time.monotonic(), 180, "the orphaned worker to end")
        results["orphan"] = {"pids_before": pids, "seconds": gone - killed}
        server = None

        # 6. the shared-storage probe: a node whose mount namespace hides the jobs directory (a tmpfs over it)
        # is named, and the server refuses to start
        jobs = out / "state" / "jobs"
        ray_bin = Path(sys.executable).with_name("ray")
        blind = subprocess.Popen(["unshare", "-m", "bash", "-c", f"mount -t tmpfs tmpfs {jobs} && exec {ray_bin} "
                                  f"start --address {cluster.address} --num-cpus 0 --block"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            import ray

            ray.init(address=cluster.address, logging_level="WARNING")
            wait_for(lambda: sum(n["Alive"] for n in ray.nodes()) == 5, 120, "the fifth node")
            ray.shutdown()
            try:
                Server(out, data_root, cluster.address)
                results["probe"] = {"started": True}
            except RuntimeError as error:
                results["probe"] = {"started": False, "output": str(error)[-2000:]}
        finally:
            blind.send_signal(signal.SIGTERM)
            blind.wait(60)
    finally:
        if server is not None:
            server.stop()
        results["total_s"] = time.monotonic() - started
        (out / "results.json").write_text(json.dumps(results, indent=1))
        cluster.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
