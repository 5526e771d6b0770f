"""Traces: W3C trace context (`traceparent`, `tracestate`) across the
services and the gateway, and OpenTelemetry spans when a collector is set.

Every served RPC (and gateway request) has an RpcTrace: the caller's trace
when its `traceparent` is valid, a new one otherwise. Its trace id (32 hex)
goes on the RPC's log lines and back to the caller (TRACE_ID_KEY), and its
calls to peers carry a `traceparent` of the same trace.

Spans are made only with a tracer, that is when OTEL_EXPORTER_OTLP_ENDPOINT
is set (tracer_provider): one SERVER span a served RPC, one CLIENT span a
call to a peer and a DynamoDB call, each a child of the served RPC's span.
Without it nothing of the SDK is imported or called: a trace costs a regex
match, or 128 random bits.

Why not opentelemetry-instrumentation-grpc and -aiohttp-client: the edge
interceptor already is the one place that knows each RPC's final code (it
parses the request and ends every failure with an abort, which sends the
status at once, so the span must end before it); the instrumentation's
server interceptor would be a second wrapper, seeing aborts as exceptions,
and both it and the aiohttp one cost their wrapping on every call even with
no exporter. DynamoDB calls are the lean client's own (aiohttp, signed by
hand): an HTTP span per attempt would say POST to an endpoint, where the
AWS SDK conventions want the action and its tables, retries inside one span.
botocore's instrumentation would only trace table management and tooling."""

from __future__ import annotations

import contextvars
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from common.config import Settings

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# The answer's metadata (gRPC initial metadata of a success, trailers of an error) and the
# gateway's response header that give the caller the trace id its log lines carry.
TRACE_ID_KEY = "trace-id"
TRACER_NAME = "rewards"

