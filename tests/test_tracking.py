"""MLflow tracking (issue 21 item 4): the spec field `track` and `gansvc serve --mlflow-uri`.

The checks of a value run without MLflow. The rest runs tiny training jobs on a real gansvc server against a
real `mlflow server` (SQLite backend, artefacts proxied into a temporary folder) on 127.0.0.1, and reads what
the jobs logged back through MLflow's own client, comparing it with the jobs' run directories: metrics.jsonl,
the sample grids, the checkpoints. Starting MLflow (its server, and its import in the test process and the
gansvc server) takes about a minute on a busy 2-core machine, so those tests are marked slow.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest
import torch

from gansvc.client import GanClient, pb, state_name
from gansvc.service import tracking, validation
from gansvc.service.devices import DevicePool
from gansvc.service.errors import InvalidField
from gansvc.service.server import GanServer, ServerConfig
from gansvc.train.spec import TrainSpec
from waiting import wait_for

TINY = {
    "dataset": "fashion-mnist", "model": "mlp", "mlp_hidden": 64, "z_dim": 16, "batch_size": 32, "steps": 30,
    "log_every": 5, "sample_every": 15, "checkpoint_every": 15, "eval_every": 15, "eval_samples": 200,
    "tensorboard": False, "threads": 1,
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- checks (no MLflow needed)
@pytest.mark.parametrize("uri", ["ftp://127.0.0.1/x", "file:///tmp/mlruns", "sqlite:///tmp/mlflow.db", "127.0.0.1:5000",
                                 "http://user:secret@127.0.0.1:5000", "http://:5000", "http://h:99999"])  # fmt: skip
def test_a_bad_track_uri_is_invalid_argument_naming_track(tmp_path, fashion_mnist_root, uri):
    server = GanServer(ServerConfig(state_dir=tmp_path, listen="127.0.0.1:0", data_roots=[fashion_mnist_root]))
    server.start()
    try:
        with GanClient(server.address, timeout=30) as client, pytest.raises(grpc.RpcError) as caught:
            client.submit_training(dict(TINY, track=uri))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith("track:"), caught.value.details()
        assert "secret" not in caught.value.details()  # credentials are not echoed
        assert server.store.list_jobs() == []
    finally:
        server.shutdown(timeout=10)


def test_a_bad_server_default_is_refused_naming_the_option(tmp_path):
    with pytest.raises(ValueError, match="^--mlflow-uri: .*scheme file:"):
        GanServer(ServerConfig(state_dir=tmp_path, mlflow_uri="file:///tmp/mlruns"))
    result = subprocess.run([sys.executable, "-m", "gansvc", "serve", "--state-dir", str(tmp_path), "--listen",
                             "127.0.0.1:0", "--mlflow-uri", "ftp://x"], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 2 and "--mlflow-uri" in result.stderr and "Traceback" not in result.stderr


def test_track_resolves_at_submit_from_the_server_default():
    """Unset or "" takes the server's default, "off" turns it off, a URI of the job's own wins; GetJob shows it."""
    pool, roots = DevicePool.from_flag("cpu", 1), validation.DataRoots(())
    default = "http://127.0.0.1:5000"
    for given, expected in ((None, default), ("", default), ("off", ""),
                            ("https://ml.example:8443/", "https://ml.example:8443")):  # fmt: skip
        message = pb.TrainingSpec(**TINY)
        if given is not None:
            message.track = given
        assert validation.training_spec(message, roots, pool, None, default)["track"] == expected, given
    message = pb.TrainingSpec(dataset="gaussian-mixture", model="mlp", steps=10)
    assert validation.training_spec(message, roots, pool)["track"] == ""  # no default: not tracked
    assert TrainSpec.from_dict({"steps": 1, "track": "off"}).track == ""


def test_without_mlflow_installed_track_is_refused(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(InvalidField, match="no MLflow installed") as caught:
        tracking.check_mlflow_installed("track")
    assert caught.value.field == "track"


# ---------------------------------------------------------------------- a real MLflow server
@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """Yield the URI of an `mlflow server` on a free 127.0.0.1 port, SQLite backend, artefacts proxied to tmp."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
               str(root / "artifacts"), "--workers", "1"]  # fmt: skip
    log = open(root / "server.log", "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
                               env={**os.environ, "TMPDIR": str(root)})  # its db_init_lock file stays in tmp  # fmt: skip
    uri = f"http://127.0.0.1:{port}"

    def healthy():
        assert process.poll() is None, (root / "server.log").read_text()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
        except OSError:
            return False
        import urllib.request

        try:
            return urllib.request.urlopen(f"{uri}/health", timeout=5).status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, timeout=300, interval=0.5, what="mlflow server")
        yield uri
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def mlflow_client(mlflow_server):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server)


