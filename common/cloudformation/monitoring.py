"""Alarms and the dashboard of each stage's stack. The services' own metrics
come from the CloudWatch Embedded Metric Format lines they write (namespace:
the stack's name; names and dimensions as common/cloudwatch_metrics.py writes
them, from common/metrics.py); the load balancer's, ECS's (Container Insights)
and DynamoDB's from AWS. Every alarm notifies the AlarmTopicArn topic when it
fires and when it is OK again; each kind's meaning and runbook are in
docs/deploy.md (#alarm-<kind>), and deploy/prometheus/alerts.yml has the same
kinds as Prometheus rules."""

from __future__ import annotations

import json
from typing import Any

from common.alarms import ALARMS_BY_NAME, SYSTEM_ERROR_CODES, THROTTLING_CODES
from common.cloudformation.compute import (
    CLUSTER,
    GATEWAY_NAME,
    LOAD_BALANCER,
    SCALED_ON_REQUESTS,
    SERVICES,
    logical,
)
from rewards.v1 import achievements_pb2, events_pb2, levels_pb2, xp_pb2

_NAMESPACE = "${AWS::StackName}"
# The services' EMF metrics (common/metrics.py's families without `rewards_` and `_total`).
RPC_REQUESTS = "rpc_requests"
RPC_DURATION = "rpc_duration_seconds"
DYNAMODB_ERRORS = "dynamodb_errors"
DYNAMODB_DURATION = "dynamodb_call_duration_seconds"
XP_AWARDED = "xp_awarded"
AWARD_XP = f"/{xp_pb2.DESCRIPTOR.services_by_name['XpService'].full_name}/AwardXp"
PERIOD_S = 300

_PB_MODULES = {"xp": xp_pb2, "achievements": achievements_pb2, "levels": levels_pb2, "events": events_pb2}


def unary_methods(service_name: str) -> list[str]:
    """The full method paths of a service's unary RPCs: a streaming RPC's duration is the stream's length."""
    service = next(s for s in SERVICES if s.name == service_name)
    descriptor = _PB_MODULES[service_name].DESCRIPTOR.services_by_name[service.grpc_service.rsplit(".", 1)[1]]
    return [
        f"/{service.grpc_service}/{method.name}"
        for method in descriptor.methods
        if not (method.server_streaming or method.client_streaming)
    ]


def _emf_metric(name: str, dimensions: dict[str, Any], stat: str, id_: str) -> dict[str, Any]:
    return {
        "Id": id_,
        "ReturnData": False,
        "MetricStat": {
            "Metric": {
                "Namespace": {"Ref": "AWS::StackName"},
                "MetricName": name,
                "Dimensions": [{"Name": key, "Value": value} for key, value in dimensions.items()],
            },
            "Period": PERIOD_S,
            "Stat": stat,
        },
    }


def _alarm(kind: str, subject: str, description: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "Type": "AWS::CloudWatch::Alarm",
        "Properties": {
            "AlarmName": {"Fn::Sub": f"${{AWS::StackName}}-{kind}-{subject}"},
            "AlarmDescription": f"{description} Runbook: {ALARMS_BY_NAME[kind].runbook_url}",
            "ActionsEnabled": True,
            "AlarmActions": [{"Ref": "AlarmTopicArn"}],
            "OKActions": [{"Ref": "AlarmTopicArn"}],
            "TreatMissingData": "notBreaching",
            **properties,
        },
    }


def _sum_of_codes(metric: str, service: str, codes: tuple[str, ...]) -> list[dict[str, Any]]:
    metrics = [_emf_metric(metric, {"Service": service, "code": code}, "Sum", f"m{i}") for i, code in enumerate(codes)]
    total = "+".join(f"FILL(m{i},0)" for i in range(len(codes)))
    return [*metrics, {"Id": "errors", "Expression": total, "Label": f"{metric} {'|'.join(codes)}"}]


