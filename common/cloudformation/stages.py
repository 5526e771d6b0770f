"""The stages a studio runs (one stack each, side by side in one account and
region if it likes) and the stack's parameters: what differs per stage are the
parameters' defaults; what differs per account (the VPC, subnets, image,
certificate, alarm topic) has no default and is given at deploy time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.alarms import ALARMS_BY_NAME
from common.cloudformation.data import table_prefix_parameter

STACKS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "stacks"

# Fargate's CPU units and the memory each gets here, and the service processes per task
# (REWARDS_WORKERS: one asyncio process per vCPU, all on the task's one port).
TASK_SIZES: dict[str, dict[str, str]] = {
    "256": {"Memory": "512", "Workers": "1"},
    "512": {"Memory": "1024", "Workers": "1"},
    "1024": {"Memory": "2048", "Workers": "1"},
    "2048": {"Memory": "4096", "Workers": "2"},
    "4096": {"Memory": "8192", "Workers": "4"},
}

# CloudWatch Logs' allowed retentions (days).
LOG_RETENTION_DAYS = (
    1,
    3,
    5,
    7,
    14,
    30,
    60,
    90,
    120,
    150,
    180,
    365,
    400,
    545,
    731,
    1096,
    1827,
    2192,
    2557,
    2922,
    3288,
    3653,
)


@dataclass(frozen=True)
class Stage:
    """One stage's defaults. Sizes are a starting point: measure (make bench, the
    dashboard's CPU) and override them with --parameter-overrides."""

    name: str
    min_tasks: int
    max_tasks: int
    events_max_tasks: int
    task_cpu: str
    log_retention_days: int
    # Above this p99 (seconds) an RPC's latency alarm fires.
    latency_p99_threshold_s: float = ALARMS_BY_NAME["RpcLatencyP99"].threshold

    @property
    def path(self) -> Path:
        return STACKS_DIR / f"{self.name}.yaml"

    @property
    def table_prefix(self) -> str:
        return f"rewards-{self.name}-"


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        # Two tasks of each service from the start: a lost Availability Zone leaves one.
        Stage("prod", min_tasks=2, max_tasks=20, events_max_tasks=2, task_cpu="1024", log_retention_days=90),
        Stage("staging", min_tasks=1, max_tasks=4, events_max_tasks=1, task_cpu="512", log_retention_days=14),
    )
}


def stack_parameters(stage: Stage) -> dict[str, Any]:
    return {
        "TablePrefix": table_prefix_parameter(stage.table_prefix),
        "ImageUri": {
            "Type": "String",
            "Description": "The image built from the repository's Dockerfile, pushed to a registry the tasks can "
            "pull from (ECR: <account>.dkr.ecr.<region>.amazonaws.com/rewards:<tag>); every service runs it",
            "MinLength": 1,
        },
        "VpcId": {"Type": "AWS::EC2::VPC::Id", "Description": "The VPC the load balancer and the tasks run in"},
        "TaskSubnets": {
            "Type": "List<AWS::EC2::Subnet::Id>",
            "Description": "Subnets of the tasks (private ones with a NAT gateway or VPC endpoints for DynamoDB, "
            "ECR, CloudWatch Logs and Secrets Manager), in two or more Availability Zones",
        },
        "AssignPublicIp": {
            "Type": "String",
            "Description": "ENABLED only when TaskSubnets are public subnets without a NAT gateway",
            "AllowedValues": ["DISABLED", "ENABLED"],
            "Default": "DISABLED",
        },
        "LoadBalancerSubnets": {
            "Type": "List<AWS::EC2::Subnet::Id>",
            "Description": "Subnets of the load balancer, in two or more Availability Zones",
        },
        "LoadBalancerScheme": {
            "Type": "String",
            "Description": "internal: reachable from inside the VPC (the game servers) only, as docs/deploy.md advises",
            "AllowedValues": ["internal", "internet-facing"],
            "Default": "internal",
        },
        "ClientCidr": {
            "Type": "String",
            "Description": "The addresses that may reach the load balancer's HTTPS port (the game servers)",
            "AllowedPattern": r"^(\d{1,3}\.){3}\d{1,3}/\d{1,2}$",
            "Default": "10.0.0.0/8",
        },
        "CertificateArn": {
            "Type": "String",
            "Description": "The ACM certificate of the load balancer's HTTPS listener",
            "AllowedPattern": "^arn:aws[a-z-]*:acm:.+$",
        },
        "AlarmTopicArn": {
            "Type": "String",
            "Description": "The SNS topic every alarm notifies (when it fires and when it is OK again)",
            "AllowedPattern": "^arn:aws[a-z-]*:sns:.+$",
        },
        "MinTasks": {
            "Type": "Number",
            "Description": "The fewest tasks of each service (xp, achievements, levels, gateway); the "
            "TasksBelowMinimum alarm fires under it",
            "MinValue": 1,
            "Default": stage.min_tasks,
        },
        "MaxTasks": {
            "Type": "Number",
            "Description": "The most tasks auto scaling gives each service (xp, achievements, levels, gateway)",
            "MinValue": 1,
            "Default": stage.max_tasks,
        },
        "EventsMaxTasks": {
            "Type": "Number",
            "Description": "The most events tasks: each reads every stream shard, and DynamoDB Streams serves "
            "about two readers a shard (docs/deploy.md, Events on AWS); the fewest is one",
            "MinValue": 1,
            "MaxValue": 2,
            "Default": stage.events_max_tasks,
        },
        "TaskCpu": {
            "Type": "String",
            "Description": "CPU units of each task; memory and REWARDS_WORKERS follow (TaskSizes)",
            "AllowedValues": list(TASK_SIZES),
            "Default": stage.task_cpu,
        },
        "CpuTargetPercent": {
            "Type": "Number",
            "Description": "Auto scaling keeps each service's average CPU near this",
            "MinValue": 10,
            "MaxValue": 90,
            "Default": 60,
        },
        "RequestsPerTargetPerMinute": {
            "Type": "Number",
            "Description": "Auto scaling keeps each task's requests a minute (from the load balancer) near this",
            "MinValue": 1,
            "Default": 6000,
        },
        "LogRetentionDays": {
            "Type": "Number",
            "Description": "Days CloudWatch Logs keeps the services' logs (and the EMF metrics' raw lines)",
            "AllowedValues": list(LOG_RETENTION_DAYS),
            "Default": stage.log_retention_days,
        },
        "LatencyP99ThresholdSeconds": {
            "Type": "Number",
            "Description": "An RPC's p99 latency above this for 10 minutes fires its RpcLatencyP99 alarm",
            "Default": stage.latency_p99_threshold_s,
        },
        "AuthKeyVersionId": {
            "Type": "String",
            "Description": "Empty: the tasks take the token key's current version. During a key rotation, the "
            "version id REWARDS_AUTH_JWT_SECRET is pinned to (docs/deploy.md, Rotate the key)",
            "Default": "",
        },
        "PreviousAuthKeyVersionId": {
            "Type": "String",
            "Description": "Empty: no previous key. During a key rotation, the version id of the key still "
            "accepted (REWARDS_AUTH_JWT_PREVIOUS_SECRET)",
            "Default": "",
        },
        "OtlpEndpoint": {
            "Type": "String",
            "Description": "Where the services send OpenTelemetry traces (OTLP), e.g. an AWS Distro for "
            "OpenTelemetry collector; empty: tracing off",
            "Default": "",
        },
    }