@pytest.fixture(scope="module")
def service(tmp_path_factory, fashion_mnist_root, cache_dir, mlflow_server):
    """A gansvc server whose jobs log to the MLflow server by default (--mlflow-uri)."""
    state = tmp_path_factory.mktemp("state")
    patch = pytest.MonkeyPatch()
    patch.setattr(tracking, "RETRY_SECONDS", 0.5)  # an outage in a test lasts seconds
    patch.setattr(tracking, "MAX_RETRY_SECONDS", 1.0)
    server = GanServer(ServerConfig(state_dir=state, listen="127.0.0.1:0", cpu_jobs=2,
                                    data_roots=[fashion_mnist_root], mlflow_uri=mlflow_server))  # fmt: skip
    server.start()
    yield server
    server.shutdown(timeout=30)
    patch.undo()


def run_of(client, job_id: str):
    """Return the MLflow run tagged with the gansvc job id (exactly one)."""
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`gansvc.job_id` = '{job_id}'")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def logged(service, job_id: str, timeout: float = 300.0):
    """Wait until the tracker has logged the job's end (mlflow.json says done); return that record."""
    path = service.state_dir / "jobs" / job_id / tracking.STATE_FILE

    def done():
        record = tracking.RunState.read(path)
        return record if record.done else None

    return wait_for(done, timeout, what=f"{job_id}'s MLflow run to be complete")


