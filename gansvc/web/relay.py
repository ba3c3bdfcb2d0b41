"""gRPC server streams (WatchJob, DownloadArtifact) as async iterators for the ASGI side.

The gRPC client is synchronous: each stream is read on a thread of its own (not the shared thread pool,
which 50 open pages would exhaust) that hands items to the event loop. When the page goes away the
ASGI side stops iterating, and the call is cancelled, which ends the thread.
"""

from __future__ import annotations

import asyncio
import threading

_END = object()


class Relay:
    """Iterate a blocking gRPC stream call from async code; `cancel()` (or leaving `async for`) ends the call."""

    def __init__(self, call):
        self.call = call
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._thread = threading.Thread(target=self._pump, name="gansvc-web-relay", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for item in self.call:
                self._put(item)
            self._put(_END)
        except Exception as error:  # grpc.RpcError (CANCELLED after cancel()), handed to the reader
            self._put(error)

    def _put(self, item) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop closed: nobody is reading
            pass

    async def next(self, timeout: float | None = None):
        """Return the next item; raise StopAsyncIteration at the end, the call's error, or TimeoutError."""
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if item is _END:
            raise StopAsyncIteration
        if isinstance(item, Exception):
            raise item
        return item

    def __aiter__(self):
        return self

    async def __anext__(self):
        return await self.next()

    def cancel(self) -> None:
        """End the call (its thread ends with it)."""
        self.call.cancel()
