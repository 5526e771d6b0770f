"""gRPC interceptors every service uses.

Server side: parse each request strictly, give the call its trace (the
caller's W3C `traceparent`, or a new trace; a span when tracing is on), log one
JSON line per RPC and count it in the metrics, and bind its deadline. Client
side (calls between services): pass the trace along, and never wait past the
served call's deadline."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import grpc
from google.protobuf.message import DecodeError
from grpc_status import rpc_status

from common.grpc_edge import status_of_failure
from common.metrics import RPC_SECONDS, RPCS
from common.rpc_deadline import bind_deadline, remaining_s, unbind_deadline
from common.rpc_logging import bind_rpc_fields, unbind_rpc_fields
from common.tracing import TRACE_ID_KEY, RpcTrace, bind_trace, current_trace, end_span, start_trace, unbind_trace

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

_DEADLINE_RESERVE_S = 0.25
_rpc_log = logging.getLogger("rewards.rpc")


# google.rpc.Code numbers to grpc.StatusCode.
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


# Server spans whose status is an error (OpenTelemetry's gRPC conventions): the others are the caller's doing.
_SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def _rpc_attributes(method: str) -> dict[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def _end_rpc_span(span: Span | None, code: grpc.StatusCode, server: bool) -> None:
    if span is None:
        return
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    failed = code in _SERVER_ERROR_CODES if server else code != grpc.StatusCode.OK
    end_span(span, code.name if failed else "")


def _handler_raising(error: Exception) -> grpc.RpcMethodHandler:
    async def raise_error(_request: Any, _context: grpc.aio.ServicerContext) -> Any:
        raise error

    return grpc.unary_unary_rpc_method_handler(raise_error)


class _RpcRecord:
    """One RPC's line and metrics: written once, by record()."""

    def __init__(self, method: str, context: grpc.aio.ServicerContext, trace: RpcTrace) -> None:
        self.method = method
        self.context = context
        self.trace = trace
        self.started = time.perf_counter()
        # Read now: a stream's context may be gone when its line is written (a cancelled call's
        # context.peer() crashes grpc.aio).
        self.peer = context.peer()
        self.code = grpc.StatusCode.OK
        self._recorded = False

    def record(self, code: grpc.StatusCode, error_id: str = "", bug: Exception | None = None) -> None:
        """Counts and logs the RPC once, and ends its span: before an abort sends the status,
        so that a client that has the answer finds it in the metrics and the trace. An
        unexpected error (a bug) goes on this same line, with its error id and traceback:
        one line a request, whatever happened."""
        if self._recorded:
            return
        self._recorded = True
        seconds = time.perf_counter() - self.started
        _end_rpc_span(self.trace.span, code, server=True)
        RPCS.labels(self.method, code.name).inc()
        RPC_SECONDS.labels(self.method).observe(seconds)
        line_fields: dict[str, Any] = {
            "code": code.name,
            "duration_ms": round(seconds * 1000, 3),
            "peer": self.peer,
        }
        if error_id:
            level = logging.ERROR
            line_fields["error_id"] = error_id
        elif self.method.startswith("/grpc.health.v1.Health/"):
            level = logging.DEBUG  # health checks come every few seconds from orchestrators
        else:
            level = logging.INFO
        if _rpc_log.isEnabledFor(level):
            _rpc_log.log(level, "rpc", exc_info=bug, extra={"fields": line_fields})

    async def parse(self, parse: Callable[[bytes], Any] | None, raw_request: bytes, fields: dict[str, Any]) -> Any:
        try:
            request = parse(raw_request) if parse else raw_request
        except DecodeError as error:
            self.code = grpc.StatusCode.INVALID_ARGUMENT
            self.record(self.code)
            await self.context.abort(self.code, f"request is not a valid protobuf message ({error})")
        for name in ("user_id", "request_id"):
            value = getattr(request, name, "")
            if value:
                fields[name] = value
        return request

    async def fail(self, error: Exception, trace_id: str) -> None:
        """Ends the RPC with the failure's status. Every failure ends here with an abort: an
        exception escaping to grpc.aio would end the call UNKNOWN and be logged again,
        traceback and all, by grpc.aio itself."""
        failure = status_of_failure(error)
        self.code = _STATUS_CODES[failure.status.code]
        self.record(self.code, failure.error_id, error if failure.error_id else None)
        status = rpc_status.to_status(failure.status)
        # The status's trailers (its details) replace those set before: the trace id goes again.
        await self.context.abort(
            status.code,
            status.details,
            trailing_metadata=(*status.trailing_metadata, (TRACE_ID_KEY, trace_id)),
        )


