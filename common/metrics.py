"""Prometheus metrics, defined once for every service (prometheus-client), and
served over HTTP on each service's side port."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Histogram, start_http_server

RPCS = Counter("rewards_rpc_requests_total", "RPCs served, by method and status code.", ["method", "code"])
RPC_SECONDS = Histogram(
    "rewards_rpc_duration_seconds",
    "Time to serve an RPC.",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DYNAMODB_SECONDS = Histogram(
    "rewards_dynamodb_call_duration_seconds",
    "Time of one DynamoDB API call, SDK retries included.",
    ["operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DYNAMODB_ERRORS = Counter(
    "rewards_dynamodb_errors_total", "DynamoDB calls that failed, by operation and error code.", ["operation", "code"]
)
XP_AWARDED = Counter("rewards_xp_awarded_total", "XP added to users' totals (duplicates excluded).", ["kind"])
LEVEL_UPS = Counter("rewards_level_ups_total", "Levels granted to users, each counted once.")
UNLOCKS = Counter("rewards_achievements_unlocked_total", "Achievements unlocked, each counted once.")


def serve_metrics(port: int) -> None:
    """Starts the /metrics HTTP endpoint in a daemon thread; port 0 leaves it off."""
    if port:
        start_http_server(port)


def instrument_dynamodb_client(client: Any) -> None:
    """Times every call of the client and counts its errors, through botocore's events."""

    def started(context: dict[str, Any], **_: Any) -> None:
        context["rewards_started"] = time.perf_counter()

    def finished(model: Any, context: dict[str, Any], http_response: Any, parsed: dict[str, Any], **_: Any) -> None:
        _observe(model.name, context)
        if http_response.status_code >= 300:
            DYNAMODB_ERRORS.labels(
                model.name, parsed.get("Error", {}).get("Code", str(http_response.status_code))
            ).inc()

    def failed(context: dict[str, Any], exception: Exception, **_: Any) -> None:
        operation = context.get("rewards_operation", "unknown")
        _observe(operation, context)
        DYNAMODB_ERRORS.labels(operation, exception.__class__.__name__).inc()

    def named(model: Any, context: dict[str, Any], **_: Any) -> None:
        context["rewards_operation"] = model.name

    events = client.meta.events
    events.register_first("before-call.dynamodb", started)
    events.register_first("before-call.dynamodb", named)
    events.register("after-call.dynamodb", finished)
    events.register("after-call-error.dynamodb", failed)


def _observe(operation: str, context: dict[str, Any]) -> None:
    started = context.pop("rewards_started", None)
    if started is not None:
        DYNAMODB_SECONDS.labels(operation).observe(time.perf_counter() - started)
