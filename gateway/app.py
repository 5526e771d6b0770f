"""The Starlette app: one handler per route of gateway.routes, each making
one gRPC call over a grpc.aio channel to its service (one channel a service,
opened at startup), and translating the answer back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import any_pb2, json_format, message_factory
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.routing import Route as StarletteRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from common.channels import CLIENT_CHANNEL_OPTIONS
from common.config import Settings
from common.tracing import TRACEPARENT, TRACESTATE, RpcTrace, end_span, new_trace_id, start_trace, tracer_of
from common.transport_security import channel_credentials
from gateway.binding import (
    INTEGER_TYPES,
    BadRequest,
    RequestBinder,
    check_path_encoding,
    header_values,
    query_items,
)
from gateway.limits import (
    JSON_MEDIA_TYPE,
    MAX_BODY_BYTES,
    MAX_REQUEST_MESSAGE_BYTES,
    oversized_headers,
    unsupported_media_type,
)
from gateway.openapi import HEALTH_PATH, OPENAPI_PATH, TRACE_ID_HEADER, build_document
from gateway.routes import IDEMPOTENCY_HEADER, ROUTES, SERVICES, Route, resolve_field
from gateway.status import (
    CONTENT_TOO_LARGE,
    HEADER_FIELDS_TOO_LARGE,
    MASKED_CODES,
    METHOD_NOT_ALLOWED,
    ROUTE_NOT_FOUND,
    UNSUPPORTED_MEDIA_TYPE,
    error_body,
    http_status,
    status_details,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

log = logging.getLogger("rewards.gateway")

_TRACE_ID_KEY = TRACE_ID_HEADER.lower().encode()
_TRACE_CONTEXT_KEYS = (TRACEPARENT.encode(), TRACESTATE.encode())
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
_SCOPE_TRACE = "rewards.trace"
_SCOPE_LOG = "rewards.log"


def _json_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    # A final newline, so that answers printed by curl in a terminal end their line.
    return Response(body + b"\n", status_code=status, media_type=JSON_MEDIA_TYPE, headers=headers)


def _error(
    status: int,
    code: grpc.StatusCode,
    message: str,
    details: list[dict[str, Any]] | None = None,
    scope: Scope | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    if scope is not None:
        scope.setdefault(_SCOPE_LOG, {})["code"] = code.name
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return _json_response(status, error_body(code, message, details or ()), headers)


def _bad_request(
    problem: BadRequest, scope: Scope, answer: tuple[int, grpc.StatusCode] = (400, grpc.StatusCode.INVALID_ARGUMENT)
) -> Response:
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=problem.field, description=problem.description)
            ]
        )
    )
    details = [
        json_format.MessageToDict(detail, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    ]
    status, code = answer
    return _error(status, code, str(problem), details, scope)


def _to_json(message: Message) -> bytes:
    return json.dumps(
        json_format.MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True),
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class _BodyTooLarge(Exception):
    pass


class RpcHandler:
    """One route: binds the request, calls the RPC, translates the answer."""

    def __init__(self, route: Route, gateway: Gateway) -> None:
        self.route = route
        self._gateway = gateway
        self._binder = RequestBinder(route)
        self._response_class = message_factory.GetMessageClass(route.response_type)
        self._call: grpc.aio.UnaryUnaryMultiCallable[Any, Any] | None = None
        service, _, method = route.grpc_method.lstrip("/").rpartition("/")
        self._span_attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}

    def connect(self, channel: grpc.aio.Channel) -> None:
        request_class = message_factory.GetMessageClass(self.route.request_type)
        self._call = channel.unary_unary(
            self.route.grpc_method,
            request_serializer=request_class.SerializeToString,
            response_deserializer=self._response_class.FromString,
        )

    async def __call__(self, request: Request) -> Response:
        scope = request.scope
        trace: RpcTrace = scope.get(_SCOPE_TRACE) or RpcTrace(new_trace_id())
        if trace.span is not None:
            trace.span.update_name(f"{self.route.http_method} {self.route.path}")
            trace.span.set_attribute("http.route", self.route.path)
        scope.setdefault(_SCOPE_LOG, {}).update(
            {"route": f"{self.route.http_method} {self.route.path}", "rpc": self.route.grpc_method}
        )
        raw_headers = scope["headers"]
        try:
            check_path_encoding(scope.get("raw_path"))
            body = None
            if self.route.body is not None:
                body = await _read_body(request, MAX_BODY_BYTES)
                media_type_problem = unsupported_media_type(header_values(raw_headers, "Content-Type"), body)
                if media_type_problem is not None:
                    return _bad_request(BadRequest("Content-Type", media_type_problem), scope, UNSUPPORTED_MEDIA_TYPE)
            idempotency = header_values(raw_headers, IDEMPOTENCY_HEADER) if self.route.idempotency_field else []
            for value in idempotency:
                # As the document states (gateway.openapi.IDEMPOTENCY_KEY_PATTERN): header field values are
                # ASCII (RFC 9110), and a key read as UTF-8 here but as Latin-1 by a client would not match.
                if not _PRINTABLE_ASCII.fullmatch(value):
                    raise BadRequest(IDEMPOTENCY_HEADER, "must be printable ASCII")
            message = self._binder.bind(body, request.path_params, query_items(scope["query_string"]), idempotency)
            authorization = header_values(raw_headers, "Authorization")
            for value in authorization:
                if not _PRINTABLE_ASCII.fullmatch(value):
                    raise BadRequest("Authorization", "must be printable ASCII")
        except BadRequest as problem:
            return _bad_request(problem, scope)
        except _BodyTooLarge:
            status, code = CONTENT_TOO_LARGE
            return _error(status, code, f"the body is larger than {MAX_BODY_BYTES} bytes", scope=scope)
        # Checked here rather than left to the service's gRPC limit, so that the answer names the limit.
        message_size = message.ByteSize()
        if message_size > MAX_REQUEST_MESSAGE_BYTES:
            status, code = CONTENT_TOO_LARGE
            return _error(
                status,
                code,
                f"the request is {message_size} bytes as a protobuf message; "
                f"the services take at most {MAX_REQUEST_MESSAGE_BYTES} bytes",
                scope=scope,
            )
        assert self._call is not None, "the gateway's channels are opened at startup (lifespan)"
        span = trace.start_child(self.route.grpc_method.lstrip("/"), self._span_attributes) if trace.tracer else None
        metadata = [*trace.outgoing(span), *(("authorization", value) for value in authorization)]
        try:
            response = await self._call(message, timeout=self._gateway.call_timeout_s, metadata=metadata)
        except grpc.aio.AioRpcError as error:
            if span is not None:
                span.set_attribute("rpc.grpc.status_code", error.code().value[0])
            end_span(span, error.code().name)
            return self._rpc_error(error, trace.trace_id, scope)
        except BaseException:
            end_span(span, "cancelled")
            raise
        if span is not None:
            span.set_attribute("rpc.grpc.status_code", 0)
        end_span(span)
        scope[_SCOPE_LOG]["code"] = grpc.StatusCode.OK.name
        return _json_response(200, _to_json(response))

    def _rpc_error(self, error: grpc.aio.AioRpcError, trace_id: str, scope: Scope) -> Response:
        code = error.code()
        message = error.details() or ""
        details = status_details(error)
        if code in MASKED_CODES:
            log.warning(
                "rpc failed",
                extra={
                    "fields": {"rpc": self.route.grpc_method, "code": code.name, "error": message, "trace_id": trace_id}
                },
            )
            message = f"internal error (trace id {trace_id})"
            details = []
        return _error(http_status(code, error.details() or ""), code, message, details, scope)


class Gateway:
    """The channels and the handlers of every route."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.call_timeout_s = settings.gateway_call_timeout_s
        self.handlers = [RpcHandler(route, self) for route in ROUTES]
        self.channels: dict[str, grpc.aio.Channel] = {}

    def _open_channel(self, target: str) -> grpc.aio.Channel:
        credentials = channel_credentials(self.settings)
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=CLIENT_CHANNEL_OPTIONS)
        return grpc.aio.secure_channel(target, credentials, options=CLIENT_CHANNEL_OPTIONS)

    async def open(self) -> None:
        """In the server's event loop (grpc.aio channels belong to one)."""
        for name in SERVICES:
            self.channels[name] = self._open_channel(getattr(self.settings, f"{name}_target"))
        for handler in self.handlers:
            handler.connect(self.channels[handler.route.service])
        log.info(
            "gateway ready",
            extra={"fields": {"targets": {name: getattr(self.settings, f"{name}_target") for name in SERVICES}}},
        )

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close(grace=None)
        self.channels.clear()


