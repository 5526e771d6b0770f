"""gRPC status codes as HTTP statuses, and the JSON error body.

The table is Google's mapping (google/rpc/code.proto), except that
FAILED_PRECONDITION is 409 (the request was valid; the state forbids it, as
ABORTED and ALREADY_EXISTS), so that a client can tell "fix your request"
(400) from "the data says no" (409); and that RESOURCE_EXHAUSTED from a gRPC
size limit is not 429, which clients retry: gRPC gives that one code to a
message or metadata over a limit and to a server's concurrency limit alike."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import any_pb2, json_format
from google.rpc import error_details_pb2, status_pb2  # noqa: F401  (error_details: its types for Any)
from grpc_status import rpc_status

# Every gRPC status code and its HTTP status.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

# Statuses the gateway answers by itself, with the code its body names.
ROUTE_NOT_FOUND = (404, grpc.StatusCode.NOT_FOUND)
METHOD_NOT_ALLOWED = (405, grpc.StatusCode.UNIMPLEMENTED)
CONTENT_TOO_LARGE = (413, grpc.StatusCode.RESOURCE_EXHAUSTED)
UNSUPPORTED_MEDIA_TYPE = (415, grpc.StatusCode.INVALID_ARGUMENT)
HEADER_FIELDS_TOO_LARGE = (431, grpc.StatusCode.RESOURCE_EXHAUSTED)

# gRPC core's messages for its size limits (the rest of RESOURCE_EXHAUSTED,
# such as "Concurrent RPC limit exceeded!", stays 429). "SERVER:" marks a
# message the service refused to receive: the request; any other message over
# a limit is an answer too large to pass on. Metadata over a limit is the
# request's: the services keep an answer's under 8 KiB (tests/test_hostile_input.py).
_REQUEST_MESSAGE_TOO_LARGE = re.compile(r"SERVER: Received message larger than max")
_MESSAGE_TOO_LARGE = re.compile(r"message larger than max", re.IGNORECASE)
_METADATA_TOO_LARGE = re.compile(r"metadata size exceeds", re.IGNORECASE)

# Codes whose message may carry a server's internals (an exception's text):
# the client gets a generic message, the gateway's log the original.
MASKED_CODES = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS})


def http_status(code: grpc.StatusCode, message: str) -> int:
    """The HTTP status of a failed call's code and message."""
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        if _REQUEST_MESSAGE_TOO_LARGE.search(message):
            return CONTENT_TOO_LARGE[0]
        if _MESSAGE_TOO_LARGE.search(message):
            return 500
        if _METADATA_TOO_LARGE.search(message):
            return HEADER_FIELDS_TOO_LARGE[0]
    return HTTP_STATUS.get(code, 500)


def error_statuses() -> dict[int, list[str]]:
    """Each HTTP error status of the table, with the gRPC codes that give it."""
    statuses: dict[int, list[str]] = {}
    for code, status in HTTP_STATUS.items():
        if code is not grpc.StatusCode.OK:
            statuses.setdefault(status, []).append(code.name)
    return dict(sorted(statuses.items()))


def error_body(code: grpc.StatusCode, message: str, details: Iterable[dict[str, Any]] = ()) -> bytes:
    return json.dumps(
        {"code": code.name, "message": message, "details": list(details)}, ensure_ascii=False, separators=(",", ":")
    ).encode()


def _detail_json(detail: any_pb2.Any) -> dict[str, Any]:
    try:
        return json_format.MessageToDict(
            detail, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    except (TypeError, KeyError, json_format.Error):  # a type this process does not know
        return {"@type": detail.type_url}


def status_details(error: grpc.RpcError) -> list[dict[str, Any]]:
    """The google.rpc.Status details a failed call carried, read by
    grpcio-status, as JSON objects with their "@type"; [] when there are none
    or the trailer does not match the call's status."""
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        return []
    return [_detail_json(detail) for detail in status.details] if status is not None else []
