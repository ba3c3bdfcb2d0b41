"""The service runs a job whose spec asks for several processes through torchrun (gloo on this CPU): it succeeds
with rank 0's events streamed like any job's; a rank killed by a signal is a worker death: the job is retried from
its last checkpoint (and succeeds), or fails naming the rank once no attempt is left, and no process of the job is
left behind."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from gansvc.client import GanClient, state_name
from gansvc.runtime.rundir import latest_checkpoint_step
from gansvc.service.server import GanServer, ServerConfig
from waiting import wait_for

TINY = {
    "dataset": "fashion-mnist", "model": "mlp", "mlp_hidden": 64, "z_dim": 16, "batch_size": 32, "steps": 20,
    "log_every": 5, "sample_every": 10, "checkpoint_every": 10, "eval_samples": 0, "tensorboard": False,
    "nproc": 2,
}  # fmt: skip
LONG = {**TINY, "steps": 1_000_000, "sample_every": 0, "checkpoint_every": 0}
# ~20 ms a step on 2 gloo ranks here: the kill after the first checkpoint comes well before the end
RESUMABLE = {**TINY, "steps": 200, "sample_every": 0, "checkpoint_every": 50, "log_every": 10}


def ended(client, job_id):
    """Return the job once it is no longer queued or running, else None."""
    job = client.get_job(job_id)
    return job if state_name(job.state) not in ("QUEUED", "RUNNING") else None


def job_processes(job_dir: Path) -> dict[int, dict]:
    """Return {pid: environment} of the live processes started for the job in job_dir (agent and ranks)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if state == "Z" or str(job_dir).encode() not in b" ".join(command):
            continue
        if b"torch.distributed.run" in b" ".join(command) or any(part == b"gansvc.train" for part in command) or any(
            part == b"gansvc.train.launch" for part in command
        ):
            env = dict(item.split(b"=", 1) for item in environ if b"=" in item)
            found[int(entry.name)] = {k.decode(): v.decode(errors="replace") for k, v in env.items()}
    return found


@pytest.fixture(scope="module")
def service(tmp_path_factory, fashion_mnist_root):
    state = tmp_path_factory.mktemp("state")
    server = GanServer(ServerConfig(state_dir=state, listen="127.0.0.1:0", cpu_jobs=1, data_roots=[fashion_mnist_root]))
    server.start()
    yield server
    server.shutdown(timeout=30)


@pytest.fixture(scope="module")
def client(service):
    with GanClient(service.address, timeout=30) as client:
        yield client


@pytest.mark.slow
def test_a_two_process_job_runs_under_torchrun_and_streams_rank_0s_events(service, client):
    job = client.submit_training(TINY)
    events = list(client.watch(job.id))
    job = client.get_job(job.id)
    assert state_name(job.state) == "SUCCEEDED", job.message
    kinds = [e.WhichOneof("payload") for e in events]
    progress = [e.progress.step for e in events if e.WhichOneof("payload") == "progress"]
    assert progress == [0, 5, 10, 15, 20]  # once per log step: only rank 0 speaks
    assert [e.checkpoint.step for e in events if e.WhichOneof("payload") == "checkpoint"] == [10, 20]
    assert kinds.count("samples") == 2
    assert any("starting 2 processes with torchrun" in e.log.message for e in events if e.WhichOneof("payload") == "log")
    job_dir = service.state_dir / "jobs" / job.id
    summary = json.loads((job_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 20
    assert json.loads((job_dir / "spec.json").read_text())["threads"] >= 1
    assert wait_for(lambda: not job_processes(job_dir), 30, what="the job's processes to exit")


def kill_rank(job_dir: Path, rank: str) -> int:
    """SIGKILL the job's rank `rank` (as the out-of-memory killer would); return its pid."""
    ranks = {pid: env for pid, env in job_processes(job_dir).items() if "RANK" in env}
    assert sorted(env["RANK"] for env in ranks.values()) == ["0", "1"]
    victim = next(pid for pid, env in ranks.items() if env["RANK"] == rank)
    os.kill(victim, signal.SIGKILL)
    return victim


@pytest.mark.slow  # two torchrun starts (~20 s each here)
def test_a_killed_rank_is_retried_from_the_last_checkpoint_and_the_job_succeeds(service, client):
    job = client.submit_training(RESUMABLE)
    job_dir = service.state_dir / "jobs" / job.id
    wait_for(lambda: (latest_checkpoint_step(job_dir) or 0) >= 50, timeout=180, what="the first checkpoint")
    kill_rank(job_dir, "1")
    job = wait_for(lambda: ended(client, job.id), 300, what="the job to end")
    assert state_name(job.state) == "SUCCEEDED", job.message
    assert job.attempts == 2 and job.progress.step == RESUMABLE["steps"]
    summary = json.loads((job_dir / "summary.json").read_text())
    assert summary["step"] == RESUMABLE["steps"] and summary["world_size"] == 2

    events = list(client.watch(job.id, history_only=True))
    changes = [(state_name(e.state.state), e.state) for e in events if e.WhichOneof("payload") == "state"]
    assert [name for name, _ in changes] == ["QUEUED", "RUNNING", "QUEUED", "RUNNING", "SUCCEEDED"]
    retry, second = changes[2][1], changes[3][1]
    assert retry.reason.startswith("attempt 1 died (1 of 3 allowed): rank 1 was killed by SIGKILL"), retry.reason
    assert f"retrying from the checkpoint at step {second.resume_step}" in retry.reason
    # the second attempt resumed from a checkpoint of the first (50, or a later one written before the ranks
    # were torn down), and its ranks said so
    assert second.attempt == 2 and second.resume_step in (50, 100, 150)
    resumed = [e.log.message for e in events if e.WhichOneof("payload") == "log" and "resumed" in e.log.message]
    assert resumed == [f"resumed from the checkpoint at step {second.resume_step}"]
    deaths = json.loads((job_dir / "worker_deaths.json").read_text())
    assert [d["attempt"] for d in deaths] == [1] and deaths[0]["exit"].startswith("rank 1 was killed by SIGKILL")
    assert wait_for(lambda: not job_processes(job_dir), 60, what="the job's processes to exit")


@pytest.mark.slow  # ~15 s; the default run keeps the two-process job end to end; CI runs this one
def test_a_rank_killed_in_its_last_attempt_fails_the_job_naming_it_and_takes_the_others_down(
    service, client, monkeypatch
):
    monkeypatch.setattr(service.scheduler, "max_attempts", 1)  # `gansvc serve --max-attempts 1`: no retry
    job = client.submit_training(LONG)
    job_dir = service.state_dir / "jobs" / job.id
    wait_for(lambda: client.get_job(job.id).progress.step >= 3, timeout=180, what="the job to train")
    kill_rank(job_dir, "1")
    job = wait_for(lambda: ended(client, job.id), timeout=180, what="the job to end")
    assert state_name(job.state) == "FAILED" and job.attempts == 1
    assert "the worker died 1 times (attempt 1: rank 1 was killed by SIGKILL" in job.message, job.message
    assert wait_for(lambda: not job_processes(job_dir), 60, what="every process of the job to exit")
