"""Wake-ups for watchers: the store publishes each job's latest sequence number after a commit.

Watchers read the events themselves from the store; the bus only tells them when there is more to
read, with one condition per job (sharing one lock), so a watcher sleeps until its job moves
instead of polling.
"""

from __future__ import annotations

import threading


class EventBus:
    """Latest committed sequence number per job, and a way to wait for a newer one."""

    def __init__(self):
        self._lock = threading.Lock()
        self._conditions: dict[str, threading.Condition] = {}
        self._latest: dict[str, int] = {}
        self._closed = False

    def publish(self, job_id: str, sequence: int) -> None:
        """Record that the job's events up to `sequence` are committed and wake its watchers."""
        with self._lock:
            if sequence > self._latest.get(job_id, 0):
                self._latest[job_id] = sequence
            condition = self._conditions.get(job_id)
            if condition is not None:
                condition.notify_all()

    def wait(self, job_id: str, after_sequence: int, timeout: float) -> bool:
        """Block until the job has an event after `after_sequence` (True), the bus closes or timeout (False)."""
        with self._lock:
            condition = self._conditions.get(job_id)
            if condition is None:
                condition = self._conditions[job_id] = threading.Condition(self._lock)
            condition.wait_for(lambda: self._closed or self._latest.get(job_id, 0) > after_sequence, timeout)
            return not self._closed and self._latest.get(job_id, 0) > after_sequence

    @property
    def closed(self) -> bool:
        """Return whether close() was called (the server is shutting down)."""
        return self._closed

    def close(self) -> None:
        """Wake every waiter for good (shutdown)."""
        with self._lock:
            self._closed = True
            for condition in self._conditions.values():
                condition.notify_all()