def metrics_jsonl(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Return {metric: [(step, value), ...]} of a run directory's metrics.jsonl."""
    found: dict[str, list[tuple[int, float]]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key not in ("step", "kind", "epoch", "time") and isinstance(value, (int, float)):
                found.setdefault(key, []).append((record["step"], float(value)))
    return found


def artifact_files(client, run_id: str, folder: str | None = None) -> list[str]:
    files = []
    for item in client.list_artifacts(run_id, folder):
        files += artifact_files(client, run_id, item.path) if item.is_dir else [item.path]
    return files


@pytest.mark.slow
def test_a_job_logs_its_spec_metrics_samples_checkpoint_export_and_end(service, mlflow_client, tmp_path):
    with GanClient(service.address, timeout=30) as client:
        job = client.submit_training(TINY)
        assert job.training.track == service.mlflow_uri  # the server's default, resolved at submit
        ended = client.wait(job.id, timeout=600)
    assert state_name(ended.state) == "SUCCEEDED", ended.message
    record = logged(service, job.id)
    run = run_of(mlflow_client, job.id)
    assert run.info.run_id == record.run_id and run.info.status == "FINISHED"
    assert run.data.tags["gansvc.state"] == "SUCCEEDED" and run.data.tags["mlflow.runName"] == job.id
    # params: the resolved spec, every field
    spec = service.store.require_job(job.id).spec
    params = run.data.params
    assert set(params) == set(spec)
    assert {k: v if isinstance(spec[k], str) else json.loads(v) for k, v in params.items()} == spec
    # metrics: each history is metrics.jsonl's, step for step and value for value
    run_dir = service.state_dir / "jobs" / job.id
    expected = metrics_jsonl(run_dir)
    assert {"d_loss", "g_loss", "fid"} <= set(expected) and set(run.data.metrics) == set(expected)
    for key, points in expected.items():
        history = sorted((m.step, m.value) for m in mlflow_client.get_metric_history(run.info.run_id, key))
        assert history == sorted(points), key
    # artefacts: the grids as written, the best checkpoint, the exported generator and its contract
    files = artifact_files(mlflow_client, run.info.run_id)
    assert sorted(f for f in files if f.startswith("samples/")) == ["samples/step_0000015.png",
                                                                   "samples/step_0000030.png"]  # fmt: skip
    assert "checkpoints/best.pt" in files
    assert "exports/generator_best.torchscript.pt" in files and "exports/generator_best.torchscript.pt.json" in files
    out = Path(mlflow_client.download_artifacts(run.info.run_id, "", str(tmp_path)))
    for grid in ("step_0000015.png", "step_0000030.png"):
        assert (out / "samples" / grid).read_bytes() == (run_dir / "samples" / grid).read_bytes()
    best = torch.load(out / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert best["step"] == int(run.data.tags["gansvc.best_step"])
    contract = json.loads((out / "exports" / "generator_best.torchscript.pt.json").read_text())
    exported = (out / "exports" / "generator_best.torchscript.pt").read_bytes()
    assert hashlib.sha256(exported).hexdigest() == contract["sha256"]
    generator = torch.jit.load(str(out / "exports" / "generator_best.torchscript.pt"))
    images = generator(torch.randn(5, 16))
    assert list(images.shape) == [5, 1, 28, 28] and images.abs().max() <= 1.0
    # a tracker that lost mlflow.json (a server that died before writing it) finds the same run by its tag
    again = tracking.Tracker(service.state_dir / "jobs")
    again.store = service.store
    found = tracking.RunState()
    again._open_run(service.store.require_job(job.id), found, service.mlflow_uri)
    assert found.run_id == run.info.run_id
    # the job itself says where it is tracked
    events = list(GanClient(service.address).watch(job.id, history_only=True))
    logs = [e.log.message for e in events if e.WhichOneof("payload") == "log"]
    assert any(record.run_id in line for line in logs)
    assert not [e for e in events if e.WhichOneof("payload") == "warning" and e.warning.code == "tracking_unavailable"]


SWEEP = """
[base]
dataset = "fashion-mnist"
model = "mlp"
mlp_hidden = 64
z_dim = 16
batch_size = 32
steps = 30
log_every = 10
sample_every = 0
checkpoint_every = 0
eval_every = 15
eval_samples = 200
tensorboard = false
threads = 1
[search]
method = "grid"
parallel = 2
[search.space]
lr_g = [1e-5, 1e-3]
"""


@pytest.mark.slow
def test_a_sweep_is_a_parent_run_with_its_trials_as_children(service, mlflow_client, tmp_path):
    from gansvc.clients.sweep_cli import build_request

    (tmp_path / "sweep.toml").write_text(SWEEP)
    with GanClient(service.address, timeout=30) as client:
        sweep = client.submit_sweep(build_request(tmp_path / "sweep.toml"))
        ended = client.wait(sweep.id, timeout=900)
        assert state_name(ended.state) == "SUCCEEDED", ended.message
        trials = [job for job in client.list_jobs() if job.sweep_id == sweep.id]
    assert len(trials) == 2
    for job in (*trials, sweep):
        logged(service, job.id)
    parent = run_of(mlflow_client, sweep.id)
    assert parent.info.status == "FINISHED" and parent.data.tags["gansvc.kind"] == "sweep"
    assert parent.data.params["method"] == "grid" and parent.data.params["objective.metric"] == "fid"
    assert json.loads(parent.data.params["base.lr_d"]) == trials[0].training.lr_d
    values = {}
    for job in trials:
        child = run_of(mlflow_client, job.id)
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["gansvc.sweep_id"] == sweep.id and child.info.status == "FINISHED"
        assert float(child.data.params["lr_g"]) == job.training.lr_g
        values[job.trial_number] = job.latest_metrics["fid"]
    objective = {m.step: m.value for m in mlflow_client.get_metric_history(parent.info.run_id, "fid")}
    assert objective == values  # each completed trial's objective at its trial number
    best = min(trials, key=lambda job: job.latest_metrics["fid"])
    assert parent.data.tags["gansvc.best_job_id"] == best.id


class Relay(threading.Thread):
    """A TCP relay from a 127.0.0.1 port to the MLflow server: the tracking server 'comes back' when it starts."""

    def __init__(self, port: int, target: tuple[str, int]):
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", port))
        self.target = target

    def run(self):
        while True:
            try:
                inbound, _ = self.listener.accept()
            except OSError:
                return
            outbound = socket.create_connection(self.target)
            for a, b in ((inbound, outbound), (outbound, inbound)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.listener.close()


@pytest.mark.slow
def test_an_unreachable_server_warns_once_and_the_metrics_catch_up(service, mlflow_server, mlflow_client):
    port = free_port()  # nothing listens here yet
    uri = f"http://127.0.0.1:{port}"
    with GanClient(service.address, timeout=30) as client:
        job = client.submit_training(dict(TINY, track=uri))
        ended = client.wait(job.id, timeout=600)
        assert state_name(ended.state) == "SUCCEEDED", ended.message  # the job's result is its own
        events = list(client.watch(job.id, history_only=True))
    warnings = [e.warning for e in events if e.WhichOneof("payload") == "warning"
                and e.warning.code == "tracking_unavailable"]  # fmt: skip
    assert len(warnings) == 1 and uri in warnings[0].message, warnings
    assert not tracking.RunState.read(service.state_dir / "jobs" / job.id / tracking.STATE_FILE).done
    relay = Relay(port, ("127.0.0.1", int(mlflow_server.rsplit(":", 1)[1])))
    relay.start()
    try:
        logged(service, job.id, timeout=300)
    finally:
        relay.close()
    run = run_of(mlflow_client, job.id)
    assert run.info.status == "FINISHED"
    for key, points in metrics_jsonl(service.state_dir / "jobs" / job.id).items():
        history = sorted((m.step, m.value) for m in mlflow_client.get_metric_history(run.info.run_id, key))
        assert history == sorted(points), key
    # the warning stays the only one: the job had ended, so nothing more was added to it
    again = [e for e in GanClient(service.address).watch(job.id, history_only=True)
             if e.WhichOneof("payload") == "warning" and e.warning.code == "tracking_unavailable"]  # fmt: skip
    assert len(again) == 1
    assert math.isfinite(run.data.metrics["fid"])


@pytest.mark.slow
def test_a_restarted_server_keeps_logging_to_the_same_run(tmp_path, fashion_mnist_root, cache_dir, mlflow_server,
                                                          mlflow_client):  # fmt: skip
    """The job is interrupted by a shutdown after its run has metrics, resumes on the next server from its
    checkpoint and finishes: one run, whose histories are metrics.jsonl's (the redone steps not logged twice)."""
    config = ServerConfig(state_dir=tmp_path / "state", listen="127.0.0.1:0", data_roots=[fashion_mnist_root],
                          mlflow_uri=mlflow_server)  # fmt: skip
    first = GanServer(config)
    first.start()
    try:
        with GanClient(first.address, timeout=30) as client:
            job = client.submit_training(dict(TINY, steps=400, checkpoint_every=100, eval_every=200, sample_every=200))
            path = first.state_dir / "jobs" / job.id / tracking.STATE_FILE
            wait_for(lambda: client.get_job(job.id).progress.step >= 150 and tracking.RunState.read(path).steps,
                     timeout=600, what="a checkpoint and logged metrics")  # fmt: skip
    finally:
        first.shutdown(timeout=60)
    before = tracking.RunState.read(path)
    assert before.run_id and not before.done
    second = GanServer(config)
    second.start()
    try:
        with GanClient(second.address, timeout=30) as client:
            ended = client.wait(job.id, timeout=900)
            assert state_name(ended.state) == "SUCCEEDED" and ended.attempts == 2, ended.message
        logged(second, job.id)
    finally:
        second.shutdown(timeout=30)
    run = run_of(mlflow_client, job.id)
    assert run.info.run_id == before.run_id and run.info.status == "FINISHED"
    for key, points in metrics_jsonl(second.state_dir / "jobs" / job.id).items():
        history = sorted((m.step, m.value) for m in mlflow_client.get_metric_history(run.info.run_id, key))
        assert history == sorted(points), key
