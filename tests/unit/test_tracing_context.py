"""W3C trace context as the services and the gateway read and pass it (common.tracing), with tracing off."""

from __future__ import annotations

import re

import pytest

from common.config import ENVIRONMENT_VARIABLES, Settings
from common.dynamodb.client import _span_attributes
from common.tracing import RpcTrace, parse_traceparent, start_trace, tracer_provider

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
OUTGOING = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (f"00-{TRACE_ID}-{SPAN_ID}-01", (TRACE_ID, SPAN_ID, "01")),
        (f"00-{TRACE_ID}-{SPAN_ID}-00", (TRACE_ID, SPAN_ID, "00")),
        # A later version may add fields; version 00 may not.
        (f"01-{TRACE_ID}-{SPAN_ID}-01-more", (TRACE_ID, SPAN_ID, "01")),
        (f"00-{TRACE_ID}-{SPAN_ID}-01-more", None),
        (f"ff-{TRACE_ID}-{SPAN_ID}-01", None),
        (f"00-{'0' * 32}-{SPAN_ID}-01", None),
        (f"00-{TRACE_ID}-{'0' * 16}-01", None),
        (f"00-{TRACE_ID.upper()}-{SPAN_ID}-01", None),
        (f"00-{TRACE_ID[:-1]}-{SPAN_ID}-01", None),
        ("", None),
    ],
)
def test_parse_traceparent(value: str, parsed: tuple[str, str, str] | None) -> None:
    assert parse_traceparent(value) == parsed


def test_a_callers_trace_is_kept() -> None:
    headers = [("authorization", "x"), ("traceparent", f"00-{TRACE_ID}-{SPAN_ID}-01"), ("tracestate", "a=1,b=2")]
    trace = start_trace(None, headers, "rewards.v1.XpService/AwardXp", {})
    assert (trace.trace_id, trace.flags, trace.tracestate, trace.tracer, trace.span) == (
        TRACE_ID,
        "01",
        "a=1,b=2",
        None,
        None,
    )
    assert trace.start_child("DynamoDB.GetItem", {}) is None
    metadata = dict(trace.outgoing(None))
    assert metadata["tracestate"] == "a=1,b=2"
    parsed = OUTGOING.fullmatch(metadata["traceparent"])
    assert parsed is not None and parsed.group(1) == TRACE_ID and parsed.group(3) == "01"
    # A span id of its own (the caller's is this RPC's parent, not its calls').
    assert parsed.group(2) != SPAN_ID


def test_without_a_valid_traceparent_a_new_trace_starts() -> None:
    ids = set()
    for headers in ([], [("traceparent", "junk"), ("tracestate", "a=1")], [("x-trace-id", "old")]):
        trace = start_trace(None, headers, "m", {})
        assert re.fullmatch("[0-9a-f]{32}", trace.trace_id) and trace.trace_id != "0" * 32
        # Nothing recorded it; a tracestate without its traceparent means nothing.
        assert (trace.flags, trace.tracestate) == ("00", "")
        ids.add(trace.trace_id)
    assert len(ids) == 3


def test_outgoing_span_ids_differ_call_to_call() -> None:
    trace = RpcTrace(TRACE_ID)
    assert trace.outgoing(None) != trace.outgoing(None)


def test_the_collector_is_the_standard_variable() -> None:
    assert ENVIRONMENT_VARIABLES["otel_exporter_otlp_endpoint"] == "OTEL_EXPORTER_OTLP_ENDPOINT"
    settings = Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert settings.otel_exporter_otlp_endpoint == "http://collector:4317"
    assert tracer_provider(Settings.from_env({}), "xp") is None  # off: no provider, no exporter


def test_tracing_on_names_the_service() -> None:
    provider = tracer_provider(Settings(otel_exporter_otlp_endpoint="http://127.0.0.1:9"), "levels")
    assert provider is not None
    try:
        assert provider.resource.attributes["service.name"] == "rewards-levels"
    finally:
        provider.shutdown()


def test_dynamodb_span_attributes_name_every_table() -> None:
    transaction = {
        "TransactItems": [
            {"Put": {"TableName": "p-ledger", "Item": {}}},
            {"Update": {"TableName": "p-user_progress", "Key": {}}},
            {"ConditionCheck": {"TableName": "p-ledger", "Key": {}}},
        ]
    }
    assert _span_attributes("TransactWriteItems", transaction) == {
        "rpc.system": "aws-api",
        "rpc.service": "DynamoDB",
        "rpc.method": "TransactWriteItems",
        "db.system": "dynamodb",
        "db.system.name": "aws.dynamodb",
        "db.operation.name": "TransactWriteItems",
        "aws.dynamodb.table_names": ["p-ledger", "p-user_progress"],
    }
    batch = {"RequestItems": {"p-a": {}, "p-b": {}}}
    assert _span_attributes("BatchGetItem", batch)["aws.dynamodb.table_names"] == ["p-a", "p-b"]
    assert _span_attributes("GetItem", {"TableName": "p-a"})["aws.dynamodb.table_names"] == ["p-a"]


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("a=1,b=2", "a=1,b=2"),
        (" a=1 ,, vendor@tenant=x y ", "a=1,vendor@tenant=x y"),
        ("a=1,B C=2", ""),  # an invalid member: none kept
        ("a=1,a=2", ""),  # a repeated key
        ("a=", ""),
        (",".join(f"k{i}=v" for i in range(33)), ""),  # more than 32 members
    ],
)
def test_a_tracestate_is_passed_on_only_when_valid(value: str, kept: str) -> None:
    headers = [("traceparent", f"00-{TRACE_ID}-{SPAN_ID}-01"), ("tracestate", value)]
    assert start_trace(None, headers, "m", {}).tracestate == kept