class TraceAndLog:
    """Outermost: gives each request its trace (the client's W3C traceparent
    when valid, else a new one; a SERVER span when tracing is on), returns its
    trace id as Trace-Id, and logs one line a request."""

    def __init__(self, app: ASGIApp, tracer: Tracer | None = None) -> None:
        self.app = app
        self._tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        trace_context = [
            (key.decode(), value.decode("latin-1")) for key, value in scope["headers"] if key in _TRACE_CONTEXT_KEYS
        ]
        attributes = {"http.request.method": scope["method"], "url.path": scope["path"]} if self._tracer else {}
        trace = start_trace(self._tracer, trace_context, scope["method"], attributes)
        trace_id = trace.trace_id
        scope[_SCOPE_TRACE] = trace
        fields: dict[str, Any] = scope.setdefault(_SCOPE_LOG, {})
        status = 500

        async def send_with_trace(message: AsgiMessage) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (_TRACE_ID_KEY, trace_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_trace)
        finally:
            if trace.span is not None:
                trace.span.set_attribute("http.response.status_code", status)
            end_span(trace.span, str(status) if status >= 500 else "")
            level = logging.DEBUG if scope["path"] == HEALTH_PATH else logging.INFO
            log.log(
                level,
                "http",
                extra={
                    "fields": {
                        "method": scope["method"],
                        "path": scope["path"],
                        **fields,
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                        "trace_id": trace_id,
                    }
                },
            )


