"""Jobs across nodes (nnodes = 2) on a real Ray cluster of this machine (tests/test_ray_multinode.py).

Run inside a network namespace that has only loopback (`unshare -n`), like tests/ray_cluster_scenarios.py:
    python tests/ray_multinode_scenarios.py OUT_DIR DATA_ROOT [SCENARIO ...]
It starts a Ray head (no CPU slots) and two worker nodes of one CPU slot each as separate processes, a real
`gansvc serve --backend ray`, drives two-node training jobs through the gRPC client, and writes what it observed to
OUT_DIR/results.json. Which node a rank ran on is read from the process tree: every rank descends from the raylet
of the node Ray started its actor on. Only this cluster is ended. Scenarios (default: all): ddp, restart, death,
cancel.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from ray._private import ray_constants
from ray.cluster_utils import Cluster

from gansvc.client import GanClient, state_name
from ray_cluster_scenarios import Server, add_node, finished, worker_pids
from waiting import wait_for

# tests/test_distributed.py's RECIPE (no BatchNorm: 2 gloo ranks train the function 1 process does), on the CPU
RECIPE = {
    "dataset": "fashion-mnist", "model": "mlp", "loss": "hinge", "spectral_norm": True, "n_critic": 2,
    "ema_decay": 0.99, "batch_size": 16, "mlp_hidden": 64, "z_dim": 16, "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5,
    "beta2": 0.999, "log_every": 1, "sample_every": 0, "eval_samples": 0, "checkpoint_every": 0,
    "tensorboard": False, "threads": 1, "device": "cpu", "nnodes": 2,
}  # fmt: skip
DDP_STEPS = 12
LONG = 1200  # steps of the job whose server is killed mid-run
DEATH_STEPS = 300  # steps of the job whose rank is killed (each attempt's start takes minutes on a busy machine)


def events_of(client: GanClient, job_id: str) -> list[dict]:
    """Return the job's stored events: sequence, type, and the fields the tests read."""
    out = []
    for event in client.watch(job_id, history_only=True):
        kind = event.WhichOneof("payload")
        item = {"sequence": event.sequence, "type": kind}
        if kind == "state":
            item.update(state=state_name(event.state.state), reason=event.state.reason, device=event.state.device)
        elif kind == "log":
            item.update(message=event.log.message)
        elif kind in ("progress", "metrics", "checkpoint"):
            item.update(step=getattr(event, kind).step)
        out.append(item)
    return out


def proc(pid: int, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return b""


def parent(pid: int) -> int:
    stat = proc(pid, "stat").decode(errors="replace")
    return int(stat.rsplit(")", 1)[1].split()[1]) if stat else 0


def ranks_by_node(job_id: str, raylets: dict[int, str]) -> dict[str, str]:
    """Return {global rank: Ray node id} of the job's live rank processes, each by the raylet it descends from."""
    found = {}
    for pid in worker_pids(job_id):
        command = proc(pid, "cmdline").split(b"\0")
        environ = dict(item.split(b"=", 1) for item in proc(pid, "environ").split(b"\0") if b"=" in item)
        if b"gansvc.train" not in command or b"gansvc.train.launch" in command or b"RANK" not in environ:
            continue  # the worker or the torchrun agent, not a rank
        ancestor = pid
        while ancestor > 1 and ancestor not in raylets:
            ancestor = parent(ancestor)
        found[environ[b"RANK"].decode()] = raylets.get(ancestor, "no raylet")
    return found


def train_steps(run_dir: Path) -> list[int]:
    """Return the steps of metrics.jsonl's train records, in file order."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if r.get("kind") == "train"]


def main(out: Path, data_root: Path, only: set[str]) -> None:
    results: dict = {}
    started = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [add_node(cluster) for _ in range(2)]
    cluster.wait_for_nodes()
    raylets = {n.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid: n.node_id for n in workers}
    results["nodes"] = sorted(raylets.values())
    jobs_dir = out / "state" / "jobs"
    server = None
    try:
        server = Server(out, data_root, cluster.address)
        client = GanClient(server.address)

        if "ddp" in (only or {"ddp"}):  # a two-node job: one rank per node, rank 0 beside bundle 0's actor
            job = client.submit_training(dict(RECIPE, steps=DDP_STEPS)).id
            seen: dict = {}

            def both_ranks():
                seen.update(ranks_by_node(job, raylets))
                state = state_name(client.get_job(job).state)
                return (len(seen) == 2 or state in ("SUCCEEDED", "FAILED", "CANCELLED")) and state

            wait_for(both_ranks, 300, "the job's two ranks")
            results["ddp"] = {"job": job, "ranks": seen, "state": finished(client, job, 300),
                              "events": events_of(client, job), "run_dir": str(jobs_dir / job)}  # fmt: skip

        if "restart" in (only or {"restart"}):  # the server killed with -9 mid-job: both bundles re-attached
            job = client.submit_training(dict(RECIPE, steps=LONG, log_every=10, checkpoint_every=100)).id
            wait_for(lambda: any(e["type"] == "checkpoint" for e in events_of(client, job)), 300, "a checkpoint")
            ranks = ranks_by_node(job, raylets)
            port = server.address.rsplit(":", 1)[1]
            server.process.kill()
            server.process.wait()
            server.log.close()
            time.sleep(3)
            ranks_while_down = ranks_by_node(job, raylets)
            server = Server(out, data_root, cluster.address, listen=f"127.0.0.1:{port}")
            client = GanClient(server.address)
            results["restart"] = {"ranks_before": ranks, "ranks_while_down": ranks_while_down,
                                  "state": finished(client, job, 900), "events": events_of(client, job),
                                  "train_steps": train_steps(jobs_dir / job)}  # fmt: skip

        if "death" in (only or {"death"}):  # node 1's rank killed: a worker death, retried from the checkpoint
            job = client.submit_training(dict(RECIPE, steps=DEATH_STEPS, log_every=10, checkpoint_every=100)).id
            wait_for(lambda: any(e["type"] == "checkpoint" for e in events_of(client, job)), 300, "a checkpoint")
            victim = next(pid for pid in worker_pids(job)
                          if b"RANK=1\0" in proc(pid, "environ") and b"gansvc.train.launch" not in proc(pid, "cmdline"))
            os.kill(victim, signal.SIGKILL)
            results["death"] = {"state": finished(client, job, 900), "events": events_of(client, job),
                                "steps": [step for step, _ in client.metrics(job)]}  # fmt: skip

        if "cancel" in (only or {"cancel"}):  # cancel ends every process of the job on both nodes
            job = client.submit_training(dict(RECIPE, steps=10**6, log_every=50)).id
            wait_for(lambda: any(e["type"] == "progress" for e in events_of(client, job)), 300, "progress")
            before = worker_pids(job)
            ranks = ranks_by_node(job, raylets)
            client.cancel(job)
            state = finished(client, job, 180)
            time.sleep(2)
            results["cancel"] = {"state": state, "ranks": ranks, "pids_before": before, "pids_after": worker_pids(job)}
    finally:
        if server is not None:
            server.stop()
        results["total_s"] = time.monotonic() - started
        (out / "results.json").write_text(json.dumps(results, indent=1))
        cluster.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main(Path(sys.argv[1]), Path(sys.argv[2]), set(sys.argv[3:]))