def service_alarms(service: str) -> dict[str, Any]:
    """The alarms of one gRPC service's own metrics."""
    name = logical(service, "")
    return {
        f"{name}RpcUnavailableRateAlarm": _alarm(
            "RpcUnavailableRate",
            service,
            f"Over {ALARMS_BY_NAME['RpcUnavailableRate'].threshold:g}% of the {service} service's RPCs answered "
            "UNAVAILABLE in 5 minutes (at least 20 RPCs).",
            {
                "Metrics": [
                    _emf_metric(RPC_REQUESTS, {"Service": service, "code": "UNAVAILABLE"}, "Sum", "unavailable"),
                    _emf_metric(RPC_REQUESTS, {"Service": service}, "Sum", "total"),
                    {
                        "Id": "rate",
                        "Expression": "IF(FILL(total,0) >= 20, 100 * FILL(unavailable,0) / total, 0)",
                        "Label": "UNAVAILABLE %",
                    },
                ],
                "ComparisonOperator": "GreaterThanThreshold",
                "Threshold": ALARMS_BY_NAME["RpcUnavailableRate"].threshold,
                "EvaluationPeriods": 1,
                "DatapointsToAlarm": 1,
            },
        ),
        f"{name}RpcInternalErrorsAlarm": _alarm(
            "RpcInternalErrors",
            service,
            f"The {service} service answered INTERNAL (a bug) in the last 5 minutes.",
            {
                "Namespace": {"Ref": "AWS::StackName"},
                "MetricName": RPC_REQUESTS,
                "Dimensions": [{"Name": "Service", "Value": service}, {"Name": "code", "Value": "INTERNAL"}],
                "Statistic": "Sum",
                "Period": PERIOD_S,
                "EvaluationPeriods": 1,
                "ComparisonOperator": "GreaterThanThreshold",
                "Threshold": 0,
            },
        ),
        f"{name}DynamoDBThrottlesAlarm": _alarm(
            "DynamoDBThrottles",
            service,
            f"DynamoDB throttled the {service} service's calls in the last 5 minutes.",
            {
                "Metrics": _sum_of_codes(DYNAMODB_ERRORS, service, THROTTLING_CODES),
                "ComparisonOperator": "GreaterThanThreshold",
                "Threshold": 0,
                "EvaluationPeriods": 1,
                "DatapointsToAlarm": 1,
            },
        ),
        f"{name}DynamoDBSystemErrorsAlarm": _alarm(
            "DynamoDBSystemErrors",
            service,
            f"DynamoDB answered the {service} service with a server error (5xx) in the last 5 minutes.",
            {
                "Metrics": _sum_of_codes(DYNAMODB_ERRORS, service, SYSTEM_ERROR_CODES),
                "ComparisonOperator": "GreaterThanThreshold",
                "Threshold": 0,
                "EvaluationPeriods": 1,
                "DatapointsToAlarm": 1,
            },
        ),
    }


def latency_alarm(service: str, method: str) -> dict[str, Any]:
    short = method.rsplit("/", 1)[1]
    return _alarm(
        "RpcLatencyP99",
        f"{service}-{short}",
        f"The p99 latency of {method} stayed above LatencyP99ThresholdSeconds for 10 minutes.",
        {
            "Namespace": {"Ref": "AWS::StackName"},
            "MetricName": RPC_DURATION,
            "Dimensions": [{"Name": "Service", "Value": service}, {"Name": "method", "Value": method}],
            "ExtendedStatistic": "p99",
            "Unit": "Seconds",
            "Period": PERIOD_S,
            "EvaluationPeriods": 2,
            "DatapointsToAlarm": 2,
            "ComparisonOperator": "GreaterThanThreshold",
            "Threshold": {"Ref": "LatencyP99ThresholdSeconds"},
        },
    )


