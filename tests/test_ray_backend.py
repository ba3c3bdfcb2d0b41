"""The Ray backend (issue 19): admission against per-node resources, and a real multi-node Ray cluster.

The quick tests check the admission and waiting logic (service/placement.py) and the local backend's refusal of
nnodes > 1 without a cluster. The slow one runs tests/ray_cluster_scenarios.py inside a network namespace that
has only loopback (`unshare -n`: Ray binds the machine's interface address otherwise), where it starts a Ray head
and three one-slot worker nodes as separate processes and a real `gansvc serve --backend ray`, and asserts on
what that script observed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gansvc.service.devices import DevicePool
from gansvc.service.errors import InvalidField
from gansvc.service.placement import NodeResources, job_request, never_fits, waiting_for
from gansvc.service.validation import _device

ROOT = Path(__file__).resolve().parent.parent
LONG = 1500  # tests/ray_cluster_scenarios.py's long jobs
NODE = re.compile(r"\(([0-9a-f]{8})\)")


def node(name: str, cpus: float, gpus: float = 0, free_cpus: float | None = None, free_gpus: float | None = None,
         alive: bool = True) -> NodeResources:  # fmt: skip
    return NodeResources(id=name * 8, address="10.0.0.1", cpus=cpus, gpus=gpus, alive=alive,
                         free_cpus=cpus if free_cpus is None else free_cpus,
                         free_gpus=gpus if free_gpus is None else free_gpus)  # fmt: skip


def test_requests_count_processes_threads_and_gpus():
    assert job_request("cpu").bundle() == {"CPU": 1.0}
    assert job_request("cpu", nproc=2, threads=3).bundle() == {"CPU": 6.0}
    assert job_request("cuda", nproc=2).bundle() == {"GPU": 2.0}
    assert job_request("cuda", nproc=1, threads=4, nnodes=3).bundle() == {"CPU": 4.0, "GPU": 1.0}
    assert job_request("cuda", nproc=2, nnodes=2).describe() == "2 GPUs on each of 2 nodes"


def test_admission_names_what_the_job_asks_and_what_the_largest_node_offers():
    nodes = [node("a", 4, 1), node("b", 8, 2), node("c", 2, 0)]
    assert never_fits(job_request("cuda", nproc=2), nodes) is None
    assert never_fits(job_request("cpu", nproc=8), nodes) is None
    problem = never_fits(job_request("cuda", nproc=3), nodes)
    assert problem == "the job asks for 3 GPUs on one node, but the largest node offers 2 GPUs and 8 CPU slots"
    problem = never_fits(job_request("cpu", nproc=9), nodes)
    assert "9 CPU slots on one node" in problem and "the largest node offers 2 GPUs and 8 CPU slots" in problem
    # more nodes than the cluster has; and a share only one node can hold
    assert "has 3 live nodes" in never_fits(job_request("cpu", nnodes=4), nodes)
    assert "only 1 node of the cluster's 3" in never_fits(job_request("cuda", nproc=2, nnodes=2), nodes)
    # a dead node offers nothing
    assert never_fits(job_request("cuda", nproc=2), [node("a", 4, 1), node("b", 8, 2, alive=False)]) is not None
    assert "no live node" in never_fits(job_request("cpu"), [])


def test_a_job_that_fits_but_not_now_says_what_it_waits_for():
    nodes = [node("a", 4, 2, free_gpus=1), node("b", 4, 2, free_gpus=0)]
    assert waiting_for(job_request("cuda", nproc=1), nodes) is None
    message = waiting_for(job_request("cuda", nproc=2), nodes)
    assert message == "waiting for 2 GPUs on one node; free: at most 1 GPU on a node"
    busy = [node("a", 1, free_cpus=0), node("b", 1, free_cpus=0)]
    assert waiting_for(job_request("cpu"), busy) == \
        "waiting for 1 CPU slot on one node; free: at most 0 CPU slots on a node"
    two = [node("a", 1, free_cpus=1), node("b", 1, free_cpus=0)]
    waiting = waiting_for(job_request("cpu", nnodes=2), two)
    assert waiting == "waiting for 1 CPU slot on each of 2 nodes; 1 node has that free now"


def test_the_local_backend_refuses_jobs_across_nodes_naming_nnodes():
    pool = DevicePool([], cpu_slots=1)
    with pytest.raises(InvalidField) as error:
        _device(pool, "cpu", 1, nnodes=2)
    assert error.value.field == "nnodes" and "Ray backend" in error.value.message
    _device(pool, "cpu", 1, nnodes=1)  # one node: as before


def test_serve_refuses_a_ray_address_nobody_answers_at_once(tmp_path):
    pytest.importorskip("ray")
    import socket

    with socket.socket() as probe:  # a port nothing listens on: bound, then closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-m", "gansvc", "serve", "--backend", "ray", "--ray-address",
                          f"127.0.0.1:{port}", "--state-dir", str(tmp_path / "state"), "--listen", "127.0.0.1:0"],
                         capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert run.returncode == 2
    assert f"--ray-address 127.0.0.1:{port}: no Ray head answers there" in run.stderr
    assert "Traceback" not in run.stderr


def _unshare_works() -> str | None:
    """Return why a private network namespace cannot be made here (None when it can)."""
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "unshare or ip is not installed"
    probe = subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"unshare -n is not permitted here: {probe.stderr.strip()}"


def run_scenarios(script: str, out: Path, fashion_mnist_root, timeout: float) -> dict:
    """Run tests/SCRIPT (a cluster's scenarios) in a private network namespace, writing under `out`; return its
    results.json (skip when Ray or `unshare -n` is missing; fail with the script's and the servers' log tails)."""
    pytest.importorskip("ray")
    why = _unshare_works()
    if why:
        pytest.skip(why)
    path = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, RAY_USAGE_STATS_ENABLED="0")
    command = f"ip link set lo up; exec {sys.executable} {ROOT / 'tests' / script} {out} {fashion_mnist_root}"
    run = subprocess.run(["unshare", "-n", "bash", "-c", command], env=env, capture_output=True, text=True,
                         timeout=timeout)  # fmt: skip
    results_file = out / "results.json"
    assert results_file.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(results_file.read_text())
    logs = "".join(p.read_text(errors="replace")[-2000:] for p in sorted(out.glob("server-*.log")))
    assert run.returncode == 0, run.stderr[-4000:] + logs + results.get("server_log", "")[-3000:]
    return results


@pytest.fixture(scope="module")
def cluster_results(tmp_path_factory, fashion_mnist_root):
    return run_scenarios("ray_cluster_scenarios.py", tmp_path_factory.mktemp("ray-cluster"), fashion_mnist_root, 900)


def _runs(events: list[dict]) -> list[tuple[str, float, float]]:
    """Return (node, start, end) of each attempt, from the RUNNING event to the next state event."""
    runs, current = [], None
    for event in events:
        if event["type"] != "state":
            continue
        if current is not None:
            runs.append((current[0], current[1], event["time"]))
            current = None
        if event["state"] == "RUNNING":
            current = (NODE.search(event["device"]).group(1), event["time"])
    return runs


@pytest.mark.slow
def test_an_infeasible_job_is_refused_at_once_naming_the_largest_node(cluster_results):
    refused = cluster_results["infeasible"]
    assert refused["code"] == "FAILED_PRECONDITION", refused
    assert "2 CPU slots on one node" in refused["details"] and "largest node offers 0 GPUs and 1 CPU slot" in \
        refused["details"]
    assert refused["seconds"] < 5


@pytest.mark.slow
def test_six_jobs_on_three_nodes_run_one_per_node_at_a_time_and_all_succeed(cluster_results):
    six = cluster_results["six"]
    assert [job["state"] for job in six.values()] == ["SUCCEEDED"] * 6
    runs = [run for job in six.values() for run in _runs(job["events"])]
    assert len({node for node, _, _ in runs}) == 3  # every node got work
    for node in {n for n, _, _ in runs}:
        spans = sorted((start, end) for n, start, end in runs if n == node)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), f"two jobs at once on node {node}: {spans}"
    # three at once somewhere in the run: the nodes were used concurrently
    edges = sorted([(s, 1) for _, s, _ in runs] + [(e, -1) for _, _, e in runs], key=lambda x: (x[0], x[1]))
    level, most = 0, 0
    for _, step in edges:
        level += step
        most = max(most, level)
    assert most == 3
    assert cluster_results["waiting_message"].startswith("waiting for 1 CPU slot on one node")


@pytest.mark.slow
def test_a_node_lost_mid_job_is_a_worker_death_retried_elsewhere_from_the_checkpoint(cluster_results):
    loss = cluster_results["node_loss"]
    assert loss["state"] == "SUCCEEDED"
    runs = _runs(loss["events"])
    assert len(runs) == 2 and runs[0][0] == loss["lost"] and runs[1][0] != loss["lost"]
    requeued = [e for e in loss["events"] if e["type"] == "state" and e["state"] == "QUEUED"][-1]
    assert f"({loss['lost']})" in requeued["reason"] and "was lost" in requeued["reason"], requeued
    assert "retrying from the checkpoint at step" in requeued["reason"]
    resumed = [e for e in loss["events"] if e["type"] == "state" and e["state"] == "RUNNING"][-1]
    assert "resuming from the checkpoint at step" in resumed["reason"]
    steps = loss["steps"]  # metrics continue: increasing, to the last step
    assert steps == sorted(steps) and len(set(steps)) == len(steps) and steps[-1] == LONG


@pytest.mark.slow
def test_cancel_leaves_no_process_of_the_job_on_any_node(cluster_results):
    cancel = cluster_results["cancel"]
    assert cancel["state"] == "CANCELLED"
    assert cancel["pids_before"], "the job's worker was not seen running"
    assert cancel["pids_after"] == []


@pytest.mark.slow
def test_a_server_killed_with_9_reattaches_to_the_running_worker(cluster_results):
    restart = cluster_results["restart"]
    assert restart["state"] == "SUCCEEDED"
    assert restart["pids_before"] and set(restart["pids_before"]) <= set(restart["pids_while_down"])
    assert any(e["type"] == "log" and "re-attached" in e.get("message", "") for e in restart["events"])
    assert len(_runs(restart["events"])) == 1  # one attempt: the worker ran on, nothing restarted
    steps = restart["steps"]
    assert steps[-1] == LONG and steps == sorted(steps)
    # exactly once: the events the old server stored but had not acknowledged to the actor are not stored again
    # (the relay resumes at the position stored with them): one metrics event per record of metrics.jsonl
    events = restart["events"]
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    metrics = [e["step"] for e in events if e["type"] == "metrics"]
    assert metrics == restart["train_steps"] == list(range(10, LONG + 1, 10))
    progress = [e["step"] for e in events if e["type"] == "progress"]
    assert len(progress) == len(set(progress))


@pytest.mark.slow
def test_the_server_refuses_to_start_when_a_node_does_not_see_the_jobs_directory(cluster_results):
    probe = cluster_results["probe"]
    assert probe["started"] is False
    assert "must be on storage every Ray node sees" in probe["output"] and "not seen by: 127.0.0.1 (" in probe["output"]
    assert "cannot read" in probe["output"]
    assert probe["output"].count("127.0.0.1 (") == 1  # only the blind node: the other four see it


@pytest.mark.slow
def test_a_worker_no_server_watches_ends_itself(cluster_results):
    orphan = cluster_results["orphan"]
    assert orphan["pids_before"]
    # the server ran with GANSVC_RAY_ORPHAN_SECONDS=15; the watchdog looks every 3.75 s; its last poll came up to
    # a second before the kill
    assert 13 <= orphan["seconds"] <= 15 + 3.75 + 10, orphan


@pytest.mark.slow
def test_server_info_lists_each_node_with_the_jobs_placed_there(cluster_results):
    devices = cluster_results["info_devices"]
    named = r"node 127\.0\.0\.1 \([0-9a-f]{8}\) cpu"
    assert len(devices) == 3 and all(re.fullmatch(named, d["name"]) for d in devices)
    assert all(d["slots"] == 1 for d in devices)
    # taken while the first jobs ran: the running jobs, each on exactly one node, the one its events name
    placed = {job: d["name"] for d in devices for job in d["jobs"]}
    assert placed and sum(len(d["jobs"]) for d in devices) == len(placed)
    for job, name in placed.items():
        nodes = {node for node, _, _ in _runs(cluster_results["six"][job]["events"])}
        assert nodes == {NODE.search(name).group(1)}
