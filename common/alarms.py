"""The alarms every deployment watches, in one place: the Prometheus rules
(deploy/prometheus/alerts.yml) and the CloudWatch alarms carry exactly these
names, and tests compare both against ALARM_NAMES. Each alarm's runbook is the
section `#alarm-<name in lower case>` of docs/deploy.md."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["page", "ticket"]

RUNBOOK = "docs/deploy.md"
# The DynamoDB error codes (rewards_dynamodb_errors_total's `code`, see common/dynamodb/client.py)
# that mean a request was throttled: the API's own codes, and a cancelled transaction's reasons.
THROTTLING_CODES = (
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "ThrottlingError",
    "ProvisionedThroughputExceeded",
)
# DynamoDB's 5xx answers (the client counts any other 5xx as InternalServerError).
SYSTEM_ERROR_CODES = ("InternalServerError", "ServiceUnavailable")
# The streaming RPC whose duration is how long a watch lasted, not a latency.
STREAMING_METHODS = ("/rewards.v1.EventsService/WatchEvents",)
# Each service's fewest running processes locally; a deployment sets its own (docs/prometheus.md).
LOCAL_MINIMUM_TASKS = 1


@dataclass(frozen=True)
class Alarm:
    name: str
    severity: Severity
    meaning: str
    # The bound it fires above, where one number is the rule (a percentage, seconds); 0: any at all.
    threshold: float = 0

    @property
    def runbook_url(self) -> str:
        return f"{RUNBOOK}#alarm-{self.name.lower()}"


ALARMS = (
    Alarm(
        "RpcUnavailableRate",
        "page",
        "Over 5% of a service's RPCs answered UNAVAILABLE over 5 minutes (with traffic), for 5 minutes.",
        threshold=5,
    ),
    Alarm("RpcInternalErrors", "page", "A service answered an RPC with INTERNAL (a bug) in the last 5 minutes."),
    Alarm(
        "RpcLatencyP99",
        "ticket",
        "A method's p99 latency over 5 minutes is above 0.5 s, for 10 minutes (WatchEvents excluded: a watch lasts).",
        threshold=0.5,
    ),
    Alarm("DynamoDBThrottles", "ticket", "A DynamoDB request was throttled in the last 5 minutes."),
    Alarm(
        "DynamoDBSystemErrors",
        "page",
        "DynamoDB answered a 5xx (InternalServerError, ServiceUnavailable) in the last 5 minutes.",
    ),
    Alarm(
        "UnhealthyTargets",
        "page",
        "A service's process is down (its scrape fails) or does not reach DynamoDB, for 2 minutes.",
    ),
    Alarm("TasksBelowMinimum", "page", "Fewer processes of a service run than its minimum, for 5 minutes."),
)
ALARM_NAMES = frozenset(alarm.name for alarm in ALARMS)
ALARMS_BY_NAME = {alarm.name: alarm for alarm in ALARMS}