def target_alarms(name: str) -> dict[str, Any]:
    """The load balancer's and ECS's view of one service (the gateway included)."""
    minimum: Any = {"Ref": "MinTasks"} if name in SCALED_ON_REQUESTS else 1
    return {
        logical(name, "UnhealthyTargetsAlarm"): _alarm(
            "UnhealthyTargets",
            name,
            f"The load balancer found a {name} task unhealthy (its readiness check failed) for 2 minutes.",
            {
                "Namespace": "AWS/ApplicationELB",
                "MetricName": "UnHealthyHostCount",
                "Dimensions": [
                    {
                        "Name": "TargetGroup",
                        "Value": {"Fn::GetAtt": [logical(name, "TargetGroup"), "TargetGroupFullName"]},
                    },
                    {"Name": "LoadBalancer", "Value": {"Fn::GetAtt": [LOAD_BALANCER, "LoadBalancerFullName"]}},
                ],
                "Statistic": "Maximum",
                "Period": 60,
                "EvaluationPeriods": 2,
                "DatapointsToAlarm": 2,
                "ComparisonOperator": "GreaterThanThreshold",
                "Threshold": 0,
            },
        ),
        logical(name, "TasksBelowMinimumAlarm"): _alarm(
            "TasksBelowMinimum",
            name,
            f"Fewer {name} tasks ran than the service's minimum for 5 minutes.",
            {
                "Namespace": "ECS/ContainerInsights",
                "MetricName": "RunningTaskCount",
                "Dimensions": [
                    {"Name": "ClusterName", "Value": {"Ref": CLUSTER}},
                    {"Name": "ServiceName", "Value": {"Fn::GetAtt": [logical(name, "Service"), "Name"]}},
                ],
                "Statistic": "Minimum",
                "Period": 60,
                "EvaluationPeriods": 5,
                "DatapointsToAlarm": 5,
                "ComparisonOperator": "LessThanThreshold",
                "Threshold": minimum,
                # No data: Container Insights reports nothing for a service with no task at all.
                "TreatMissingData": "breaching",
            },
        ),
    }


def alarm_resources() -> dict[str, Any]:
    resources: dict[str, Any] = {}
    for service in SERVICES:
        resources.update(service_alarms(service.name))
        for method in unary_methods(service.name):
            short = method.rsplit("/", 1)[1]
            resources[logical(service.name, f"{short}LatencyAlarm")] = latency_alarm(service.name, method)
    for name in [*(service.name for service in SERVICES), GATEWAY_NAME]:
        resources.update(target_alarms(name))
    return resources


def _widget(title: str, metrics: list[Any], x: int, y: int, stat: str = "Sum", width: int = 12) -> dict[str, Any]:
    return {
        "type": "metric",
        "x": x,
        "y": y,
        "width": width,
        "height": 6,
        "properties": {
            "title": title,
            "view": "timeSeries",
            "region": "${AWS::Region}",
            "stat": stat,
            "period": 60,
            "metrics": metrics,
        },
    }


