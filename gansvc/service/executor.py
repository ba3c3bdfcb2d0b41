"""The seam between the scheduler and where a job's attempt runs.

The scheduler keeps the job model: the queue, devices, job states, retries, the store. An Executor only
runs attempts: it starts gansvc's worker (`python -m gansvc.service.worker`) for one attempt of a job on the
devices the scheduler allocated, relays the worker's events as they come, asks it to stop or kills it, and
says how it ended. LocalExecutor (service/local_executor.py) runs the worker as a process of this server;
a Ray executor can run the same worker in a detached actor on a cluster node by implementing the same few
methods.

The contract, for every executor:
- `start` returns once the attempt runs; its run directory (job_dir, on storage the worker sees) holds
  worker_input.json, written by the scheduler. Nothing is reported before `attempt.watch()`, which the
  scheduler calls once it has recorded the attempt as RUNNING.
- Then the stored events go to `listener.worker_events(attempt, batch[, relayed])` in their order; the worker's last
  word (Finished / Failed) is kept in `attempt.final`, not relayed.
- `listener.worker_exited(attempt, returncode)` is called exactly once, after the last events, when the
  worker has ended (returncode < 0: killed by that signal); the scheduler then calls `attempt.close()`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Protocol

from gansvc.runtime import events
from gansvc.service.devices import Allocation
from gansvc.service.store import JobRecord

# Each attempt starts worker.log with one such line (the scheduler quotes only the current attempt's output).
ATTEMPT_BANNER = "===== attempt "


def group_name(job_id: str, attempt: int) -> str:
    """Return the name of one attempt's placement (the Ray backend's placement group; a restarted server finds it)."""
    return f"gansvc-pg:{job_id}:{attempt}"


class Attempt(ABC):
    """One started attempt of a job: what the scheduler knows of it and asks of it."""

    def __init__(self, job: JobRecord, job_dir: Path, allocation: Allocation):
        self.job_id = job.id
        self.kind = job.kind
        self.job_dir = job_dir
        self.allocation = allocation
        self.final: events.Finished | events.Failed | None = None  # the worker's last word, once said
        self.stop_requested_at: float | None = None  # time.monotonic() of the first stop request
        self.killed = False

    @property
    @abstractmethod
    def pid(self) -> int:
        """Return the worker's process id (the store keeps it; 0 when the worker is no process of this machine)."""

    @abstractmethod
    def watch(self) -> None:
        """Start relaying the worker's events and, once it has ended, its exit to the listener."""

    def request_stop(self) -> None:
        """Ask the attempt to checkpoint and stop (training); an evaluation has nothing to save and is killed."""
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()
        if self.kind != "training":
            self.kill()
            return
        self._send_stop()

    @abstractmethod
    def _send_stop(self) -> None:
        """Tell a training worker to checkpoint and stop (it may already be gone: its exit then ends the job)."""

    @abstractmethod
    def kill(self) -> None:
        """End the attempt now, with every process it started; its exit is reported as usual."""

    @abstractmethod
    def close(self) -> None:
        """Free what the server holds to talk to the worker (it has ended and left the scheduler's table)."""


class AttemptListener(Protocol):
    """What an executor reports to (the scheduler)."""

    def worker_events(self, attempt: Attempt, batch: list[events.Event], relayed: int | None = None) -> None:
        """Store events an attempt's worker sent (`relayed`: the position in the worker's lines after them, stored
        with them so that a restarted server resumes a remote worker's relay there: JobRecord.relayed)."""

    def worker_exited(self, attempt: Attempt, returncode: int) -> None:
        """Record how an attempt ended (attempt.final and the exit status)."""


class Executor(ABC):
    """Starts attempts of jobs on allocated devices, and finds the ones a dead server left."""

    @abstractmethod
    def start(self, job: JobRecord, job_dir: Path, allocation: Allocation, attempt: int,
              listener: AttemptListener) -> Attempt:  # fmt: skip
        """Start attempt number `attempt` of `job` on `allocation`; return it (OSError when it cannot start)."""

    def reattach(self, job: JobRecord, job_dir: Path, pool, listener: AttemptListener) -> Attempt | None:
        """Return the still-running attempt of a job a dead server left RUNNING, ready to watch (None: none runs
        or this executor cannot re-attach, and the job is requeued)."""
        return None

    @abstractmethod
    def kill_stale(self, job: JobRecord, job_dir: Path) -> bool:
        """Kill the worker of `job` a dead server left running, if any; return whether there was one."""