class RpcEdgeInterceptor(grpc.aio.ServerInterceptor):
    """The one edge of every RPC (unary, and server streaming). Parses the
    request itself, so that a malformed message (invalid UTF-8 in a string,
    bad wire format) is INVALID_ARGUMENT instead of gRPC's INTERNAL; binds
    the trace id, the deadline and the request's ids to the RPC; ends every
    failure with a status, the one place that does
    (common.grpc_edge.status_of_failure): a domain error's, UNAVAILABLE for a
    storage error the caller can retry, and INTERNAL with an error id for
    anything else (never UNKNOWN); logs one line per RPC (method, code,
    duration, user and request ids, peer, trace id; an unexpected error's id
    and traceback) and counts it in the metrics. With a tracer (tracing on), a
    SERVER span per RPC, whose children are the RPC's peer and DynamoDB calls."""

    def __init__(self, tracer: Tracer | None = None) -> None:
        self._tracer = tracer

    async def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        try:
            handler = await continuation(handler_call_details)
        except Exception as error:
            # A bug in an inner interceptor (caller auth) while finding the handler: ended below as
            # a handler's own would be, not left to grpc.aio (UNKNOWN, and its own traceback).
            handler = _handler_raising(error)
        if handler is None:
            return handler
        if handler.unary_stream is not None:
            return self._streaming(handler, handler_call_details, self._tracer)
        if handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        inner = handler.unary_unary
        parse = handler.request_deserializer
        metadata = handler_call_details.invocation_metadata or ()
        tracer = self._tracer

        async def served(raw_request: bytes, context: grpc.aio.ServicerContext) -> Any:
            trace = start_trace(tracer, metadata, method.lstrip("/"), _rpc_attributes(method) if tracer else {})
            rpc = _RpcRecord(method, context, trace)
            trace_id = trace.trace_id
            fields = {"method": method, "trace_id": trace_id}
            token = bind_rpc_fields(fields)
            trace_token = bind_trace(trace)
            deadline_token = bind_deadline(context.time_remaining())
            # The trace id goes back with the answer: in the initial metadata of a success, in the trailers
            # of an error. No headers go out before an error, so clients' gRPC retries of UNAVAILABLE
            # still apply (gRPC does not retry a call once response headers have arrived).
            context.set_trailing_metadata(((TRACE_ID_KEY, trace_id),))
            try:
                request = await rpc.parse(parse, raw_request, fields)
                response = await inner(request, context)
                await context.send_initial_metadata(((TRACE_ID_KEY, trace_id),))
                return response
            except grpc.aio.AbortError:
                if rpc.code == grpc.StatusCode.OK:
                    rpc.code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                rpc.code = grpc.StatusCode.CANCELLED
                raise
            except Exception as error:
                await rpc.fail(error, trace_id)
            finally:
                rpc.record(rpc.code)
                unbind_rpc_fields(token)
                unbind_trace(trace_token)
                unbind_deadline(deadline_token)

        return grpc.unary_unary_rpc_method_handler(
            served,
            request_deserializer=None,  # parsed in `served`
            response_serializer=handler.response_serializer,
        )

    @staticmethod
    def _streaming(
        handler: grpc.RpcMethodHandler, handler_call_details: Any, tracer: Tracer | None
    ) -> grpc.RpcMethodHandler:
        """A server-streaming RPC: the same edge; its line is written when the stream ends.
        The servicer sends the initial metadata (with the trace id) itself when it is ready."""
        method = handler_call_details.method
        inner = cast(Callable[[Any, Any], AsyncIterator[Any]], handler.unary_stream)
        parse = handler.request_deserializer
        metadata = handler_call_details.invocation_metadata or ()

        async def streamed(raw_request: bytes, context: grpc.aio.ServicerContext) -> Any:
            trace = start_trace(tracer, metadata, method.lstrip("/"), _rpc_attributes(method) if tracer else {})
            rpc = _RpcRecord(method, context, trace)
            trace_id = trace.trace_id
            fields = {"method": method, "trace_id": trace_id}
            token = bind_rpc_fields(fields)
            trace_token = bind_trace(trace)
            deadline_token = bind_deadline(context.time_remaining())
            context.set_trailing_metadata(((TRACE_ID_KEY, trace_id),))
            try:
                request = await rpc.parse(parse, raw_request, fields)
                responses = inner(request, context)
                if inspect.isawaitable(responses):  # a handler that writes with context.write (a refusal)
                    await responses
                    return
                async for response in responses:
                    yield response
            except grpc.aio.AbortError:
                if rpc.code == grpc.StatusCode.OK:
                    rpc.code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except (asyncio.CancelledError, GeneratorExit):
                rpc.code = grpc.StatusCode.CANCELLED
                raise
            except Exception as error:
                await rpc.fail(error, trace_id)
            finally:
                rpc.record(rpc.code)
                # A stream that grpc.aio closes from another task: its bindings went with its context.
                with contextlib.suppress(ValueError):
                    unbind_rpc_fields(token)
                    unbind_trace(trace_token)
                    unbind_deadline(deadline_token)

        return grpc.unary_stream_rpc_method_handler(
            streamed, request_deserializer=None, response_serializer=handler.response_serializer
        )


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


