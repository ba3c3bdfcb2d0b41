"""Polling for the tests that watch servers, workers and clusters change state (one definition for all of them)."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 120.0, what: str = "condition", interval: float = 0.1):
    """Poll predicate() every `interval` seconds until it returns a truthy value; return that value
    (TimeoutError naming `what` after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
