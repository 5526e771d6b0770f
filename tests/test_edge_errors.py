"""The edge ends every RPC with a status the contract names: an unexpected
error (a bug) is INTERNAL with an error id, never UNKNOWN, and the one JSON log
line of the RPC carries that id and the traceback, once."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc
import pytest

from common.metrics import RPCS
from common.rpc_interceptors import RpcEdgeInterceptor
from rewards.v1 import xp_pb2, xp_pb2_grpc
from tests.cluster import Cluster, ServerLoop, rpc_error
from tests.conftest import LogLines

Factory = Callable[..., Cluster]
ERROR_ID = re.compile(r"error id ([0-9a-f]{12})\b")
GET_PROGRESS = "/rewards.v1.XpService/GetProgress"


class ProgressReadBug:
    """Raises a plain RuntimeError, as a bug would, in place of reading one user's progress."""

    def __init__(self, progress_table: str, user_id: str) -> None:
        self.progress_table, self.user_id = progress_table, user_id
        self.raised = 0

    def __call__(self, action: str, payload: Mapping[str, Any]) -> None:
        if action == "GetItem" and payload["TableName"] == self.progress_table:
            if payload["Key"]["user_id"] == {"S": self.user_id}:
                self.raised += 1
                raise RuntimeError(f"injected bug #{self.raised}")


def internal_count() -> float:
    return RPCS.labels(GET_PROGRESS, "INTERNAL")._value.get()  # type: ignore[attr-defined,no-any-return]


def test_an_unexpected_error_is_internal_with_an_error_id_in_the_one_log_line(
    new_cluster: Factory, user_id: str, json_log_lines: LogLines
) -> None:
    c = new_cluster()
    bug = ProgressReadBug(c.table("user_progress"), user_id)
    c.lean.before_send.append(bug)
    internal_before = internal_count()

    errors = [
        rpc_error(lambda: c.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user_id), timeout=10)) for _ in range(2)
    ]

    assert bug.raised == 2
    assert [e.code() for e in errors] == [grpc.StatusCode.INTERNAL] * 2
    error_ids = []
    for error in errors:
        found = ERROR_ID.search(error.details())
        assert found, error.details()
        error_ids.append(found.group(1))
    assert error_ids[0] != error_ids[1]  # one id per failed request
    assert internal_count() - internal_before == 2

    lines = json_log_lines()
    for error, error_id, bug_number in zip(errors, error_ids, (1, 2), strict=True):
        trace_id = dict(error.trailing_metadata() or ())["trace-id"]
        (line,) = [line for line in lines if line.get("trace_id") == trace_id]
        assert (line["message"], line["level"], line["logger"]) == ("rpc", "ERROR", "rewards.rpc")
        assert (line["method"], line["code"], line["user_id"], line["error_id"]) == (
            GET_PROGRESS,
            "INTERNAL",
            user_id,
            error_id,
        )
        assert f"RuntimeError: injected bug #{bug_number}" in line["exc_info"]
        assert [other for other in lines if error_id in json.dumps(other)] == [line]
    # The traceback once a request: neither the edge nor grpc.aio ("Unexpected [RuntimeError]
    # raised by servicer method", "Exception calling application") logs another.
    assert sum("Traceback" in json.dumps(line) for line in lines) == 2
    assert not [line for line in lines if line["logger"].startswith("grpc")]
    assert not [line for line in lines if line.get("code") == "UNKNOWN"]


def test_the_server_keeps_serving_after_an_unexpected_error(new_cluster: Factory, user_id: str) -> None:
    c = new_cluster()
    bug = ProgressReadBug(c.table("user_progress"), user_id)
    c.lean.before_send.append(bug)
    assert rpc_error(lambda: c.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user_id))).code() == (
        grpc.StatusCode.INTERNAL
    )
    c.lean.before_send.remove(bug)
    assert c.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user_id), timeout=10).user_id == user_id


REFUSED_TRACE = "5b8aa5a2d2c872e8321cf37308d69df2"
ROUTING_TRACE = "9f3c2e1d0b4a59687766554433221100"


def traceparent_of(trace_id: str) -> str:
    return f"00-{trace_id}-051581bf3cb55c13-01"


def test_a_refused_request_carries_its_trace_id_with_its_details(cluster: Cluster, json_log_lines: LogLines) -> None:
    """The status's own trailers (its google.rpc details) must not replace the trace id; and
    bad input is no bug: no error id, no traceback."""
    error = rpc_error(
        lambda: cluster.xp.GetProgress(
            xp_pb2.GetProgressRequest(user_id=""), metadata=[("traceparent", traceparent_of(REFUSED_TRACE))], timeout=10
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    trailers = dict(error.trailing_metadata() or ())
    assert trailers["trace-id"] == REFUSED_TRACE
    assert "grpc-status-details-bin" in trailers
    (line,) = [line for line in json_log_lines() if line.get("trace_id") == REFUSED_TRACE]
    assert (line["message"], line["level"], line["code"]) == ("rpc", "INFO", "INVALID_ARGUMENT")
    assert "error_id" not in line and "exc_info" not in line


class ProgressOfAnyone(xp_pb2_grpc.XpServiceServicer):
    async def GetProgress(self, request: xp_pb2.GetProgressRequest, context: Any) -> xp_pb2.UserProgress:
        return xp_pb2.UserProgress(user_id=request.user_id)


class BrokenRouting(grpc.aio.ServerInterceptor):
    """An interceptor inside the edge (as caller auth is) with a bug: it raises while finding the handler."""

    async def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        raise RuntimeError("routing bug")


@pytest.fixture
def server_with_broken_routing() -> Iterator[xp_pb2_grpc.XpServiceStub]:
    loop = ServerLoop.shared()

    async def started() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(interceptors=[RpcEdgeInterceptor(), BrokenRouting()])
        xp_pb2_grpc.add_XpServiceServicer_to_server(ProgressOfAnyone(), server)
        port = server.add_insecure_port("localhost:0")
        await server.start()
        return server, port

    server, port = loop.run(started())
    channel = grpc.insecure_channel(f"localhost:{port}")
    try:
        yield xp_pb2_grpc.XpServiceStub(channel)
    finally:
        channel.close()
        loop.run(server.stop(grace=None))


def test_an_error_inside_the_edge_before_the_handler_is_internal_too(
    server_with_broken_routing: xp_pb2_grpc.XpServiceStub, json_log_lines: LogLines
) -> None:
    error = rpc_error(
        lambda: server_with_broken_routing.GetProgress(
            xp_pb2.GetProgressRequest(user_id="gw1"),
            metadata=[("traceparent", traceparent_of(ROUTING_TRACE))],
            timeout=10,
        )
    )
    assert error.code() == grpc.StatusCode.INTERNAL
    found = ERROR_ID.search(error.details())
    assert found, error.details()
    lines = json_log_lines()
    (line,) = [line for line in lines if line.get("trace_id") == ROUTING_TRACE]
    assert (line["message"], line["code"], line["error_id"]) == ("rpc", "INTERNAL", found.group(1))
    assert "RuntimeError: routing bug" in line["exc_info"]
    assert sum("Traceback" in json.dumps(line) for line in lines) == 1
    assert not [line for line in lines if line["logger"].startswith("grpc")]