# version-traceid-parentid-flags (W3C Trace Context); a later version may add fields after a "-".
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_INVALID_TRACE_ID = "0" * 32
_INVALID_SPAN_ID = "0" * 16
# The longest tracestate read (32 members of a key and a value, with "=" and commas).
_MAX_TRACESTATE = 32 * 514
_MAX_TRACESTATE_MEMBERS = 32
# A tracestate list member (W3C grammar, as the SDK checks it): a key, "=", a value.
_TRACESTATE_MEMBER = re.compile(
    r"([a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)
# No caller's trace and no sampler: nothing recorded it (a peer with tracing on follows that decision).
_NOT_SAMPLED = "00"


def parse_traceparent(value: str) -> tuple[str, str, str] | None:
    """(trace id, parent span id, flags) of a valid `traceparent`, else None."""
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _INVALID_TRACE_ID or span_id == _INVALID_SPAN_ID:
        return None
    return trace_id, span_id, flags


def valid_tracestate(value: str) -> str:
    """`value` as a tracestate to pass on (empty members left out), or "" when any member is
    invalid or repeated: then none is kept (W3C), and the SDK is never handed one to warn of."""
    members = [member.strip(" \t") for member in value.split(",")]
    members = [member for member in members if member]
    if len(members) > _MAX_TRACESTATE_MEMBERS:
        return ""
    keys = set()
    for member in members:
        match = _TRACESTATE_MEMBER.fullmatch(member)
        if match is None or match.group(1) in keys:
            return ""
        keys.add(match.group(1))
    return ",".join(members)


def new_trace_id() -> str:
    return f"{random.getrandbits(128) or 1:032x}"


@dataclass(slots=True)
class RpcTrace:
    """The trace of the RPC being served: its trace id, flags and tracestate,
    and, when tracing is on, the tracer and the RPC's own span."""

    trace_id: str
    flags: str = _NOT_SAMPLED
    tracestate: str = ""
    tracer: Tracer | None = None
    span: Span | None = None

    def start_child(self, name: str, attributes: Mapping[str, Any]) -> Span | None:
        """A CLIENT span under the RPC's span (a peer call, a DynamoDB call); None when tracing is off."""
        if self.tracer is None or self.span is None:
            return None
        from opentelemetry.trace import SpanKind, set_span_in_context

        return self.tracer.start_span(
            name, context=set_span_in_context(self.span), kind=SpanKind.CLIENT, attributes=attributes
        )

    def outgoing(self, span: Span | None) -> list[tuple[str, str]]:
        """The metadata of a call made for this RPC: `span` (the call's own) as its parent,
        or with tracing off a new span id in the same trace."""
        if span is not None:
            context = span.get_span_context()
            parent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
        else:
            parent = f"00-{self.trace_id}-{random.getrandbits(64) or 1:016x}-{self.flags}"
        if self.tracestate:
            return [(TRACEPARENT, parent), (TRACESTATE, self.tracestate)]
        return [(TRACEPARENT, parent)]


def start_trace(
    tracer: Tracer | None,
    headers: Iterable[tuple[Any, Any]],
    name: str,
    attributes: Mapping[str, Any],
) -> RpcTrace:
    """The trace of a request whose metadata (or HTTP headers, decoded) are `headers`: the
    caller's when it sent a valid `traceparent`, a new one otherwise; with `tracer`, its
    SERVER span started."""
    traceparent = tracestate = ""
    for key, value in headers:
        if key == TRACEPARENT and isinstance(value, str):
            traceparent = value.strip()
        elif key == TRACESTATE and isinstance(value, str) and len(value) <= _MAX_TRACESTATE:
            tracestate = value
    parent = parse_traceparent(traceparent) if traceparent else None
    # Meaningless without its traceparent (W3C).
    tracestate = valid_tracestate(tracestate) if parent is not None and tracestate else ""
    if tracer is None:
        if parent is None:
            return RpcTrace(new_trace_id())
        return RpcTrace(parent[0], parent[2], tracestate)
    return _traced(tracer, parent, tracestate, name, attributes)


def _traced(
    tracer: Tracer, parent: tuple[str, str, str] | None, tracestate: str, name: str, attributes: Mapping[str, Any]
) -> RpcTrace:
    from opentelemetry.context import Context
    from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState
    from opentelemetry.trace import set_span_in_context as in_context

    context = Context()  # a new trace, whatever the process's current context
    if parent is not None:
        trace_id, span_id, flags = parent
        remote = SpanContext(
            int(trace_id, 16),
            int(span_id, 16),
            is_remote=True,
            trace_flags=TraceFlags(int(flags, 16) & TraceFlags.SAMPLED),
            trace_state=TraceState.from_header([tracestate]) if tracestate else None,
        )
        context = in_context(NonRecordingSpan(remote), context)
    span = tracer.start_span(name, context=context, kind=SpanKind.SERVER, attributes=attributes)
    own = span.get_span_context()
    return RpcTrace(f"{own.trace_id:032x}", f"{own.trace_flags:02x}", tracestate, tracer, span)


def end_span(span: Span | None, error: str = "") -> None:
    """Ends a span; `error` (a description) marks it failed."""
    if span is None:
        return
    if error:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, error))
    span.end()


_current: contextvars.ContextVar[RpcTrace | None] = contextvars.ContextVar("rpc_trace", default=None)


def bind_trace(trace: RpcTrace) -> contextvars.Token[RpcTrace | None]:
    """Makes `trace` the one of the RPC being served, for its log lines, peer calls and DynamoDB calls."""
    return _current.set(trace)


def unbind_trace(token: contextvars.Token[RpcTrace | None]) -> None:
    _current.reset(token)


def current_trace() -> RpcTrace | None:
    return _current.get()


def tracer_provider(settings: Settings, service: str) -> TracerProvider | None:
    """The process's tracer provider when settings.otel_exporter_otlp_endpoint is set (spans
    batched to that OTLP/gRPC collector, as service `rewards-<service>`); None otherwise."""
    if not settings.otel_exporter_otlp_endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # The standard OTEL_* variables (OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, OTEL_BSP_*,
    # OTEL_EXPORTER_OTLP_HEADERS ...) still apply; the service name is ours.
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: f"rewards-{service}"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otel_exporter_otlp_endpoint)))
    return provider


def tracer_of(provider: TracerProvider | None) -> Tracer | None:
    return None if provider is None else provider.get_tracer(TRACER_NAME)
