"""Restart safety with a real `gansvc serve` process: SIGTERM checkpoints and resumes; kill -9 loses nothing.

The server runs as `python -m gansvc serve` on 127.0.0.1 with an ephemeral port; the jobs are small
MLP runs on Fashion-MNIST that take seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gansvc.client import GanClient, state_name
from waiting import wait_for

RUN = {
    "dataset": "fashion-mnist", "model": "mlp", "mlp_hidden": 64, "z_dim": 16, "batch_size": 32, "log_every": 10,
    "sample_every": 0, "eval_samples": 0, "tensorboard": False,
}  # fmt: skip


class ServerProcess:
    """`python -m gansvc serve` in a child process, ready once it has written its ready file."""

    def __init__(self, state_dir: Path, data_root: Path, listen: str = "127.0.0.1:0"):
        self.ready_file = state_dir.parent / f"ready-{time.monotonic_ns()}.json"
        self.log = open(state_dir.parent / f"server-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
        command = [
            sys.executable, "-m", "gansvc", "serve", "--listen", listen, "--state-dir", str(state_dir),
            "--data-root", str(data_root), "--ready-file", str(self.ready_file),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self.ready_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"server did not start:\n{Path(self.log.name).read_text()}")
            time.sleep(0.05)
        self.address = json.loads(self.ready_file.read_text())["address"]

    def output(self) -> str:
        """Return what the server printed so far."""
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM the server if it still runs and wait for it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def alive(pid: int) -> bool:
    """Return whether the process runs (a zombie waiting for its reaper does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


def states(events):
    return [(state_name(e.state.state), e.state) for e in events if e.WhichOneof("payload") == "state"]


class Watcher(threading.Thread):
    """Follows a job in the background with one reconnecting watch() call, keeping every event."""

    def __init__(self, client: GanClient, job_id: str):
        super().__init__(daemon=True)
        self.client, self.job_id = client, job_id
        self.events: list = []
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            for event in self.client.watch(self.job_id, reconnect_timeout=120):
                self.events.append(event)
        except Exception as error:  # noqa: BLE001 - checked by the test
            self.error = error


@pytest.mark.slow
def test_kill9_mid_training_resumes_from_the_last_checkpoint_losing_no_event(tmp_path, fashion_mnist_root):
    total_steps, every = 8_000, 400
    state = tmp_path / "state"
    server = ServerProcess(state, fashion_mnist_root)
    port = server.address.rsplit(":", 1)[1]
    replacement = None
    try:
        client = GanClient(server.address)
        # long enough (seconds at this MLP's ~2 000 steps/s) that the kill lands while it trains
        job = client.submit_training(dict(RUN, steps=total_steps, checkpoint_every=every, log_every=100))
        watcher = Watcher(client, job.id)
        watcher.start()
        wait_for(
            lambda: any(e.WhichOneof("payload") == "checkpoint" for e in watcher.events), what="a periodic checkpoint"
        )
        worker_pid = client.get_job(job.id).worker_pid
        assert worker_pid and alive(worker_pid)
        server.process.kill()  # kill -9: no shutdown code runs
        server.process.wait()
        acknowledged = [e.SerializeToString(deterministic=True) for e in watcher.events]
        # The worker must not outlive its server (nor keep training or holding a device).
        wait_for(lambda: not alive(worker_pid), timeout=15, what=f"worker {worker_pid} to die with its server")

        replacement = ServerProcess(state, fashion_mnist_root, listen=f"127.0.0.1:{port}")
        watcher.join(timeout=300)
        assert not watcher.is_alive() and watcher.error is None, watcher.error
        final = client.get_job(job.id)
        assert state_name(final.state) == "SUCCEEDED", final.message
        stored = list(client.watch(job.id, history_only=True))
        steps = [step for step, _ in client.metrics(job.id)]
    finally:
        server.stop()
        if replacement is not None:
            replacement.stop()

    # One reconnecting watch saw every event exactly once, in order, across the crash ...
    seen = watcher.events
    assert [e.sequence for e in seen] == list(range(1, final.last_sequence + 1))
    assert [e.SerializeToString(deterministic=True) for e in seen] == [
        e.SerializeToString(deterministic=True) for e in stored
    ]
    # ... and everything it had been sent before the crash is still stored as it was.
    assert [e.SerializeToString(deterministic=True) for e in stored[: len(acknowledged)]] == acknowledged
    names = [name for name, _ in states(stored)]
    assert names == ["QUEUED", "RUNNING", "QUEUED", "RUNNING", "SUCCEEDED"], names
    requeued, resumed = states(stored)[2][1], states(stored)[3][1]
    assert "stopped unexpectedly" in requeued.reason
    checkpoints = [
        e.checkpoint.step for e in acknowledged_events(acknowledged) if e.WhichOneof("payload") == "checkpoint"
    ]
    assert resumed.attempt == 2 and resumed.resume_step >= max(checkpoints) and resumed.resume_step % every == 0
    logs = [e.log for e in stored if e.WhichOneof("payload") == "log"]
    assert any(f"resumed from the checkpoint at step {resumed.resume_step}" == log.message for log in logs)
    assert final.summary["resumed_from"] == resumed.resume_step and final.attempts == 2
    assert steps == list(range(100, total_steps + 1, 100))  # the redone steps replace the lost attempt's, once each


def acknowledged_events(serialized):
    from gansvc.client import pb

    return [pb.JobEvent.FromString(data) for data in serialized]


@pytest.mark.slow
def test_sigterm_checkpoints_running_jobs_and_the_next_start_resumes_them(tmp_path, fashion_mnist_root):
    total_steps = 20_000
    state = tmp_path / "state"
    server = ServerProcess(state, fashion_mnist_root)
    successor = None
    try:
        client = GanClient(server.address)
        # No periodic checkpoints: the only one before the end is the one SIGTERM asks for. Long enough (a few
        # seconds at this MLP's ~2 000 steps/s) that the job is still running when the signal lands.
        job = client.submit_training(dict(RUN, steps=total_steps, checkpoint_every=0, log_every=100))
        wait_for(lambda: client.get_job(job.id).progress.step >= 20, what="training to pass step 20")
        worker_pid = client.get_job(job.id).worker_pid

        statuses = []
        health = health_pb2_grpc.HealthStub(client.channel)
        stream = health.Watch(health_pb2.HealthCheckRequest(service=""))

        def follow_health():
            try:
                for reply in stream:
                    statuses.append(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
            except grpc.RpcError:
                pass

        follower = threading.Thread(target=follow_health, daemon=True)
        follower.start()
        wait_for(lambda: statuses, what="the first health status")
        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "NOT_SERVING" in statuses, timeout=30, what="health NOT_SERVING")
        with pytest.raises(grpc.RpcError) as refused:
            client.submit_training(dict(RUN, steps=10))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert server.process.wait(90) == 0, server.output()
        assert statuses[:2] == ["SERVING", "NOT_SERVING"]
        assert not alive(worker_pid), "the worker outlived a clean shutdown"
        assert "shutting down" in server.output()

        successor = ServerProcess(state, fashion_mnist_root)
        with GanClient(successor.address) as again:
            final = again.wait(job.id, timeout=300)
            assert state_name(final.state) == "SUCCEEDED", final.message
            stored = list(again.watch(job.id, history_only=True))
            steps = [step for step, _ in again.metrics(job.id)]
    finally:
        server.stop()
        if successor is not None:
            successor.stop()
    assert [e.sequence for e in stored] == list(range(1, len(stored) + 1))
    found = states(stored)
    assert [name for name, _ in found] == ["QUEUED", "RUNNING", "QUEUED", "RUNNING", "SUCCEEDED"]
    requeued, resumed = found[2][1], found[3][1]
    assert "interrupted by a server shutdown" in requeued.reason
    assert resumed.resume_step >= 20 and f"step {resumed.resume_step}" in requeued.reason
    assert final.summary["resumed_from"] == resumed.resume_step
    assert steps == list(range(100, total_steps + 1, 100))
    assert os.path.exists(state / "jobs" / job.id / "generator.pt")
