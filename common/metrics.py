"""Prometheus metrics, defined once for every service (prometheus-client), and
served over HTTP on each service's side port."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RPCS = Counter("rewards_rpc_requests_total", "RPCs served, by method and status code.", ["method", "code"])
RPC_SECONDS = Histogram(
    "rewards_rpc_duration_seconds",
    "Time to serve an RPC.",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DYNAMODB_SECONDS = Histogram(
    "rewards_dynamodb_call_duration_seconds",
    "Time of one DynamoDB API call, retries included.",
    ["operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DYNAMODB_CALLS = Counter(
    "rewards_dynamodb_calls_total",
    "DynamoDB calls, retries included, by operation and outcome: ok, condition_failed (a condition the "
    "request set was false: a duplicate, a lost race; an answer, not a failure), error, deadline_exceeded "
    "(the caller's deadline ended it).",
    ["operation", "outcome"],
)
DYNAMODB_ERRORS = Counter(
    "rewards_dynamodb_errors_total",
    "DynamoDB attempts that failed (throttling, 5xx, no connection or answer, bad requests), by operation and "
    "error code; a cancelled transaction counts under its failure reason (TransactionConflict, ThrottlingError). "
    "Failed conditions are not counted here.",
    ["operation", "code"],
)
DYNAMODB_REACHABLE = Gauge(
    "rewards_dynamodb_reachable",
    "1 while this process reaches DynamoDB (its service's health entry SERVING), 0 while it does not.",
)
DYNAMODB_HEALTH_PROBES = Counter(
    "rewards_dynamodb_health_probes_total",
    "GetItem probes of DynamoDB sent by the health monitor (only when no call of the process got an answer "
    "within the interval), by outcome: answered or unanswered.",
    ["outcome"],
)
XP_AWARDED = Counter("rewards_xp_awarded_total", "XP added to users' totals (duplicates excluded).", ["kind"])
XP_TAKEN = Counter(
    "rewards_xp_taken_total", "XP taken from users' totals by adjustments and revokes (duplicates excluded).", ["kind"]
)
LEVEL_UPS = Counter("rewards_level_ups_total", "Levels granted to users, each counted once.")
UNLOCKS = Counter("rewards_achievements_unlocked_total", "Achievements unlocked, each counted once.")


def serve_metrics(port: int) -> None:
    """Starts the /metrics HTTP endpoint in a daemon thread; port 0 leaves it off."""
    if port:
        start_http_server(port)
