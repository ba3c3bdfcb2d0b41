"""A sweep's trials at once (issue 19): `max_concurrent` (older name `parallel`), by default as many as the devices
or the cluster hold for one trial's request. The Ray backend's case (trials on different nodes) is in
tests/test_ray_nodes.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from gansvc.client import GanClient, state_name
from gansvc.clients.sweep_cli import build_request
from gansvc.service.devices import DevicePool
from gansvc.service.placement import NodeResources, capacity, job_request
from gansvc.service.server import GanServer, ServerConfig
from gansvc.sweep_spec import SweepSpecError, check_sweep, concurrency, load_sweep_file, sweep_spec_to_proto, \
    sweep_spec_to_raw
from gansvc.train.spec import TrainSpec

BASE = """
[base]
dataset = "fashion-mnist"
model = "mlp"
mlp_hidden = 32
z_dim = 8
batch_size = 16
steps = {steps}
log_every = 10
sample_every = 0
checkpoint_every = 0
eval_every = 0
eval_samples = 100
tensorboard = false
[search]
method = "grid"
{search}
[search.space]
lr_g = [1e-4, 1e-3, 2e-3]
"""


def checked(tmp_path: Path, search: str) -> dict:
    path = tmp_path / "sweep.toml"
    path.write_text(BASE.format(steps=10, search=search), encoding="utf-8")
    raw = load_sweep_file(path)
    return check_sweep(raw, TrainSpec.from_dict(raw["base"]).to_dict())


def test_max_concurrent_and_its_older_name_parallel_mean_one_thing(tmp_path):
    assert checked(tmp_path, "max_concurrent = 2")["max_concurrent"] == 2
    assert checked(tmp_path, "parallel = 2")["max_concurrent"] == 2
    assert checked(tmp_path, "parallel = 2\nmax_concurrent = 2")["max_concurrent"] == 2
    assert checked(tmp_path, "max_concurrent = 9")["max_concurrent"] == 3  # at most the grid's three trials
    assert checked(tmp_path, "")["max_concurrent"] == 0  # as many as fit
    with pytest.raises(SweepSpecError) as caught:
        checked(tmp_path, "parallel = 2\nmax_concurrent = 3")
    assert caught.value.field == "search.max_concurrent" and "parallel" in str(caught.value)
    with pytest.raises(SweepSpecError) as caught:
        checked(tmp_path, "max_concurrent = 0")
    assert caught.value.field == "search.max_concurrent"


def test_concurrency_is_the_limit_or_what_fits():
    assert concurrency({"max_concurrent": 2}, fits=5) == 2
    assert concurrency({"max_concurrent": 0}, fits=5) == 5
    assert concurrency({"max_concurrent": 0}, fits=0) == 1  # never none: the trial waits in the queue
    assert concurrency({"parallel": 1}, fits=5) == 1  # a sweep stored before max_concurrent


def test_the_message_carries_max_concurrent_and_parallel(tmp_path):
    for search, field in (("max_concurrent = 2", "max_concurrent"), ("parallel = 2", "parallel")):
        path = tmp_path / "sweep.toml"
        path.write_text(BASE.format(steps=10, search=search), encoding="utf-8")
        raw = load_sweep_file(path)
        message = sweep_spec_to_proto(raw)
        assert message.HasField(field) and getattr(message, field) == 2
        _, again = sweep_spec_to_raw(message)
        assert again["search"][field] == 2
    path.write_text(BASE.format(steps=10, search=""), encoding="utf-8")
    message = sweep_spec_to_proto(load_sweep_file(path))
    assert not message.HasField("max_concurrent") and not message.HasField("parallel")


def test_what_fits_counts_each_nodes_room_for_one_trial():
    nodes = [NodeResources("a" * 8, "10.0.0.1", cpus=4, gpus=2), NodeResources("b" * 8, "10.0.0.2", cpus=1, gpus=0),
             NodeResources("c" * 8, "10.0.0.3", cpus=8, gpus=1, alive=False)]  # fmt: skip
    assert capacity(job_request("cpu"), nodes) == 5
    assert capacity(job_request("cpu", nproc=2), nodes) == 2
    assert capacity(job_request("cuda"), nodes) == 2
    assert capacity(job_request("cuda", nproc=2), nodes) == 1
    assert capacity(job_request("cpu", nnodes=2), nodes) == 1  # b has room for one share only
    assert capacity(job_request("cpu", nnodes=3), nodes) == 0  # two live nodes
    assert DevicePool([], cpu_slots=3).capacity("cpu") == 3
    assert DevicePool([0, 1, 2], cpu_slots=1).capacity("cuda", nproc=2) == 1


@pytest.mark.slow  # three trials with FID: minutes on a busy 2-core machine
def test_a_sweep_without_max_concurrent_runs_as_many_trials_as_the_cpu_slots(tmp_path, fashion_mnist_root):
    server = GanServer(ServerConfig(state_dir=tmp_path / "state", listen="127.0.0.1:0", cpu_jobs=2,
                                    data_roots=[fashion_mnist_root]))  # fmt: skip
    server.start()
    try:
        path = tmp_path / "sweep.toml"
        path.write_text(BASE.format(steps=40, search=""), encoding="utf-8")
        with GanClient(server.address, timeout=60) as client:
            sweep = client.submit_sweep(build_request(path))
            assert not sweep.sweep.HasField("max_concurrent")
            done = client.wait(sweep.id, timeout=600)
            assert state_name(done.state) == "SUCCEEDED", done.message
            running = next(e.state.reason for e in client.watch(sweep.id, history_only=True)
                           if e.WhichOneof("payload") == "state" and state_name(e.state.state) == "RUNNING")
            assert running.endswith("as many at a time as fit (2 now)"), running
            trials = [job for job in client.list_jobs() if job.sweep_id == sweep.id]
            spans = sorted((j.started_at.ToNanoseconds(), j.finished_at.ToNanoseconds()) for j in trials)
    finally:
        server.shutdown(timeout=20)
    assert len(spans) == 3
    most = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert most == 2  # two trials at once (two CPU slots), never three
