"""The alarms every deployment has, defined once: the CloudWatch alarms of each
stage's stack (common/cloudformation/monitoring.py) and the Prometheus rules of
deploy/prometheus/alerts.yml have these names, and tests hold both to this
list. What each means and what to do: docs/deploy.md, #alarm-<name in lowercase>."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Alarm:
    name: str
    severity: str  # page: someone acts now; ticket: within working hours
    meaning: str
    threshold: float = 0


ALARMS: dict[str, Alarm] = {
    alarm.name: alarm
    for alarm in (
        Alarm("RpcUnavailableRate", "page", "over 5% of a service's RPCs answered UNAVAILABLE in 5 minutes", 5),
        Alarm("RpcInternalErrors", "page", "a service answered INTERNAL (a bug) in the last 5 minutes"),
        Alarm("RpcLatencyP99", "ticket", "an RPC's p99 latency stayed above its threshold for 10 minutes", 0.5),
        Alarm("DynamoDBThrottles", "ticket", "DynamoDB throttled calls in the last 5 minutes"),
        Alarm("DynamoDBSystemErrors", "page", "DynamoDB answered with server errors (5xx) in the last 5 minutes"),
        Alarm("UnhealthyTargets", "page", "a task failed its readiness check (or DynamoDB is out of its reach)"),
        Alarm("TasksBelowMinimum", "page", "fewer tasks of a service ran than its minimum for 5 minutes"),
    )
}

# DynamoDB error codes, as the lean client counts them (rewards_dynamodb_errors_total's `code`; a
# cancelled transaction counts under its reason): throttling, and DynamoDB's own server errors.
DYNAMODB_THROTTLING_CODES = (
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "ThrottlingError",
)
DYNAMODB_SYSTEM_ERROR_CODES = ("InternalServerError", "ServiceUnavailable")
