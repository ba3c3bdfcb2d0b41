"""The scheduler drives jobs through the Executor interface alone (gansvc/service/executor.py), so a second
backend (Ray) implements the same few methods. Here a second implementation, attempts as threads that play
a script of events, runs jobs to every ending the scheduler knows: success, a death retried from the
start, a cancel's checkpoint-and-stop, and a job a dead server left RUNNING."""

from __future__ import annotations

import json
import threading

import pytest

from gansvc.runtime import events
from gansvc.service.devices import DevicePool
from gansvc.service.executor import Attempt, Executor
from gansvc.service.local_executor import LocalExecutor
from gansvc.service.scheduler import Scheduler
from gansvc.service.store import JobStore
from waiting import wait_for


class ThreadAttempt(Attempt):
    """An attempt whose 'worker' is a thread playing the job spec's script: the events it sends, then its end."""

    def __init__(self, job, job_dir, allocation, listener, number: int):
        super().__init__(job, job_dir, allocation)
        self.listener = listener
        self.number = number
        self.script = job.spec["script"]
        self.stop = threading.Event()
        self.calls: list[str] = []  # what the scheduler asked of it, in order

    @property
    def pid(self) -> int:
        return 0  # no process of this machine

    def watch(self) -> None:
        self.calls.append("watch")
        threading.Thread(target=self._play, daemon=True).start()

    def _send_stop(self) -> None:  # Attempt.request_stop's part for training jobs
        self.calls.append("request_stop")
        self.stop.set()

    def kill(self) -> None:
        self.calls.append("kill")
        self.killed = True
        self.stop.set()

    def close(self) -> None:
        self.calls.append("close")

    def _play(self) -> None:
        step = 10 * self.number
        self.listener.worker_events(self, [events.Progress(step=step, total_steps=100)])
        if self.script == "until-stopped" or (self.script == "die-once" and self.number == 1):
            self.stop.wait(30)
        if self.script == "die-once" and self.number == 1:
            self.listener.worker_exited(self, -9)  # no last word: SIGKILLed
            return
        if self.script == "until-stopped":
            self.final = events.Finished(stopped=True, summary={"status": "stopped", "stopped": True, "step": step})
        else:
            self.listener.worker_events(self, [events.Metrics(step=step, values={"fid": 12.5})])
            self.final = events.Finished(summary={"status": "completed", "stopped": False, "step": step})
        self.listener.worker_exited(self, 0)


class ThreadExecutor(Executor):
    """Starts ThreadAttempts; records every start and every stale-attempt search."""

    def __init__(self):
        self.started: list[ThreadAttempt] = []
        self.stale: list[str] = []

    def start(self, job, job_dir, allocation, attempt, listener) -> ThreadAttempt:
        assert json.loads((job_dir / "worker_input.json").read_text())["job_id"] == job.id  # written before
        started = ThreadAttempt(job, job_dir, allocation, listener, attempt)
        self.started.append(started)
        return started

    def kill_stale(self, job, job_dir) -> bool:
        self.stale.append(job.id)
        return False


@pytest.fixture
def scheduled(tmp_path):
    store = JobStore(tmp_path / "gansvc.db")
    executor = ThreadExecutor()
    scheduler = Scheduler(store, DevicePool.from_flag("cpu", 3), tmp_path / "jobs", max_attempts=3,
                          executor=executor)  # fmt: skip
    (tmp_path / "jobs").mkdir()
    yield store, executor, scheduler
    scheduler.drain(timeout=5)
    store.close()


def test_the_scheduler_runs_jobs_through_any_executor(scheduled):
    store, executor, scheduler = scheduled
    spec = {"model": "mlp", "steps": 100, "device": "cpu"}
    done, _ = store.create_job("training", {**spec, "script": "finish"})
    retried, _ = store.create_job("training", {**spec, "script": "die-once"})
    cancelled, _ = store.create_job("training", {**spec, "script": "until-stopped"})
    scheduler.start()
    wait_for(lambda: store.require_job(done.id).terminal, 10, "the finishing job")
    wait_for(lambda: any(a.job_id == cancelled.id for a in executor.started), 10, "the job that waits to start")
    scheduler.cancel(cancelled.id)
    wait_for(lambda: store.require_job(cancelled.id).terminal, 10, "the cancelled job")
    first, = (a for a in executor.started if a.job_id == retried.id and a.number == 1)
    first.stop.set()  # the first attempt dies now
    wait_for(lambda: store.require_job(retried.id).terminal, 10, "the retried job")
    wait_for(lambda: not scheduler.running_workers(), 5, "every attempt to leave the table")

    finished = store.require_job(done.id)
    assert finished.state == "SUCCEEDED" and finished.latest_metrics["fid"] == 12.5
    assert finished.progress["step"] == 10  # the relayed Progress updated the job row
    stored = [e.type for e in store.events_after(done.id)]
    assert stored.count("progress") == 1 and stored.count("metrics") == 1 and "finished" not in stored

    again = store.require_job(retried.id)
    assert again.state == "SUCCEEDED" and again.attempts == 2
    assert [a.number for a in executor.started if a.job_id == retried.id] == [1, 2]
    deaths = json.loads((first.job_dir / "worker_deaths.json").read_text())
    assert [d["attempt"] for d in deaths] == [1] and "SIGKILL" in deaths[0]["exit"]
    states = [e.event for e in store.events_after(retried.id) if e.type == "state"]
    assert [s.state for s in states] == ["QUEUED", "RUNNING", "QUEUED", "RUNNING", "SUCCEEDED"]
    assert "attempt 1 died (1 of 3 allowed)" in states[2].reason and states[3].attempt == 2

    assert store.require_job(cancelled.id).state == "CANCELLED"
    # every attempt: watched after the scheduler recorded it RUNNING, closed once after it ended
    for attempt in executor.started:
        asked = [c for c in attempt.calls if c != "request_stop"]
        assert asked == ["watch", "close"], (attempt.job_id, attempt.calls)
    stopped, = (a for a in executor.started if a.job_id == cancelled.id)
    assert stopped.calls == ["watch", "request_stop", "close"]
    assert executor.stale == []  # nothing was left RUNNING by a dead server
    for _ in range(3):  # all three CPU slots are free again
        assert scheduler.pool.allocate("cpu") is not None


def test_recovery_asks_the_executor_for_a_dead_servers_attempts(scheduled):
    store, executor, scheduler = scheduled
    job, _ = store.create_job("training", {"model": "mlp", "steps": 100, "device": "cpu", "script": "finish"})
    store.set_state(job.id, "RUNNING", "running on cpu", attempt=1, device="cpu", worker_pid=0)  # then the server died
    scheduler.start()
    wait_for(lambda: store.require_job(job.id).terminal, 10, "the recovered job")
    assert executor.stale == [job.id]
    assert store.require_job(job.id).state == "SUCCEEDED" and [a.number for a in executor.started] == [2]


def test_the_default_executor_runs_local_worker_processes(tmp_path):
    scheduler = Scheduler(JobStore(tmp_path / "gansvc.db"), DevicePool.from_flag("cpu", 1), tmp_path / "jobs")
    assert isinstance(scheduler.executor, LocalExecutor)
    scheduler.store.close()