def dashboard_body(alarm_logical_ids: list[str]) -> str:
    """The dashboard's JSON, with ${...} left for Fn::Sub (region, stack, load balancer, target groups, alarms)."""
    names = [*(service.name for service in SERVICES), GATEWAY_NAME]
    widgets = [
        _widget(
            "Awards per second (AwardXp answered OK) and XP awarded per second",
            [
                [
                    _NAMESPACE,
                    RPC_REQUESTS,
                    "Service",
                    "xp",
                    "method",
                    AWARD_XP,
                    "code",
                    "OK",
                    {"id": "awards", "visible": False, "stat": "Sum"},
                ],
                [_NAMESPACE, XP_AWARDED, "Service", "xp", {"id": "xp", "visible": False, "stat": "Sum"}],
                [{"expression": "awards / PERIOD(awards)", "label": "awards a second", "id": "award_rate"}],
                [{"expression": "xp / PERIOD(xp)", "label": "XP awarded a second", "id": "xp_rate", "yAxis": "right"}],
            ],
            0,
            0,
        ),
        _widget(
            "RPCs a minute by service and status code",
            [
                [
                    {
                        "expression": f"SEARCH('{{\"{_NAMESPACE}\",Service,code}} MetricName=\"{RPC_REQUESTS}\"', 'Sum', 60)",
                        "id": "rpcs",
                    }
                ]
            ],
            12,
            0,
        ),
        _widget(
            "p99 latency by RPC (seconds)",
            [
                [
                    {
                        "expression": f"SEARCH('{{\"{_NAMESPACE}\",Service,method}} MetricName=\"{RPC_DURATION}\"', 'p99', 60)",
                        "id": "p99",
                    }
                ]
            ],
            0,
            6,
            width=24,
        ),
        _widget(
            "DynamoDB errors by code (throttles, 5xx, conflicts)",
            [
                [
                    {
                        "expression": f"SEARCH('{{\"{_NAMESPACE}\",Service,code}} MetricName=\"{DYNAMODB_ERRORS}\"', 'Sum', 60)",
                        "id": "ddberr",
                    }
                ]
            ],
            0,
            12,
        ),
        _widget(
            "DynamoDB call p99 by operation (seconds)",
            [
                [
                    {
                        "expression": f"SEARCH('{{\"{_NAMESPACE}\",Service,operation}} MetricName=\"{DYNAMODB_DURATION}\"', 'p99', 60)",
                        "id": "ddbp99",
                    }
                ]
            ],
            12,
            12,
        ),
        _widget(
            "DynamoDB throughput: consumed capacity units by table",
            [
                [
                    {
                        # Metrics whose only dimension is TableName (ThrottledRequests also has Operation).
                        "expression": 'SEARCH(\'{AWS/DynamoDB,TableName} (MetricName="ConsumedReadCapacityUnits" OR '
                        'MetricName="ConsumedWriteCapacityUnits" OR MetricName="ReadThrottleEvents" OR '
                        "MetricName=\"WriteThrottleEvents\") ${TablePrefix}', 'Sum', 60)",
                        "id": "tables",
                    }
                ]
            ],
            0,
            18,
            width=24,
        ),
        _widget(
            "Healthy and unhealthy targets",
            [
                [
                    "AWS/ApplicationELB",
                    metric,
                    "TargetGroup",
                    f"${{{logical(name, 'TargetGroup')}.TargetGroupFullName}}",
                    "LoadBalancer",
                    f"${{{LOAD_BALANCER}.LoadBalancerFullName}}",
                    {"label": f"{name} {metric}"},
                ]
                for name in names
                for metric in ("HealthyHostCount", "UnHealthyHostCount")
            ],
            0,
            24,
            stat="Maximum",
        ),
        _widget(
            "Running tasks",
            [
                ["ECS/ContainerInsights", "RunningTaskCount", "ClusterName", f"${{{CLUSTER}}}", "ServiceName", name]
                for name in names
            ],
            12,
            24,
            stat="Minimum",
        ),
        _widget(
            "CPU utilization (%)",
            [["AWS/ECS", "CPUUtilization", "ClusterName", f"${{{CLUSTER}}}", "ServiceName", name] for name in names],
            0,
            30,
            stat="Average",
        ),
        {
            "type": "alarm",
            "x": 12,
            "y": 30,
            "width": 12,
            "height": 6,
            "properties": {
                "title": "Alarms",
                "alarms": [f"${{{alarm}.Arn}}" for alarm in alarm_logical_ids],
            },
        },
    ]
    return json.dumps({"widgets": widgets}, indent=None, separators=(",", ":"))


def monitoring_resources() -> tuple[dict[str, Any], dict[str, Any]]:
    resources = alarm_resources()
    resources["Dashboard"] = {
        "Type": "AWS::CloudWatch::Dashboard",
        "Properties": {
            "DashboardName": {"Ref": "AWS::StackName"},
            "DashboardBody": {"Fn::Sub": dashboard_body(sorted(resources))},
        },
    }
    outputs = {
        "DashboardUrl": {
            "Description": "The stage's CloudWatch dashboard",
            "Value": {
                "Fn::Sub": "https://${AWS::Region}.console.aws.amazon.com/cloudwatch/home?region=${AWS::Region}"
                "#dashboards:name=${AWS::StackName}"
            },
        }
    }
    return resources, outputs
