"""The Python client's retry budget: a unary call is tried `retry_attempts` times while the server answers
UNAVAILABLE (a server restarting), counted by a server that answers nothing else. The dashboard's budget of two:
tests/test_web.py."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from gansvc.api.convert import pb_grpc
from gansvc.clients.python import DEFAULT_RETRY_ATTEMPTS, GanClient


class RestartingServer(pb_grpc.GanServiceServicer):
    """Answers every ListJobs UNAVAILABLE and counts the calls that reached it."""

    def __init__(self):
        self.calls = 0

    def ListJobs(self, request, context):  # noqa: N802 (the gRPC method's name)
        self.calls += 1
        context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")


def start_restarting_server():
    """(servicer, its address, the grpc.Server to stop)."""
    servicer = RestartingServer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_GanServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return servicer, f"127.0.0.1:{port}", server


@pytest.fixture
def restarting_server():
    servicer, address, server = start_restarting_server()
    try:
        yield servicer, address
    finally:
        server.stop(0)


@pytest.mark.parametrize("attempts", [1, 2, DEFAULT_RETRY_ATTEMPTS])
def test_a_call_is_tried_retry_attempts_times_while_the_server_is_unavailable(restarting_server, attempts):
    servicer, address = restarting_server
    with GanClient(address, retry_attempts=attempts) as client:
        with pytest.raises(grpc.RpcError) as raised:
            client.list_jobs_page()
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE and "restarting" in raised.value.details()
    assert servicer.calls == attempts


def test_fewer_than_one_attempt_is_refused():
    with pytest.raises(ValueError, match="retry_attempts"):
        GanClient("127.0.0.1:1", retry_attempts=0)
