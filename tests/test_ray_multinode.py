"""Jobs across nodes with the Ray backend (issue 19, item 2) and exactly-once events after a server restart (item 4).

The slow tests run tests/ray_multinode_scenarios.py inside a network namespace that has only loopback (`unshare -n`):
a Ray head and two one-slot worker nodes as separate processes, a real `gansvc serve --backend ray`, two-node DDP
jobs (one gloo rank per node). They assert on what that script observed: which raylet each rank descends from, the
stored events by sequence, the run directory's files. The reference for the trained generator is an independent
single-machine run of the same spec, `gansvc train --nproc-per-node 2`: the same two-rank arithmetic, so the two
generators agree to float32 rounding of gloo's all-reduce (measured: bit-identical), where a rank reading another
rank's shard moves them by orders of magnitude more.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_ray_backend import run_scenarios

ROOT = Path(__file__).resolve().parent.parent
NODE = re.compile(r"\(([0-9a-f]{8})\)")
DDP_STEPS, LONG, DEATH_STEPS = 12, 1200, 300  # tests/ray_multinode_scenarios.py's


@pytest.fixture(scope="module")
def multinode(tmp_path_factory, fashion_mnist_root):
    return run_scenarios("ray_multinode_scenarios.py", tmp_path_factory.mktemp("ray-multinode"), fashion_mnist_root,
                         2700)  # fmt: skip


def states(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "state"]


def assert_exactly_once(events: list[dict], train_steps: list[int]) -> None:
    """Every stored event once: sequences 1, 2, ... and the metrics events one per record of metrics.jsonl (rank 0's
    own file), in order."""
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    metrics = [e["step"] for e in events if e["type"] == "metrics"]
    assert metrics == train_steps, f"{len(metrics)} metrics events for {len(train_steps)} records"
    progress = [e["step"] for e in events if e["type"] == "progress"]
    assert len(progress) == len(set(progress)), "a progress event was stored twice"


@pytest.mark.slow
def test_a_two_node_job_runs_one_rank_on_each_node_and_trains_as_one_machine_does(multinode, tmp_path):
    ddp = multinode["ddp"]
    assert ddp["state"] == "SUCCEEDED", states(ddp["events"])
    # the process tree: rank 0 and rank 1 each descend from the raylet of a different node of the cluster
    ranks = ddp["ranks"]
    assert set(ranks) == {"0", "1"} and ranks["0"] != ranks["1"] and set(ranks.values()) <= set(multinode["nodes"])
    # the RUNNING event names both nodes, bundle 0's first: the node where rank 0 ran
    (running,) = [e for e in states(ddp["events"]) if e["state"] == "RUNNING"]
    assert NODE.findall(running["device"]) == [ranks["0"][:8], ranks["1"][:8]], running
    started = [e["message"] for e in ddp["events"] if e["type"] == "log" and "torchrun" in e["message"]]
    assert len(started) == 1 and re.search(r"node 0 of 2 \(rendezvous at 127\.0\.0\.1:\d+\)", started[0]), started
    run_dir = Path(ddp["run_dir"])
    assert "node 1 of 2" in (run_dir / "worker.node1.log").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == DDP_STEPS
    # only rank 0 wrote the run directory, and its events reached the store exactly once
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r["step"] for r in records if r["kind"] == "train"]
    assert train == list(range(1, DDP_STEPS + 1))
    assert_exactly_once(ddp["events"], train)

    # the same spec on one machine, two ranks under `gansvc train --nproc-per-node 2`
    spec = json.loads((run_dir / "rank_spec.json").read_text())
    assert spec["nnodes"] == 2
    (tmp_path / "spec.json").write_text(json.dumps(dict(spec, nnodes=1, nproc=1)))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    reference = subprocess.run([sys.executable, "-m", "gansvc", "train", "--nproc-per-node", "2", "--spec",
                                str(tmp_path / "spec.json"), "--out", str(tmp_path / "ref"), "--quiet"],
                               env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert reference.returncode == 0, reference.stderr[-3000:]
    ours = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    theirs = torch.load(tmp_path / "ref" / "checkpoints" / "latest.pt", weights_only=True)
    assert ours["step"] == theirs["step"] == DDP_STEPS
    for part in ("G", "D"):
        assert ours[part].keys() == theirs[part].keys()
        for name, tensor in ours[part].items():
            torch.testing.assert_close(tensor, theirs[part][name], rtol=1e-6, atol=1e-7, msg=f"{part}.{name}")


@pytest.mark.slow
def test_a_server_killed_with_9_reattaches_every_node_and_stores_each_event_once(multinode):
    restart = multinode["restart"]
    assert restart["state"] == "SUCCEEDED", states(restart["events"])
    before, meanwhile = restart["ranks_before"], restart["ranks_while_down"]
    assert set(before) == {"0", "1"} and before == meanwhile  # both nodes' ranks ran on while no server watched
    assert any(e["type"] == "log" and "re-attached" in e.get("message", "") for e in restart["events"])
    assert [e["state"] for e in states(restart["events"])] == ["QUEUED", "RUNNING", "SUCCEEDED"]  # one attempt
    assert restart["train_steps"] == list(range(10, LONG + 1, 10))
    assert_exactly_once(restart["events"], restart["train_steps"])


@pytest.mark.slow
def test_a_rank_killed_on_the_second_node_is_a_worker_death_retried_from_the_checkpoint(multinode):
    death = multinode["death"]
    assert death["state"] == "SUCCEEDED", states(death["events"])
    runs = [e for e in states(death["events"]) if e["state"] == "RUNNING"]
    requeued = [e for e in states(death["events"]) if e["state"] == "QUEUED"][1:]
    assert len(runs) == 2 and len(requeued) == 1, states(death["events"])
    assert "attempt 1 died" in requeued[0]["reason"] and "node 1 of 2" in requeued[0]["reason"], requeued
    assert "retrying from the checkpoint at step" in requeued[0]["reason"]
    steps = death["steps"]  # the job's metrics continue: increasing, to the last step
    assert steps == sorted(steps) and len(set(steps)) == len(steps) and steps[-1] == DEATH_STEPS


@pytest.mark.slow
def test_cancel_of_a_two_node_job_leaves_no_process_on_either_node(multinode):
    cancel = multinode["cancel"]
    assert cancel["state"] == "CANCELLED"
    assert set(cancel["ranks"]) == {"0", "1"} and len(set(cancel["ranks"].values())) == 2
    assert len(cancel["pids_before"]) >= 6  # per node: the worker, the torchrun agent and the rank
    assert cancel["pids_after"] == []