class HeaderSizeLimit:
    """Answers 431 to a request whose header fields are over the gateway's
    limits (gateway.limits), whatever its route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = oversized_headers(scope["headers"]) if scope["type"] == "http" else None
        if problem is None:
            await self.app(scope, receive, send)
            return
        status, code = HEADER_FIELDS_TOO_LARGE
        await _error(status, code, problem, scope=scope)(scope, receive, send)


class _DecimalConvertor(Convertor[str]):
    """A path segment that is a decimal integer, kept as text for the binder
    (which parses it with the JSON mapping, range included)."""

    regex = "-?[0-9]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return str(value)


class _SegmentConvertor(Convertor[str]):
    """One whole path segment as sent (percent-encoded), decoded here: an id
    holding a slash comes as %2F, so that it cannot be read as another route
    (/achievements/a%2Fstats is achievement "a/stats", /achievements/a/stats
    the stats of "a"). An empty one is passed on, for the service to say the
    id is required; one that is not UTF-8 is refused before binding
    (gateway.binding.check_path_encoding)."""

    regex = "[^/]*"

    def convert(self, value: str) -> str:
        return urllib.parse.unquote(value, errors="replace")

    def to_string(self, value: str) -> str:
        return urllib.parse.quote(value, safe="")


register_url_convertor("decimal", _DecimalConvertor())
register_url_convertor("segment", _SegmentConvertor())

# What a request target may hold as it is; any other byte is matched percent-encoded.
_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _unreserved(match: re.Match[str]) -> str:
    character = chr(int(match.group(1), 16))
    return character if character in _UNRESERVED else match.group(0)


def routing_path(scope: Scope) -> str:
    """The path routes are matched against: the request's path as sent
    (`raw_path`), not as the server decoded it, so that an encoded slash stays
    inside its segment; percent-encoded unreserved characters are decoded
    (RFC 3986 6.2.2.2: they mean the same)."""
    raw = scope.get("raw_path")
    if raw is None:
        return urllib.parse.quote(scope["path"], safe="/")
    return _ESCAPE.sub(_unreserved, urllib.parse.quote(raw, safe=_PRINTABLE))


class _RawPathRoute(StarletteRoute):
    """A route of gateway.routes, matched against routing_path."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http":
            scope = {**scope, "path": routing_path(scope)}
        return super().matches(scope)


