"""A worker that dies without a word (kill -9, the OOM killer) is started again from its last checkpoint,
up to `gansvc serve --max-attempts`; a job that keeps dying fails naming every attempt."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from gansvc.client import GanClient, state_name
from gansvc.service.scheduler import describe_exit, last_log_lines
from gansvc.service.server import GanServer, ServerConfig
from tests.test_service_restart import RUN, alive, states
from waiting import wait_for

LONG = {**RUN, "steps": 100_000, "checkpoint_every": 20}
RESUMABLE = {**RUN, "steps": 400, "checkpoint_every": 20, "log_every": 20}


@pytest.fixture
def server(tmp_path, fashion_mnist_root):
    config = ServerConfig(state_dir=tmp_path / "state", listen="127.0.0.1:0", data_roots=[fashion_mnist_root],
                          max_attempts=2)  # fmt: skip
    server = GanServer(config)
    server.start()
    yield server
    server.shutdown(timeout=10)


def _kill_worker_after_a_checkpoint(client: GanClient, job_id: str, after_step: int) -> int:
    job = wait_for(lambda: (j := client.get_job(job_id)).worker_pid and j.progress.step >= after_step and j,
                   timeout=180, what=f"step {after_step}")  # fmt: skip
    pid = job.worker_pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid), timeout=30, what="the worker to die")
    return pid


def test_a_killed_worker_is_retried_from_its_checkpoint_then_the_job_fails_naming_each_attempt(server):
    client = GanClient(f"127.0.0.1:{server.port}")
    job = client.submit_training(LONG)
    first = _kill_worker_after_a_checkpoint(client, job.id, 45)
    # the retry: QUEUED with the exit status, then RUNNING again, resuming from a checkpoint
    second_job = wait_for(lambda: (j := client.get_job(job.id)).attempts == 2 and j.worker_pid not in (0, first) and j,
                          timeout=120, what="the second attempt")  # fmt: skip
    second = _kill_worker_after_a_checkpoint(client, job.id, second_job.progress.step + 1)
    assert second != first
    ended = wait_for(lambda: state_name((j := client.get_job(job.id)).state) == "FAILED" and j, 60, "the failure")
    assert "died 2 times" in ended.message
    assert "attempt 1: was killed by SIGKILL (signal 9)" in ended.message
    assert "attempt 2: was killed by SIGKILL (signal 9)" in ended.message
    assert "out-of-memory" not in ended.message  # what is known, nothing guessed

    changes = states(list(client.watch(job.id, history_only=True)))
    names = [name for name, _ in changes]
    assert names == ["QUEUED", "RUNNING", "QUEUED", "RUNNING", "FAILED"], names
    retry = changes[2][1]
    assert "attempt 1 died (1 of 2 allowed)" in retry.reason and "SIGKILL" in retry.reason
    assert "retrying from the checkpoint at step" in retry.reason
    assert changes[3][1].resume_step >= 40  # the second attempt resumed, not restarted
    client.close()


@pytest.mark.slow  # three worker starts (~40 s here)
def test_a_killed_worker_resumes_from_its_checkpoint_and_the_job_succeeds(server):
    client = GanClient(f"127.0.0.1:{server.port}")
    job = client.submit_training(RESUMABLE)
    _kill_worker_after_a_checkpoint(client, job.id, 45)
    ended = wait_for(lambda: state_name((j := client.get_job(job.id)).state) not in ("QUEUED", "RUNNING") and j,
                     timeout=180, what="the job to end")  # fmt: skip
    assert state_name(ended.state) == "SUCCEEDED", ended.message
    assert ended.attempts == 2 and ended.progress.step == RESUMABLE["steps"]
    changes = states(list(client.watch(job.id, history_only=True)))
    assert [name for name, _ in changes] == ["QUEUED", "RUNNING", "QUEUED", "RUNNING", "SUCCEEDED"]
    resumed = changes[3][1]
    assert resumed.attempt == 2 and resumed.resume_step >= 40 and resumed.resume_step % 20 == 0
    job_dir = server.state_dir / "jobs" / job.id
    records = [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]
    # every logged step once: the steps the first attempt did after its checkpoint were redone, not repeated
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(20, RESUMABLE["steps"] + 1, 20))

    # the same spec without the kill: resuming from the checkpoint gave the very same generator
    again = client.submit_training(RESUMABLE)
    wait_for(lambda: state_name(client.get_job(again.id).state) == "SUCCEEDED", 180, "the uninterrupted job")
    weights = [torch.load(server.state_dir / "jobs" / name / "checkpoints" / "latest.pt", weights_only=True)["G"]
               for name in (job.id, again.id)]  # fmt: skip
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    client.close()


def test_exit_descriptions_and_the_attempts_log_tail(tmp_path):
    assert describe_exit(-9) == "the worker process was killed by SIGKILL (signal 9)"
    assert describe_exit(-11) == "the worker process was killed by SIGSEGV (signal 11)"
    assert describe_exit(3) == "the worker process exited with code 3 without reporting a result"
    log = tmp_path / "worker.log"
    log.write_text("===== attempt 1 on cpu =====\nold line\n\n===== attempt 2 on cpu =====\n"
                   + "".join(f"line {i}\n" for i in range(8)))  # fmt: skip
    assert last_log_lines(log, count=3) == "line 5 | line 6 | line 7"
    assert "old line" not in last_log_lines(log, count=20)  # only the current attempt's output
    assert last_log_lines(tmp_path / "missing.log") == ""


def test_max_attempts_is_checked(tmp_path):
    with pytest.raises(ValueError, match="--max-attempts"):
        GanServer(ServerConfig(state_dir=tmp_path, listen="127.0.0.1:0", max_attempts=0))
