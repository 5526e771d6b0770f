"""OpenTelemetry traces on real servers (XP, Achievements, Levels in the test
process, on real sockets, against DynamoDB Local): the SDK's in-memory
exporter is the servers' collector. One award that levels a user up is one
trace across XP and Levels, joined to the caller's W3C traceparent."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import trace as trace_api
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp_trace_pb2
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from bench.otlp_sink import OtlpSink
from common.caller_auth import Role
from rewards.v1 import events_pb2, xp_pb2
from tests.cluster import STANDARD_LEVELS, Cluster, mint_test_token, unique
from tests.conftest import LogLines
from tests.gateway_server import http_call
from tests.process_cluster import start_process_cluster

AWARD = "rewards.v1.XpService/AwardXp"
CHECK_LEVEL_UP = "rewards.v1.LevelsService/CheckLevelUp"
CALLER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced_cluster(new_cluster: Callable[..., Cluster], exporter: InMemorySpanExporter) -> Cluster:
    """Servers with tracing on, their spans kept in `exporter`; a level up at 100 XP."""
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: "rewards-tests"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    c = new_cluster(tracer=provider.get_tracer("rewards"))
    c.put_levels(STANDARD_LEVELS)
    c.xp.PutActivity(xp_pb2.PutActivityRequest(activity=xp_pb2.Activity(activity_id="win", name="Win", xp=150)))
    return c


def award(c: Cluster, user_id: str, metadata: tuple[tuple[str, str], ...] = ()) -> tuple[Any, grpc.Call]:
    request = xp_pb2.AwardXpRequest(user_id=user_id, activity_id="win", request_id="r1")
    answer, call = c.xp.AwardXp.with_call(request, metadata=metadata, timeout=10)
    assert (
        answer.level == 2
        and answer.level_up.leveled_up
        and answer.level_up.current_level == 2
        and not answer.level_check_deferred
    )
    return answer, call


def hex_id(value: int, digits: int) -> str:
    return f"{value:0{digits}x}"


def spans_of(exporter: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    spans = exporter.get_finished_spans()
    return [s for s in spans if s.context is not None and hex_id(s.context.trace_id, 32) == trace_id]


def one(spans: list[ReadableSpan], name: str, kind: SpanKind) -> ReadableSpan:
    (found,) = [s for s in spans if s.name == name and s.kind == kind]
    return found


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def test_one_trace_spans_xp_and_levels(
    traced_cluster: Cluster, exporter: InMemorySpanExporter, json_log_lines: LogLines
) -> None:
    c = traced_cluster
    user_id = unique("traced")
    exporter.clear()
    traceparent = f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"
    _, call = award(c, user_id, (("traceparent", traceparent), ("tracestate", "vendor=abc")))
    assert ("trace-id", CALLER_TRACE_ID) in call.initial_metadata()

    spans = spans_of(exporter, CALLER_TRACE_ID)
    xp_server = one(spans, AWARD, SpanKind.SERVER)
    xp_to_levels = one(spans, CHECK_LEVEL_UP, SpanKind.CLIENT)
    levels_server = one(spans, CHECK_LEVEL_UP, SpanKind.SERVER)
    # The caller's span is the parent of XP's, remote; each call's span the parent of the callee's.
    assert xp_server.parent is not None and xp_server.parent.is_remote
    assert hex_id(xp_server.parent.span_id, 16) == CALLER_SPAN_ID
    assert parent_of(xp_to_levels) == span_id(xp_server)
    assert parent_of(levels_server) == span_id(xp_to_levels)
    assert levels_server.parent is not None and levels_server.parent.is_remote
    # The caller's tracestate went along to Levels.
    assert levels_server.context is not None and levels_server.context.trace_state.get("vendor") == "abc"
    assert dict(xp_server.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "rewards.v1.XpService",
        "rpc.method": "AwardXp",
        "rpc.grpc.status_code": 0,
    }
    assert levels_server.attributes is not None and levels_server.attributes["rpc.grpc.status_code"] == 0

    # DynamoDB calls: under the RPC that made them, in both services.
    dynamodb = [s for s in spans if s.name.startswith("DynamoDB.")]
    assert {s.kind for s in dynamodb} == {SpanKind.CLIENT}
    under_xp = [s for s in dynamodb if parent_of(s) == span_id(xp_server)]
    under_levels = [s for s in dynamodb if parent_of(s) == span_id(levels_server)]
    assert under_xp and under_levels and len(under_xp) + len(under_levels) == len(dynamodb)
    for s in dynamodb:
        attributes = dict(s.attributes or {})
        assert (attributes["rpc.system"], attributes["db.system"], attributes["rpc.service"]) == (
            "aws-api",
            "dynamodb",
            "DynamoDB",
        )
        assert s.name == f"DynamoDB.{attributes['rpc.method']}"
        tables = attributes["aws.dynamodb.table_names"]
        assert tables and all(str(t).startswith(c.settings.table_prefix) for t in tables), attributes
    assert c.table("user_progress") in {t for s in under_xp for t in s.attributes["aws.dynamodb.table_names"]}  # type: ignore[index]
    # Every span of the call is one of these: nothing else joined the trace.
    assert len(spans) == 3 + len(dynamodb)

    # The log lines of both RPCs carry the trace id.
    rpc_lines = [line for line in json_log_lines() if line.get("message") == "rpc"]
    by_method = {line["method"]: line["trace_id"] for line in rpc_lines if line.get("user_id") == user_id}
    assert by_method == {f"/{AWARD}": CALLER_TRACE_ID, f"/{CHECK_LEVEL_UP}": CALLER_TRACE_ID}


def test_a_call_without_traceparent_starts_a_trace(traced_cluster: Cluster, exporter: InMemorySpanExporter) -> None:
    c = traced_cluster
    exporter.clear()
    _, call = award(c, unique("untraced"))
    trace_id = dict(call.initial_metadata())["trace-id"]
    assert re.fullmatch("[0-9a-f]{32}", trace_id) and trace_id != CALLER_TRACE_ID
    spans = spans_of(exporter, trace_id)
    xp_server = one(spans, AWARD, SpanKind.SERVER)
    assert xp_server.parent is None  # a root
    assert parent_of(one(spans, CHECK_LEVEL_UP, SpanKind.SERVER)) == span_id(
        one(spans, CHECK_LEVEL_UP, SpanKind.CLIENT)
    )
    # A second call, a second trace.
    _, again = award(c, unique("untraced"))
    assert dict(again.initial_metadata())["trace-id"] != trace_id


def test_an_invalid_traceparent_is_ignored(traced_cluster: Cluster, exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    for invalid in (f"00-{'0' * 32}-{CALLER_SPAN_ID}-01", f"00-{CALLER_TRACE_ID.upper()}-{CALLER_SPAN_ID}-01", "junk"):
        _, call = award(traced_cluster, unique("invalid"), (("traceparent", invalid),))
        trace_id = dict(call.initial_metadata())["trace-id"]
        assert trace_id != CALLER_TRACE_ID.lower()
        assert one(spans_of(exporter, trace_id), AWARD, SpanKind.SERVER).parent is None


def test_an_error_ends_its_span_with_its_code(traced_cluster: Cluster, exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    with pytest.raises(grpc.RpcError) as caught:
        traced_cluster.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=""), timeout=10)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    trace_id = dict(error.trailing_metadata())["trace-id"]
    span = one(spans_of(exporter, trace_id), "rewards.v1.XpService/GetProgress", SpanKind.SERVER)
    assert span.attributes is not None and span.attributes["rpc.grpc.status_code"] == 3
    # The caller's mistake, not the server's: no error status (OpenTelemetry's gRPC conventions).
    assert span.status.is_unset


@pytest.fixture(scope="module")
def global_exporter() -> InMemorySpanExporter:
    """An exporter behind the process's global tracer provider (OpenTelemetry's default,
    which a library or instrumentation would use): tracing off must not reach it either."""
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace_api.set_tracer_provider(provider)
    assert trace_api.get_tracer_provider() is provider, "another test set the global tracer provider"
    return exporter


def test_tracing_off_makes_no_spans_and_still_passes_the_trace(
    new_cluster: Callable[..., Cluster], global_exporter: InMemorySpanExporter, json_log_lines: LogLines
) -> None:
    c = new_cluster()  # no tracer: tracing off, as without OTEL_EXPORTER_OTLP_ENDPOINT
    c.put_levels(STANDARD_LEVELS)
    c.xp.PutActivity(xp_pb2.PutActivityRequest(activity=xp_pb2.Activity(activity_id="win", name="Win", xp=150)))
    user_id = unique("off")
    global_exporter.clear()
    _, call = award(c, user_id, (("traceparent", f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"),))
    assert dict(call.initial_metadata())["trace-id"] == CALLER_TRACE_ID
    assert global_exporter.get_finished_spans() == ()
    rpc_lines = [line for line in json_log_lines() if line.get("message") == "rpc" and line.get("user_id") == user_id]
    assert {line["method"]: line["trace_id"] for line in rpc_lines} == {
        f"/{AWARD}": CALLER_TRACE_ID,
        f"/{CHECK_LEVEL_UP}": CALLER_TRACE_ID,
    }


def test_the_processes_export_one_trace_over_otlp(dynamodb_endpoint: str, tmp_path: Path) -> None:
    """`python -m` gateway, XP, Levels ... with OTEL_EXPORTER_OTLP_ENDPOINT: their spans reach the
    collector (OTLP/gRPC), named by service, one trace from the web client's traceparent on;
    those still batched at SIGTERM go out before the processes exit."""
    sink = OtlpSink(keep=True)
    cluster = start_process_cluster(
        dynamodb_endpoint,
        tmp_path,
        metrics=False,
        gateway=True,
        extra_env={"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint},
    )
    try:
        answer = http_call(
            cluster.gateway_url,
            "POST",
            "/xp/grant",
            {"user_id": unique("otlp"), "amount": 5, "reason": "traced", "request_id": "g1"},
            token=mint_test_token(Role.ADMIN),
            headers={"traceparent": f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"},
        )
        assert answer.status == 200, answer.body
        assert answer.headers["trace-id"] == CALLER_TRACE_ID
        # Gracefully, the gateway first (as `make down`): each sends what it still holds.
        for name in sorted(cluster.processes, key=lambda name: name != "gateway"):
            cluster.processes[name].send_signal(signal.SIGTERM)
            assert cluster.processes[name].wait(timeout=30) == 0
    finally:
        cluster.stop()
        sink.stop()
    spans = {
        (service, span.name, span.kind): span
        for service, span in sink.spans
        if span.trace_id.hex() == CALLER_TRACE_ID and not span.name.startswith("DynamoDB.")
    }
    server, client = otlp_trace_pb2.Span.SPAN_KIND_SERVER, otlp_trace_pb2.Span.SPAN_KIND_CLIENT
    grant, check = "rewards.v1.XpService/GrantXp", CHECK_LEVEL_UP
    assert set(spans) == {
        ("rewards-gateway", "POST /xp/grant", server),
        ("rewards-gateway", grant, client),
        ("rewards-xp", grant, server),
        ("rewards-xp", check, client),
        ("rewards-levels", check, server),
    }
    chain = [
        spans["rewards-gateway", "POST /xp/grant", server],
        spans["rewards-gateway", grant, client],
        spans["rewards-xp", grant, server],
        spans["rewards-xp", check, client],
        spans["rewards-levels", check, server],
    ]
    assert chain[0].parent_span_id.hex() == CALLER_SPAN_ID
    assert [child.parent_span_id for child in chain[1:]] == [parent.span_id for parent in chain[:-1]]
    dynamodb = [
        (service, span) for service, span in sink.spans if span.trace_id.hex() == CALLER_TRACE_ID and span not in chain
    ]
    assert {service for service, _ in dynamodb} == {"rewards-xp", "rewards-levels"}


def test_the_events_service_traces_its_rpcs(
    new_cluster: Callable[..., Cluster], exporter: InMemorySpanExporter
) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    c = new_cluster(tracer=provider.get_tracer("rewards"), events=True)
    exporter.clear()
    _, call = c.events.ListWebhooks.with_call(
        events_pb2.ListWebhooksRequest(), metadata=(("traceparent", f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"),)
    )
    assert ("trace-id", CALLER_TRACE_ID) in call.initial_metadata()
    spans = spans_of(exporter, CALLER_TRACE_ID)
    listed = one(spans, "rewards.v1.EventsService/ListWebhooks", SpanKind.SERVER)
    assert listed.parent is not None and hex_id(listed.parent.span_id, 16) == CALLER_SPAN_ID
    reads = [s for s in spans if s.name.startswith("DynamoDB.")]
    assert reads and all(parent_of(s) == span_id(listed) for s in reads)
    assert len(spans) == 1 + len(reads)