def _starlette_path(route: Route) -> str:
    """The route's path for Starlette's router: an integer parameter matches
    decimal digits only (so /levels/check-level-up is not a level); a string
    one a whole segment (an id may hold a slash, sent as %2F: see _SegmentConvertor)."""
    path = route.path
    for param in route.path_params:
        field = resolve_field(route.request_type, route.field_path(param))
        path = path.replace(f"{{{param}}}", f"{{{param}:{'decimal' if field.type in INTEGER_TYPES else 'segment'}}}")
    return path


def _dispatcher(handlers: dict[str, Callable[[Request], Any]]) -> Callable[[Request], Any]:
    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        response: Response = await handlers[method](request)
        return response

    return dispatch


def create_app(settings: Settings, traces: TracerProvider | None = None) -> Starlette:
    """The gateway's app; with `traces` (common.tracing.tracer_provider), a span per request and per gRPC call."""
    gateway = Gateway(settings)
    document = json.dumps(build_document(), separators=(",", ":")).encode()

    async def healthz(_request: Request) -> Response:
        return _json_response(200, b'{"status":"SERVING"}')

    async def openapi(_request: Request) -> Response:
        return _json_response(200, document)

    by_path: dict[str, dict[str, Callable[[Request], Any]]] = {}
    for handler in gateway.handlers:
        by_path.setdefault(_starlette_path(handler.route), {})[handler.route.http_method] = handler
    routes = [
        StarletteRoute(HEALTH_PATH, healthz, methods=["GET"]),
        StarletteRoute(OPENAPI_PATH, openapi, methods=["GET"]),
        *(_RawPathRoute(path, _dispatcher(handlers), methods=list(handlers)) for path, handlers in by_path.items()),
    ]

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        if error.status_code == 405:
            status, code = METHOD_NOT_ALLOWED
            message = f"{request.method} is not allowed on {request.url.path}"
        elif error.status_code == 404:
            status, code = ROUTE_NOT_FOUND
            message = f"no route {request.url.path}"
        else:
            status, code = error.status_code, grpc.StatusCode.UNKNOWN
            message = error.detail
        return _error(status, code, message, scope=request.scope, headers=dict(error.headers or {}))

    async def internal_error(request: Request, error: Exception) -> Response:
        log.error("unhandled error", exc_info=error)
        return _error(500, grpc.StatusCode.INTERNAL, "internal error in the gateway", scope=request.scope)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await gateway.open()
        try:
            yield
        finally:
            await gateway.close()
            if traces is not None:
                # The spans still batched go out before the process exits (off the loop: it blocks).
                await asyncio.to_thread(traces.shutdown)

    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error, Exception: internal_error}
    )
    app.router.redirect_slashes = False  # an API answers, it does not redirect
    app.add_middleware(HeaderSizeLimit)
    app.add_middleware(
        TraceAndLog, tracer=tracer_of(traces)
    )  # outermost: every answer, a 431 included, has its trace id and log line
    app.state.gateway = gateway
    return app
