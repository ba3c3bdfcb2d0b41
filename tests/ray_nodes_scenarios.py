"""Visible placement, the probe of nodes that join later, and sweeps on a real Ray cluster (tests/test_ray_nodes.py).

Run inside a network namespace that has only loopback (`unshare -n`), so every Ray socket is on 127.0.0.1:
    python tests/ray_nodes_scenarios.py OUT_DIR DATA_ROOT
A Ray head (no CPU slots) and three one-slot worker nodes (ray.cluster_utils.Cluster), a real
`gansvc serve --backend ray --jobs-dir OUT_DIR/runs`, driven through the gRPC client and the CLI (`gansvc jobs
--json`, `gansvc info --json`); what it observed goes to OUT_DIR/results.json. Only this cluster is ended.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ray.cluster_utils import Cluster
from ray_cluster_scenarios import RUN, Server, add_node, finished

from gansvc.client import GanClient, state_name
from gansvc.clients.sweep_cli import build_request
from waiting import wait_for

SWEEP = """
[base]
dataset = "fashion-mnist"
model = "mlp"
mlp_hidden = 64
z_dim = 16
batch_size = 32
steps = 300
log_every = 50
sample_every = 0
checkpoint_every = 0
eval_samples = 0
tensorboard = false
device = "cpu"
[search]
method = "grid"
[search.space]
lr_g = [1e-4, 2e-4, 5e-4, 1e-3]
[objective]
metric = "g_loss"
"""


def cli(address: str, *args: str) -> str:
    """Return what `gansvc ARGS --server ADDRESS` printed (it must succeed)."""
    run = subprocess.run([sys.executable, "-m", "gansvc", *args, "--server", address], capture_output=True, text=True,
                         timeout=120, check=True)  # fmt: skip
    return run.stdout


def running_nodes(client: GanClient, job_id: str) -> list[str]:
    """Return the node each attempt's RUNNING event names."""
    return [e.state.node for e in client.watch(job_id, history_only=True)
            if e.WhichOneof("payload") == "state" and state_name(e.state.state) == "RUNNING"]  # fmt: skip


def nodes_of(info) -> list[dict]:
    return [{"id": n.id, "address": n.address, "alive": n.alive, "problem": n.problem,
             "devices": [{"name": d.name, "jobs": list(d.jobs), "slots": d.slots} for d in n.devices]}
            for n in info.nodes]  # fmt: skip


def all_running(client: GanClient, jobs: list[str], timeout: float = 240.0) -> list:
    """Wait until every job of `jobs` is RUNNING at the same time; return them."""
    def check():
        got = [client.get_job(j) for j in jobs]
        assert not any(state_name(j.state) in ("FAILED", "CANCELLED") for j in got), [j.message for j in got]
        return got if all(state_name(j.state) == "RUNNING" for j in got) else None

    return wait_for(check, timeout, f"{len(jobs)} jobs running at once")


def main(out: Path, data_root: Path) -> None:
    results: dict = {}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(3):
        add_node(cluster)
    cluster.wait_for_nodes()
    runs = out / "runs"
    server, blind = None, None
    try:
        server = Server(out, data_root, cluster.address, extra=("--jobs-dir", str(runs)))
        client = GanClient(server.address, timeout=120)

        # 1. three jobs at once land on three nodes: Job.nodes, ServerInfo.nodes, `gansvc jobs|info --json`
        jobs = [client.submit_training(dict(RUN, steps=600, seed=i)).id for i in range(3)]
        all_running(client, jobs)
        results["placed"] = {
            "jobs": {j: list(client.get_job(j).nodes) for j in jobs},
            "info": nodes_of(client.server_info()),
            "cli_jobs": [json.loads(line) for line in cli(server.address, "jobs", "--json").splitlines()],
            "cli_info": json.loads(cli(server.address, "info", "--json")).get("nodes", []),
        }  # fmt: skip
        results["placed"]["states"] = {j: finished(client, j) for j in jobs}
        results["placed"]["running_events"] = {j: running_nodes(client, j) for j in jobs}
        results["placed"]["run_dirs"] = sorted(p.name for p in runs.iterdir() if (p / "worker_input.json").exists())
        results["placed"]["state_dir_jobs"] = (out / "state" / "jobs").exists()

        # 2. a node that joins later and does not see the jobs directory (a tmpfs over it in its mount namespace)
        # gets no work; one that joins and sees it does, once probed
        ray_bin = Path(sys.executable).with_name("ray")
        blind = subprocess.Popen(["unshare", "-m", "bash", "-c", f"mount -t tmpfs tmpfs {runs} && exec {ray_bin} "
                                  f"start --address {cluster.address} --num-cpus 1 --block"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        known = {n["id"] for n in results["placed"]["info"]}
        blind_node = wait_for(lambda: next((n for n in nodes_of(client.server_info()) if n["id"] not in known
                                            and "cannot read" in n["problem"]), None), 120, "the blind node's verdict")
        good = add_node(cluster)
        wait_for(lambda: any(n["id"] == good.node_id and n["alive"] and not n["problem"]
                             for n in nodes_of(client.server_info())), 120, "the late node probed")  # fmt: skip
        jobs = [client.submit_training(dict(RUN, steps=600, seed=10 + i)).id for i in range(4)]
        all_running(client, jobs)
        fifth = client.submit_training(dict(RUN, steps=50, seed=20)).id
        waiting = wait_for(lambda: (m := client.get_job(fifth).message).startswith("waiting for") and m, 60,
                           "the fifth job's waiting message")  # fmt: skip
        results["late"] = {
            "blind": blind_node, "good": good.node_id, "jobs": {j: list(client.get_job(j).nodes) for j in jobs},
            "info": nodes_of(client.server_info()), "fifth_waiting": waiting,
            "fifth_state_while_four_run": state_name(client.get_job(fifth).state),
        }  # fmt: skip
        results["late"]["states"] = {j: finished(client, j) for j in [*jobs, fifth]}
        results["late"]["running_events"] = {j: running_nodes(client, j) for j in [*jobs, fifth]}

        # 3. a sweep without max_concurrent: as many trials at once as the four usable nodes hold, on four nodes
        path = out / "sweep.toml"
        path.write_text(SWEEP, encoding="utf-8")
        sweep = client.submit_sweep(build_request(path))
        trials = wait_for(lambda: (t := [j.id for j in client.list_jobs() if j.sweep_id == sweep.id]) and
                          len(t) == 4 and t, 240, "four trials")  # fmt: skip
        all_running(client, trials)
        results["sweep"] = {
            "state": finished(client, sweep.id, 600), "message": client.get_job(sweep.id).message,
            "trials": {t: running_nodes(client, t) for t in trials},
            "running_reason": next(e.state.reason for e in client.watch(sweep.id, history_only=True)
                                   if e.WhichOneof("payload") == "state" and state_name(e.state.state) == "RUNNING"),
        }  # fmt: skip
        server.stop()
        server = None
    finally:
        if server is not None:
            server.stop()
        if blind is not None:
            blind.send_signal(signal.SIGTERM)
            blind.wait(60)
        logs = sorted(out.glob("server-*.log"))
        results["server_log"] = logs[0].read_text(errors="replace")[-20000:] if logs else ""
        (out / "results.json").write_text(json.dumps(results, indent=1))
        cluster.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
