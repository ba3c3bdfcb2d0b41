"""Wake-ups for watchers: the store publishes each job's latest sequence number after a commit.

Watchers read the events themselves from the store; the bus only tells them when there is more to
read, so a watcher sleeps until its job moves instead of polling. The bus keeps state only for jobs
someone watches: a watcher subscribes before its first read of the store (so no publish between that
read and its wait is missed), and the job's entry goes when its last watcher leaves.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class _Watched:
    condition: threading.Condition
    subscribers: int = 0
    latest: int = 0  # the newest sequence published while someone watched


class EventBus:
    """Latest committed sequence number of each watched job, and a way to wait for a newer one."""

    def __init__(self):
        self._lock = threading.Lock()
        self._jobs: dict[str, _Watched] = {}
        self._closed = False

    @contextlib.contextmanager
    def subscribe(self, job_id: str) -> Iterator[None]:
        """Watch the job while inside the block: publishes are recorded for wait() from its start on."""
        with self._lock:
            entry = self._jobs.get(job_id)
            if entry is None:
                entry = self._jobs[job_id] = _Watched(threading.Condition(self._lock))
            entry.subscribers += 1
        try:
            yield
        finally:
            with self._lock:
                entry.subscribers -= 1
                if entry.subscribers == 0:
                    del self._jobs[job_id]

    def publish(self, job_id: str, sequence: int) -> None:
        """Record that the job's events up to `sequence` are committed and wake its watchers (if any)."""
        with self._lock:
            entry = self._jobs.get(job_id)
            if entry is None:  # nobody watches: a later watcher reads the store first
                return
            if sequence > entry.latest:
                entry.latest = sequence
            entry.condition.notify_all()

    def wait(self, job_id: str, after_sequence: int, timeout: float) -> bool:
        """Block until a publish past `after_sequence` (True), the bus closes or timeout (False).

        Call it inside subscribe(job_id) to see what was published since the subscription began.
        """
        with self.subscribe(job_id), self._lock:
            entry = self._jobs[job_id]
            entry.condition.wait_for(lambda: self._closed or entry.latest > after_sequence, timeout)
            return not self._closed and entry.latest > after_sequence

    def watched(self) -> int:
        """Return how many jobs have watchers now (what the bus holds state for)."""
        with self._lock:
            return len(self._jobs)

    @property
    def closed(self) -> bool:
        """Return whether close() was called (the server is shutting down)."""
        return self._closed

    def close(self) -> None:
        """Wake every waiter for good (shutdown)."""
        with self._lock:
            self._closed = True
            for entry in self._jobs.values():
                entry.condition.notify_all()
