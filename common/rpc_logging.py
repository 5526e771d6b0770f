"""Logs as one JSON object a line, each carrying the request id and user id of
the RPC being served; and the server interceptor that parses each request and
logs one line per RPC with its status and duration."""
from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any, Callable

import grpc
from google.protobuf.message import DecodeError
from pythonjsonlogger.json import JsonFormatter

_rpc_fields: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("rpc_fields", default={})


class _RpcFieldsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _rpc_fields.get().items():
            setattr(record, key, value)
        for key, value in getattr(record, "fields", {}).items():
            setattr(record, key, value)
        return True


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{levelname}{name}{message}",
            style="{",
            timestamp="ts",
            rename_fields={"levelname": "level", "name": "logger"},
            static_fields={"service": service},
            reserved_attrs=[*JsonFormatter().reserved_attrs, "fields"],
        )
    )
    handler.addFilter(_RpcFieldsFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


_rpc_log = logging.getLogger("rewards.rpc")


class RpcEdgeInterceptor(grpc.ServerInterceptor):
    """Parses each unary request itself, so that a malformed message (invalid
    UTF-8 in a string, bad wire format) is INVALID_ARGUMENT instead of gRPC's
    INTERNAL, and logs one line per RPC: method, code, duration, user and
    request ids, peer."""

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        inner = handler.unary_unary
        parse = handler.request_deserializer

        def logged(raw_request: bytes, context: grpc.ServicerContext) -> Any:
            try:
                request = parse(raw_request) if parse else raw_request
            except DecodeError as error:
                _rpc_log.info("rpc", extra={"fields": {"method": method, "code": "INVALID_ARGUMENT", "peer": context.peer()}})
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request is not a valid protobuf message ({error})")
            fields = {"method": method}
            for name in ("user_id", "request_id"):
                value = getattr(request, name, "")
                if value:
                    fields[name] = value
            token = _rpc_fields.set(fields)
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                response = inner(request, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except Exception:
                code = context.code() or grpc.StatusCode.UNKNOWN
                if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.OK):
                    code = grpc.StatusCode.UNKNOWN
                    _rpc_log.exception("unhandled error")
                raise
            finally:
                _rpc_log.info(
                    "rpc",
                    extra={"fields": {
                        "code": code.name,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                        "peer": context.peer(),
                    }},
                )
                _rpc_fields.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            logged,
            request_deserializer=None,  # parsed in `logged`
            response_serializer=handler.response_serializer,
        )
