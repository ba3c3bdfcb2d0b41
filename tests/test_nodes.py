"""Visible placement on the local backend (issue 19): Job.nodes, ServerInfo.nodes and the RUNNING event's node, in
the API and in `gansvc jobs --json` / `gansvc info --json`; `gansvc serve --jobs-dir`; the store's migration to
the nodes column. (The Ray backend's nodes: tests/test_ray_nodes.py.)"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gansvc.client import GanClient, state_name
from gansvc.service.server import GanServer, ServerConfig
from gansvc.service.store import JobStore

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    "dataset": "fashion-mnist", "model": "mlp", "mlp_hidden": 32, "z_dim": 8, "batch_size": 16, "steps": 2,
    "log_every": 1, "sample_every": 0, "checkpoint_every": 0, "eval_samples": 0, "tensorboard": False,
}  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory, fashion_mnist_root):
    folder = tmp_path_factory.mktemp("nodes")
    server = GanServer(ServerConfig(state_dir=folder / "state", jobs_dir=folder / "shared" / "runs",
                                    listen="127.0.0.1:0", data_roots=[fashion_mnist_root]))  # fmt: skip
    server.start()
    with GanClient(server.address, timeout=120) as client:  # the first GetServerInfo loads the kernels
        job = client.wait(client.submit_training(TINY).id, timeout=240)
        yield server, client, job, folder
    server.shutdown(timeout=20)


def _cli(address: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-m", "gansvc", *args, "--server", address], capture_output=True, text=True,
                         env=env, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_a_local_job_names_this_machine_as_its_node(served):
    server, client, job, _ = served
    assert state_name(job.state) == "SUCCEEDED", job.message
    host = socket.gethostname()
    assert list(job.nodes) == [host]
    running = [e.state for e in client.watch(job.id, history_only=True)
               if e.WhichOneof("payload") == "state" and state_name(e.state.state) == "RUNNING"]  # fmt: skip
    assert [r.node for r in running] == [host]
    listed = [json.loads(line) for line in _cli(server.address, "jobs", "--json").splitlines()]
    assert [(j["id"], j["nodes"]) for j in listed] == [(job.id, [host])]
    assert host in _cli(server.address, "jobs").splitlines()[1]  # the table's NODES column


def test_server_info_lists_the_local_backend_as_one_node_with_its_devices(served):
    server, client, _, _ = served
    info = client.server_info()
    assert len(info.nodes) == 1
    node = info.nodes[0]
    assert (node.id, node.address, node.alive, node.problem) == (socket.gethostname(), socket.gethostname(), True, "")
    assert list(node.devices) == list(info.devices) and [d.name for d in node.devices] == ["cpu"]
    printed = json.loads(_cli(server.address, "info", "--json"))
    assert printed["nodes"] == [{"id": node.id, "address": node.address, "alive": True,
                                 "devices": [{"name": "cpu", "description": node.devices[0].description,
                                              "slots": 1, "free_slots": 1}]}]  # fmt: skip
    assert f"  {node.address} (" in _cli(server.address, "info")


def test_jobs_dir_holds_the_run_directories_and_the_state_dir_the_store(served):
    _, _, job, folder = served
    assert (folder / "shared" / "runs" / job.id / "worker_input.json").is_file()
    assert (folder / "shared" / "runs" / job.id / "worker.log").is_file()
    assert (folder / "state" / "gansvc.db").is_file()
    assert not (folder / "state" / "jobs").exists()


def test_serve_refuses_a_jobs_dir_it_cannot_create(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-m", "gansvc", "serve", "--state-dir", str(tmp_path / "state"),
                          "--jobs-dir", str(tmp_path / "file" / "runs"), "--listen", "127.0.0.1:0"],
                         capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert run.returncode == 1
    assert f"--jobs-dir {tmp_path / 'file' / 'runs'}: cannot create it" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_version_4_store_gains_the_nodes_column(tmp_path):
    store = JobStore(tmp_path / "gansvc.db")
    job, _ = store.create_job("training", {"steps": 1})
    store.close()
    with sqlite3.connect(tmp_path / "gansvc.db") as conn:  # the layout a gansvc before the column wrote
        conn.execute("ALTER TABLE jobs DROP COLUMN nodes")
        conn.execute("PRAGMA user_version=4")
    store = JobStore(tmp_path / "gansvc.db")
    assert store.require_job(job.id).nodes == ()
    event = store.set_state(job.id, "RUNNING", "running", device="cpu", nodes=["10.0.0.2:4100", "10.0.0.3:4100"])
    assert event.payload["node"] == "10.0.0.2:4100,10.0.0.3:4100"
    store.set_state(job.id, "QUEUED", "requeued")
    assert store.require_job(job.id).nodes == ("10.0.0.2:4100", "10.0.0.3:4100")  # the last attempt's, kept
    store.close()
    with sqlite3.connect(tmp_path / "gansvc.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 5
