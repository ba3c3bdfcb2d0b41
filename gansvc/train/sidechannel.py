"""The side channels between the launcher (gansvc.train.launch) and the ranks it starts, both ends of each.

Environment variables tell the ranks where the channels are:
- GANSVC_LAUNCH_DIR, a folder on each node: a file `stop` asks every rank for a checkpoint-and-stop,
  each rank leaves its pid in `pids/`, and a failing rank writes `failures/rank_<N>.json` (exit code,
  FailureKind code, error class, message, traceback), which the launcher reads back as a RankFailure;
- GANSVC_EVENT_SOCKET, an abstract Unix socket where rank 0 sends trainer events in the one codec of
  gansvc.runtime.events (EventSender on the rank, EventServer in the launcher);
- GANSVC_AGENT_PID, the torchrun agent each rank dies with.

Imports no torch: the launcher uses it without it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Callable

from gansvc.atomic import atomic_write_text
from gansvc.runtime import events
from gansvc.train.errors import FailureKind, RankFailure, failure_kind
from gansvc.train.world import world_from_env

ENV_LAUNCH_DIR = "GANSVC_LAUNCH_DIR"
ENV_EVENT_SOCKET = "GANSVC_EVENT_SOCKET"
ENV_AGENT_PID = "GANSVC_AGENT_PID"


# ---------------------------------------------------------------------- the launch folder
def launch_dir() -> Path | None:
    """Return the launcher's folder for this node (GANSVC_LAUNCH_DIR), or None outside gansvc.train.launch."""
    folder = os.environ.get(ENV_LAUNCH_DIR)
    return Path(folder) if folder else None


def stop_file_requested() -> bool:
    """Return whether the launcher asked for a checkpoint-and-stop (GANSVC_LAUNCH_DIR/stop exists)."""
    folder = os.environ.get(ENV_LAUNCH_DIR)
    return bool(folder) and os.path.exists(os.path.join(folder, "stop"))


def register_rank_pid() -> None:
    """Leave this rank's pid in GANSVC_LAUNCH_DIR/pids, so the launcher can sweep up any rank left behind."""
    folder = launch_dir()
    if folder is None:
        return
    try:
        (folder / "pids").mkdir(exist_ok=True)
        (folder / "pids" / str(os.getpid())).write_text(str(world_from_env().rank), encoding="utf-8")
    except OSError:
        pass


def record_failure(
    exit_code: int, error: BaseException | None = None, message: str = "", kind: FailureKind | None = None
) -> Path | None:
    """Write this rank's failure (exit code, kind, error class, message, traceback) for the launcher; return the file.

    `kind` defaults to failure_kind(error), or PEER_LOST when the error is how a collective fails after
    another rank died. Does nothing outside a launch that asked for it (no GANSVC_LAUNCH_DIR). The first
    failure a rank records is kept: a later, consequential one does not replace the cause.
    """
    folder = launch_dir()
    if folder is None:
        return None
    world = world_from_env()
    path = folder / "failures" / f"rank_{world.rank}.json"
    if path.exists():
        return path
    if error is not None and not message:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if kind is None:
        kind = FailureKind.PEER_LOST if is_peer_failure(error, message) else failure_kind(error)
    record = {
        "kind": FailureKind(kind).value,
        "rank": world.rank,
        "local_rank": world.local_rank,
        "node_rank": world.node_rank,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "exit_code": int(exit_code),
        "error": type(error).__name__ if error is not None else "",  # for people only: programs read "kind"
        "message": message,
        "traceback": "".join(traceback.format_exception(error)) if error is not None else "",
        "time": time.time(),
    }
    try:
        return atomic_write_text(path, json.dumps(record))
    except OSError:
        return None


def read_failures(folder: Path) -> list[dict]:
    """Return the failure records the ranks wrote to folder/failures (unreadable ones left out)."""
    records = []
    for path in (folder / "failures").glob("rank_*.json"):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def is_consequential(record: dict) -> bool:
    """Return whether a failure record is a lost peer (a consequence of another rank's failure)."""
    return FailureKind.parse(record.get("kind")) is FailureKind.PEER_LOST


def rank_failure(record: dict) -> RankFailure:
    """Return the RankFailure of a failure record."""
    return RankFailure(
        rank=record.get("rank"), exit_code=int(record.get("exit_code", 1)), error=record.get("error", ""),
        message=record.get("message", ""), traceback=record.get("traceback", ""), host=record.get("host", ""),
        kind=FailureKind.parse(record.get("kind")),
    )  # fmt: skip


# What a rank sees when another rank died or hung: its own error is then a consequence, not the cause.
_PEER_FAILURE_SIGNS = (
    "connection closed by peer", "connection reset by peer", "broken pipe", "remote worker", "remote process exited",
    "communicator was aborted", "ncclremoteerror", "timed out", "collective operation timeout", "socket closed",
    "connection refused", "gloo/transport/",  # any error of gloo's TCP transport is about the other end
)  # fmt: skip


def is_peer_failure(error: BaseException | None, message: str = "") -> bool:
    """Return whether an error is how a collective fails when another rank died or hung (gloo, NCCL, the store)."""
    if failure_kind(error) is FailureKind.PEER_LOST:
        return True
    # gloo's and NCCL's transport errors come as plain RuntimeErrors: only their text tells them apart
    text = (message or (str(error) if error is not None else "")).lower()
    return any(sign in text for sign in _PEER_FAILURE_SIGNS)


# ---------------------------------------------------------------------- rank 0's events
def _socket_address(address: str) -> str:
    # '@name' is Linux's abstract namespace: no file to clean up, no path length or permission trouble.
    return "\0" + address[1:] if address.startswith("@") else address


class EventSender:
    """Sends trainer events from rank 0 to the launcher's socket (GANSVC_EVENT_SOCKET), encoded by runtime.events."""

    def __init__(self, address: str):
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(_socket_address(address))

    def __call__(self, event: events.Event) -> None:
        data = events.encode(event)
        with self.lock:
            self.sock.sendall(data)

    def close(self) -> None:
        """Close the connection (the launcher sees end-of-file)."""
        self.sock.close()


def event_sender_from_env() -> EventSender | None:
    """Return an EventSender to the launcher's socket when one was given and this is rank 0, else None."""
    address = os.environ.get(ENV_EVENT_SOCKET)
    if not address or not world_from_env().is_main:
        return None
    return EventSender(address)


class EventServer:
    """Receives rank 0's events on an abstract Unix socket and hands each, decoded, to on_event."""

    def __init__(self, on_event: Callable[[events.Event], None]):
        self.on_event = on_event
        self.count = 0
        self.address = f"@gansvc-events-{os.getpid()}-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(_socket_address(self.address))
        self.sock.listen(4)
        self._closing = False
        self._threads: list[threading.Thread] = []
        accept = threading.Thread(target=self._accept, name="gansvc-launch-events", daemon=True)
        accept.start()

    def _accept(self) -> None:
        while not self._closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            reader = threading.Thread(target=self._read, args=(conn,), name="gansvc-launch-events-reader", daemon=True)
            reader.start()
            self._threads.append(reader)

    def _read(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as lines:
            for line in lines:
                if not line.strip():
                    continue
                self.count += 1
                try:
                    self.on_event(events.decode(line))
                except Exception as error:  # noqa: BLE001 - keep reading, or rank 0 would block on a full socket
                    print(f"gansvc.train.launch: event handler failed: {error!r}", file=sys.stderr)

    def close(self) -> None:
        """Stop accepting, and wait for the readers to deliver what the ranks sent."""
        self._closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for thread in self._threads:
            thread.join(timeout=5.0)