def with_metadata(client_call_details: Any, extra: list[tuple[str, str]], timeout: float | None = None) -> _CallDetails:
    """The call's details (synchronous channels) with metadata added."""
    return _CallDetails(
        client_call_details.method,
        client_call_details.timeout if timeout is None else timeout,
        [*(client_call_details.metadata or ()), *extra],
        client_call_details.credentials,
        client_call_details.wait_for_ready,
        client_call_details.compression,
    )


def with_aio_metadata(client_call_details: Any, extra: list[tuple[str, str]], timeout: float | None = None) -> Any:
    """The call's details (grpc.aio) with metadata added and, given, another timeout."""
    metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()), *extra)
    return grpc.aio.ClientCallDetails(
        client_call_details.method,
        client_call_details.timeout if timeout is None else timeout,
        metadata,
        client_call_details.credentials,
        client_call_details.wait_for_ready,
    )


class PeerCallInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """For calls made on behalf of the RPC being served: adds this service's
    own credentials (`authorization`) and the served call's trace (`traceparent`,
    from the call's own CLIENT span when tracing is on), and
    shortens the call's timeout to what is left of its deadline, less a reserve
    for the caller's own remaining work (the deadline propagates: a callee never
    works for a caller that has given up, and the caller can still answer, for
    example with a deferred level check)."""

    def __init__(self, credentials: Callable[[], tuple[str, str]] | None = None) -> None:
        self._credentials = credentials

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        metadata: list[tuple[str, str]] = []
        if self._credentials is not None:
            metadata.append(self._credentials())
        timeout = client_call_details.timeout
        left = remaining_s()
        if left is not None:
            left -= min(_DEADLINE_RESERVE_S, left * 0.2)
            timeout = max(0.0, left) if timeout is None else max(0.0, min(timeout, left))
        trace = current_trace()
        if trace is None:
            return await continuation(with_aio_metadata(client_call_details, metadata, timeout), request)
        method = client_call_details.method
        method = method.decode() if isinstance(method, bytes) else method
        span = trace.start_child(method.lstrip("/"), _rpc_attributes(method)) if trace.tracer else None
        metadata.extend(trace.outgoing(span))
        if span is None:
            return await continuation(with_aio_metadata(client_call_details, metadata, timeout), request)
        try:
            call = await continuation(with_aio_metadata(client_call_details, metadata, timeout), request)
            code = await call.code()
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except BaseException:
            code = grpc.StatusCode.UNKNOWN
            raise
        finally:
            _end_rpc_span(span, code, server=False)
        return call
