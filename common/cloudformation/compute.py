"""The compute half of each stage's stack: an ECS cluster on Fargate running
one service per gRPC server (and the HTTP/JSON gateway) from one image, an
Application Load Balancer in front (HTTPS listener, gRPC target groups
checked with the servers' readiness check, routes by gRPC service), ECS
Service Connect between the services, auto scaling on CPU and on requests per
target, and a log group per service.

What runs is read from the code, not restated: each service's module, gRPC
service name (the generated descriptors), port (Settings' listen defaults),
peers (the *_target settings its server reads), readiness method and health
probe; tests/test_cloudformation.py checks the rendered stack against the code
again, independently."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.cloudformation.data import AUTH_SECRET_LOGICAL_ID, AUTH_SECRET_READ_POLICY_LOGICAL_ID, policy_logical_id
from common.config import ENVIRONMENT_VARIABLES, Settings
from common.server_runtime import READINESS_METHOD
from rewards.v1 import achievements_pb2, events_pb2, levels_pb2, xp_pb2

_DEFAULTS = Settings()


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


@dataclass(frozen=True)
class DeployedService:
    """One gRPC server as the stack runs it."""

    name: str  # the service's own name: Settings' `<name>_listen`, its policy, log group, Service Connect alias
    module: str  # python -m <module>
    grpc_service: str  # the full gRPC service name: the load balancer routes /<it>/* to this service
    peers: tuple[str, ...]  # the services it calls (its `<peer>_target` settings)

    @property
    def port(self) -> int:
        return _port(getattr(_DEFAULTS, f"{self.name}_listen"))

    @property
    def logical_name(self) -> str:
        return self.name.capitalize()


SERVICES: tuple[DeployedService, ...] = (
    DeployedService("levels", "levels_service", levels_pb2.DESCRIPTOR.services_by_name["LevelsService"].full_name, ()),
    DeployedService(
        "achievements",
        "achievements_service",
        achievements_pb2.DESCRIPTOR.services_by_name["AchievementsService"].full_name,
        ("levels",),
    ),
    DeployedService(
        "xp", "xp_service", xp_pb2.DESCRIPTOR.services_by_name["XpService"].full_name, ("levels", "achievements")
    ),
    DeployedService("events", "events_service", events_pb2.DESCRIPTOR.services_by_name["EventsService"].full_name, ()),
)
SERVICES_BY_NAME = {service.name: service for service in SERVICES}

# The HTTP/JSON gateway: no table, no key; it calls these services (gateway/routes.py routes to them).
GATEWAY_NAME = "gateway"
GATEWAY_MODULE = "gateway"
GATEWAY_PEERS = ("xp", "achievements", "levels")
GATEWAY_HEALTH_PATH = "/healthz"

# The events service scales on CPU only, between one task and EventsMaxTasks (stream readers).
SCALED_ON_REQUESTS = frozenset({"xp", "achievements", "levels", GATEWAY_NAME})

CLUSTER = "Cluster"
LOAD_BALANCER = "LoadBalancer"
LISTENER = "HttpsListener"
EXECUTION_ROLE = "TaskExecutionRole"
NAMESPACE = "ServiceConnectNamespace"
LOAD_BALANCER_SECURITY_GROUP = "LoadBalancerSecurityGroup"
TASK_SECURITY_GROUP = "TaskSecurityGroup"
HTTPS_PORT = 443
# Calls last at most a few seconds (the services' deadlines are 2 and 5 s), and a watch
# reconnects with its cursor: a stopping task needs no more than this to drain.
DEREGISTRATION_DELAY_S = 30
# A watch with no event for this long is closed by the load balancer (and reconnects).
IDLE_TIMEOUT_S = 300
# Above REWARDS_SHUTDOWN_GRACE_S (10 s by default): SIGTERM's drain finishes before SIGKILL.
STOP_TIMEOUT_S = 30
# The gRPC port mapping's name: Service Connect names its endpoints after it.
GRPC_PORT_NAME = "grpc"


def logical(name: str, kind: str) -> str:
    """`xp`, `Service` -> `XpService`: one resource of one service."""
    return name.capitalize() + kind


def log_group_name(name: str) -> dict[str, Any]:
    return {"Fn::Sub": f"/ecs/${{AWS::StackName}}/{name}"}


def _env(variable_settings: dict[str, Any]) -> list[dict[str, Any]]:
    """ECS environment entries from {setting name: value}: only variables the code reads."""
    entries = []
    for setting, value in variable_settings.items():
        variable = ENVIRONMENT_VARIABLES[setting]
        entries.append({"Name": variable, "Value": value})
    return entries


def _peer_targets(peers: tuple[str, ...]) -> dict[str, str]:
    # Service Connect's client alias of each peer: `<name>:<port>`, balanced per call by the local proxy.
    return {f"{peer}_target": f"{peer}:{SERVICES_BY_NAME[peer].port}" for peer in peers}


def _observability_environment() -> list[dict[str, Any]]:
    return [
        # CloudWatch Embedded Metric Format lines on stdout, into the service's log group: the
        # metrics the alarms and the dashboard read, under the stack's name.
        {"Name": ENVIRONMENT_VARIABLES["cloudwatch_metrics_namespace"], "Value": {"Ref": "AWS::StackName"}},
    ]


def _log_configuration(name: str) -> dict[str, Any]:
    return {
        "LogDriver": "awslogs",
        "Options": {
            "awslogs-group": {"Ref": logical(name, "LogGroup")},
            "awslogs-region": {"Ref": "AWS::Region"},
            "awslogs-stream-prefix": name,
        },
    }


def health_probe_command(service: DeployedService) -> list[str]:
    # Liveness: the server's "" health entry. ECS replaces a task whose container check fails, so it must
    # not fail on what a new task would not cure: the service's own entry (readiness) is NOT_SERVING
    # while DynamoDB is out of reach, and the load balancer's readiness check takes such tasks out of
    # rotation instead. One argument each, no spaces (the compose file's form; podman splits CMD checks).
    return ["CMD", "python", "-m", "common.health_probe", f"127.0.0.1:{service.port}"]


def container_health_check(command: list[str]) -> dict[str, Any]:
    # ECS replaces a task whose check failed 3 times in a row, 30 s after it started at the earliest.
    return {"Command": command, "Interval": 10, "Timeout": 5, "Retries": 3, "StartPeriod": 30}


def fargate_task_definition(name: str, container: dict[str, Any], task_role_arn: Any) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "Family": {"Fn::Sub": f"${{AWS::StackName}}-{name}"},
        "Cpu": {"Ref": "TaskCpu"},
        "Memory": {"Fn::FindInMap": ["TaskSizes", {"Ref": "TaskCpu"}, "Memory"]},
        "NetworkMode": "awsvpc",
        "RequiresCompatibilities": ["FARGATE"],
        "RuntimePlatform": {"OperatingSystemFamily": "LINUX", "CpuArchitecture": "X86_64"},
        "ExecutionRoleArn": {"Fn::GetAtt": [EXECUTION_ROLE, "Arn"]},
    }
    if task_role_arn is not None:
        properties["TaskRoleArn"] = task_role_arn
    properties["ContainerDefinitions"] = [container]
    return {"Type": "AWS::ECS::TaskDefinition", "Properties": properties}


def token_key_secrets() -> dict[str, Any]:
    """REWARDS_AUTH_JWT_SECRET from the stack's secret: its current version, or the version
    AuthKeyVersionId pins; and during a key rotation REWARDS_AUTH_JWT_PREVIOUS_SECRET from the version
    PreviousAuthKeyVersionId names (docs/deploy.md, Rotate the key). ECS reads them when a task starts."""
    current = {
        "Name": ENVIRONMENT_VARIABLES["auth_jwt_secret"],
        "ValueFrom": {
            "Fn::If": [
                "AuthKeyPinned",
                {"Fn::Sub": f"${{{AUTH_SECRET_LOGICAL_ID}}}:::${{AuthKeyVersionId}}"},
                {"Ref": AUTH_SECRET_LOGICAL_ID},
            ]
        },
    }
    previous = {
        "Name": ENVIRONMENT_VARIABLES["auth_jwt_previous_secret"],
        "ValueFrom": {"Fn::Sub": f"${{{AUTH_SECRET_LOGICAL_ID}}}:::${{PreviousAuthKeyVersionId}}"},
    }
    return {"Fn::If": ["PreviousAuthKeyOn", [current, previous], [current]]}


def task_definition(service: DeployedService) -> dict[str, Any]:
    environment: dict[str, Any] = {
        "table_prefix": {"Ref": "TablePrefix"},
        "aws_region": {"Ref": "AWS::Region"},
        f"{service.name}_listen": f"0.0.0.0:{service.port}",
        "workers": {"Fn::FindInMap": ["TaskSizes", {"Ref": "TaskCpu"}, "Workers"]},
        **_peer_targets(service.peers),
    }
    container = {
        "Name": service.name,
        "Image": {"Ref": "ImageUri"},
        "Command": ["python", "-m", service.module],
        "Essential": True,
        "PortMappings": [
            {"Name": GRPC_PORT_NAME, "ContainerPort": service.port, "Protocol": "tcp", "AppProtocol": "grpc"}
        ],
        "Secrets": token_key_secrets(),
        "HealthCheck": container_health_check(health_probe_command(service)),
        "StopTimeout": STOP_TIMEOUT_S,
        "LogConfiguration": _log_configuration(service.name),
        "Environment": {
            "Fn::If": [
                "TracingOn",
                [*_env(environment), *_observability_environment(), *_otlp_tracing()],
                [*_env(environment), *_observability_environment()],
            ]
        },
    }
    return fargate_task_definition(service.name, container, {"Fn::GetAtt": [logical(service.name, "TaskRole"), "Arn"]})


def _otlp_tracing() -> list[dict[str, Any]]:
    # The SDK names each process's traces itself (rewards-<service>): only where they go is set here.
    return [{"Name": ENVIRONMENT_VARIABLES["otel_exporter_otlp_endpoint"], "Value": {"Ref": "OtlpEndpoint"}}]


def gateway_task_definition() -> dict[str, Any]:
    environment: dict[str, Any] = {
        "gateway_host": "0.0.0.0",
        "gateway_port": str(_DEFAULTS.gateway_port),
        **_peer_targets(GATEWAY_PEERS),
    }
    container = {
        "Name": GATEWAY_NAME,
        "Image": {"Ref": "ImageUri"},
        "Command": ["python", "-m", GATEWAY_MODULE],
        "Essential": True,
        "PortMappings": [
            {"Name": "http", "ContainerPort": _DEFAULTS.gateway_port, "Protocol": "tcp", "AppProtocol": "http"}
        ],
        "Environment": {"Fn::If": ["TracingOn", [*_env(environment), *_otlp_tracing()], _env(environment)]},
        "HealthCheck": container_health_check(
            [
                "CMD",
                "python",
                "-m",
                "common.health_probe",
                f"http://127.0.0.1:{_DEFAULTS.gateway_port}{GATEWAY_HEALTH_PATH}",
            ]
        ),
        "StopTimeout": STOP_TIMEOUT_S,
        "LogConfiguration": _log_configuration(GATEWAY_NAME),
    }
    # It holds no key and touches no table: the execution role (image, logs) is all it needs.
    return fargate_task_definition(GATEWAY_NAME, container, task_role_arn=None)


def _assume_role_by_ecs_tasks() -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }


def execution_role() -> dict[str, Any]:
    """ECS's own role for the tasks: pull the image, write the logs, inject the token key."""
    return {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": _assume_role_by_ecs_tasks(),
            "ManagedPolicyArns": [
                {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"},
                {"Ref": AUTH_SECRET_READ_POLICY_LOGICAL_ID},
            ],
        },
    }


def task_role(service: DeployedService) -> dict[str, Any]:
    """What the service's code may do: its DynamoDB policy, and nothing else."""
    return {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": _assume_role_by_ecs_tasks(),
            "ManagedPolicyArns": [{"Ref": policy_logical_id(service.name)}],
        },
    }


def log_group(name: str) -> dict[str, Any]:
    return {
        "Type": "AWS::Logs::LogGroup",
        "DeletionPolicy": "Delete",
        "UpdateReplacePolicy": "Delete",
        "Properties": {"LogGroupName": log_group_name(name), "RetentionInDays": {"Ref": "LogRetentionDays"}},
    }


def cluster() -> dict[str, Any]:
    return {
        "Type": "AWS::ECS::Cluster",
        "Properties": {
            "ClusterName": {"Ref": "AWS::StackName"},
            # Container Insights: the RunningTaskCount the TasksBelowMinimum alarms read.
            "ClusterSettings": [{"Name": "containerInsights", "Value": "enabled"}],
            "ServiceConnectDefaults": {"Namespace": {"Fn::GetAtt": [NAMESPACE, "Arn"]}},
        },
    }


def namespace() -> dict[str, Any]:
    return {
        "Type": "AWS::ServiceDiscovery::HttpNamespace",
        "Properties": {
            "Name": {"Ref": "AWS::StackName"},
            "Description": "rewards: the services' Service Connect names (levels:50053 ...)",
        },
    }


def task_ingress(port: int, source_group: str, description: str) -> dict[str, Any]:
    return {
        "Type": "AWS::EC2::SecurityGroupIngress",
        "Properties": {
            "GroupId": {"Fn::GetAtt": [TASK_SECURITY_GROUP, "GroupId"]},
            "IpProtocol": "tcp",
            "FromPort": port,
            "ToPort": port,
            "SourceSecurityGroupId": {"Fn::GetAtt": [source_group, "GroupId"]},
            "Description": description,
        },
    }


def security_groups() -> dict[str, Any]:
    task_ports = [service.port for service in SERVICES] + [_DEFAULTS.gateway_port]
    resources: dict[str, Any] = {
        LOAD_BALANCER_SECURITY_GROUP: {
            "Type": "AWS::EC2::SecurityGroup",
            "Properties": {
                "GroupDescription": "rewards load balancer: HTTPS from the game servers",
                "VpcId": {"Ref": "VpcId"},
                "SecurityGroupIngress": [
                    {
                        "IpProtocol": "tcp",
                        "FromPort": HTTPS_PORT,
                        "ToPort": HTTPS_PORT,
                        "CidrIp": {"Ref": "ClientCidr"},
                        "Description": "game servers",
                    }
                ],
            },
        },
        TASK_SECURITY_GROUP: {
            "Type": "AWS::EC2::SecurityGroup",
            "Properties": {
                "GroupDescription": "rewards tasks: their ports from the load balancer and from each other",
                "VpcId": {"Ref": "VpcId"},
            },
        },
    }
    for port in task_ports:
        resources[f"TaskIngressFromLoadBalancer{port}"] = task_ingress(
            port, LOAD_BALANCER_SECURITY_GROUP, "load balancer to tasks"
        )
    for service in SERVICES:
        # Service Connect: a caller's proxy reaches the callee's tasks on their gRPC port.
        resources[f"TaskIngressFromTasks{service.port}"] = task_ingress(
            service.port, TASK_SECURITY_GROUP, f"service to service ({service.name})"
        )
    return resources


def load_balancer() -> dict[str, Any]:
    return {
        "Type": "AWS::ElasticLoadBalancingV2::LoadBalancer",
        "Properties": {
            "Type": "application",
            "Scheme": {"Ref": "LoadBalancerScheme"},
            "Subnets": {"Ref": "LoadBalancerSubnets"},
            "SecurityGroups": [{"Ref": LOAD_BALANCER_SECURITY_GROUP}],
            "LoadBalancerAttributes": [
                {"Key": "idle_timeout.timeout_seconds", "Value": str(IDLE_TIMEOUT_S)},
                {"Key": "routing.http.drop_invalid_header_fields.enabled", "Value": "true"},
            ],
        },
    }


def https_listener() -> dict[str, Any]:
    return {
        "Type": "AWS::ElasticLoadBalancingV2::Listener",
        "Properties": {
            "LoadBalancerArn": {"Ref": LOAD_BALANCER},
            "Port": HTTPS_PORT,
            "Protocol": "HTTPS",
            "SslPolicy": "ELBSecurityPolicy-TLS13-1-2-2021-06",
            "Certificates": [{"CertificateArn": {"Ref": "CertificateArn"}}],
            # What no gRPC route takes is the gateway's HTTP/JSON.
            "DefaultActions": [{"Type": "forward", "TargetGroupArn": {"Ref": logical(GATEWAY_NAME, "TargetGroup")}}],
        },
    }


def target_group(port: int, protocol_version: str, health_check_path: str, matcher: dict[str, str]) -> dict[str, Any]:
    return {
        "Type": "AWS::ElasticLoadBalancingV2::TargetGroup",
        "Properties": {
            "TargetType": "ip",
            "VpcId": {"Ref": "VpcId"},
            "Protocol": "HTTP",
            "ProtocolVersion": protocol_version,
            "Port": port,
            "HealthCheckProtocol": "HTTP",
            "HealthCheckPath": health_check_path,
            "Matcher": matcher,
            "HealthCheckIntervalSeconds": 10,
            "HealthCheckTimeoutSeconds": 5,
            "HealthyThresholdCount": 2,
            "UnhealthyThresholdCount": 3,
            "TargetGroupAttributes": [
                {"Key": "deregistration_delay.timeout_seconds", "Value": str(DEREGISTRATION_DELAY_S)}
            ],
        },
    }


def grpc_target_group(service: DeployedService) -> dict[str, Any]:
    # The servers' readiness check: OK while every health entry (grpc.health.v1) of the server is SERVING,
    # UNAVAILABLE while DynamoDB does not answer or the server drains. The load balancer judges the gRPC
    # status code alone, which is why it is not grpc.health.v1's Check (OK with NOT_SERVING in the body).
    return target_group(service.port, "GRPC", READINESS_METHOD, {"GrpcCode": "0"})


def gateway_target_group() -> dict[str, Any]:
    return target_group(_DEFAULTS.gateway_port, "HTTP1", GATEWAY_HEALTH_PATH, {"HttpCode": "200"})


def grpc_route(service: DeployedService, priority: int) -> dict[str, Any]:
    return {
        "Type": "AWS::ElasticLoadBalancingV2::ListenerRule",
        "Properties": {
            "ListenerArn": {"Ref": LISTENER},
            "Priority": priority,
            "Conditions": [{"Field": "path-pattern", "PathPatternConfig": {"Values": [f"/{service.grpc_service}/*"]}}],
            "Actions": [{"Type": "forward", "TargetGroupArn": {"Ref": logical(service.name, "TargetGroup")}}],
        },
    }


def ecs_service(
    name: str,
    port: int,
    depends_on: list[str],
    service_connect: dict[str, Any],
) -> dict[str, Any]:
    return {
        "Type": "AWS::ECS::Service",
        "DependsOn": depends_on,
        "Properties": {
            "ServiceName": name,
            "Cluster": {"Ref": CLUSTER},
            "TaskDefinition": {"Ref": logical(name, "TaskDefinition")},
            "LaunchType": "FARGATE",
            # No DesiredCount: a new service starts one task and auto scaling raises it to MinCapacity; a
            # stack update then leaves the running count alone (a DesiredCount would reset it at each change).
            "NetworkConfiguration": {
                "AwsvpcConfiguration": {
                    "Subnets": {"Ref": "TaskSubnets"},
                    "SecurityGroups": [{"Ref": TASK_SECURITY_GROUP}],
                    "AssignPublicIp": {"Ref": "AssignPublicIp"},
                }
            },
            "LoadBalancers": [
                {
                    "ContainerName": name,
                    "ContainerPort": port,
                    "TargetGroupArn": {"Ref": logical(name, "TargetGroup")},
                }
            ],
            "HealthCheckGracePeriodSeconds": 60,
            "DeploymentConfiguration": {
                "MinimumHealthyPercent": 100,
                "MaximumPercent": 200,
                # A release whose tasks do not turn healthy is rolled back by itself.
                "DeploymentCircuitBreaker": {"Enable": True, "Rollback": True},
            },
            "ServiceConnectConfiguration": service_connect,
            "PropagateTags": "SERVICE",
        },
    }


def _service_connect(service: DeployedService | None) -> dict[str, Any]:
    configuration: dict[str, Any] = {"Enabled": True, "Namespace": {"Fn::GetAtt": [NAMESPACE, "Arn"]}}
    if service is not None:
        configuration["Services"] = [
            {
                "PortName": GRPC_PORT_NAME,
                "DiscoveryName": service.name,
                "ClientAliases": [{"DnsName": service.name, "Port": service.port}],
            }
        ]
    return configuration


def target_tracking(name: str, kind: str, metric: dict[str, Any], target_value: dict[str, Any]) -> dict[str, Any]:
    """Keeps `metric` near `target_value`: out within a minute, in after five quiet minutes."""
    return {
        "Type": "AWS::ApplicationAutoScaling::ScalingPolicy",
        "Properties": {
            "PolicyName": {"Fn::Sub": f"${{AWS::StackName}}-{name}-{kind}"},
            "PolicyType": "TargetTrackingScaling",
            "ScalingTargetId": {"Ref": logical(name, "ScalableTarget")},
            "TargetTrackingScalingPolicyConfiguration": {
                "PredefinedMetricSpecification": metric,
                "TargetValue": target_value,
                "ScaleOutCooldown": 60,
                "ScaleInCooldown": 300,
            },
        },
    }


def scaling(name: str, min_tasks: Any, max_tasks: Any) -> dict[str, Any]:
    resources: dict[str, Any] = {
        logical(name, "ScalableTarget"): {
            "Type": "AWS::ApplicationAutoScaling::ScalableTarget",
            "Properties": {
                "ServiceNamespace": "ecs",
                "ScalableDimension": "ecs:service:DesiredCount",
                "ResourceId": {"Fn::Sub": f"service/${{{CLUSTER}}}/${{{logical(name, 'Service')}.Name}}"},
                "MinCapacity": min_tasks,
                "MaxCapacity": max_tasks,
            },
        },
        logical(name, "CpuScaling"): target_tracking(
            name,
            "cpu",
            {"PredefinedMetricType": "ECSServiceAverageCPUUtilization"},
            {"Ref": "CpuTargetPercent"},
        ),
    }
    if name in SCALED_ON_REQUESTS:
        resource_label = {
            "Fn::Join": [
                "/",
                [
                    {"Fn::GetAtt": [LOAD_BALANCER, "LoadBalancerFullName"]},
                    {"Fn::GetAtt": [logical(name, "TargetGroup"), "TargetGroupFullName"]},
                ],
            ]
        }
        resources[logical(name, "RequestScaling")] = target_tracking(
            name,
            "requests",
            {"PredefinedMetricType": "ALBRequestCountPerTarget", "ResourceLabel": resource_label},
            {"Ref": "RequestsPerTargetPerMinute"},
        )
    return resources


def compute_resources() -> tuple[dict[str, Any], dict[str, Any]]:
    """The resources and outputs of the compute half."""
    resources: dict[str, Any] = {
        NAMESPACE: namespace(),
        CLUSTER: cluster(),
        EXECUTION_ROLE: execution_role(),
        **security_groups(),
        LOAD_BALANCER: load_balancer(),
        LISTENER: https_listener(),
    }
    min_tasks, max_tasks = {"Ref": "MinTasks"}, {"Ref": "MaxTasks"}
    for priority, service in enumerate(SERVICES, start=1):
        name = service.name
        resources[logical(name, "LogGroup")] = log_group(name)
        resources[logical(name, "TaskRole")] = task_role(service)
        resources[logical(name, "TaskDefinition")] = task_definition(service)
        resources[logical(name, "TargetGroup")] = grpc_target_group(service)
        resources[logical(name, "Route")] = grpc_route(service, priority * 10)
        # Service Connect gives a caller the peers that exist when its tasks start: peers first.
        resources[logical(name, "Service")] = ecs_service(
            name,
            service.port,
            [logical(name, "Route"), *(logical(peer, "Service") for peer in service.peers)],
            _service_connect(service),
        )
        if name in SCALED_ON_REQUESTS:
            resources.update(scaling(name, min_tasks, max_tasks))
        else:
            resources.update(scaling(name, 1, {"Ref": "EventsMaxTasks"}))
    resources[logical(GATEWAY_NAME, "LogGroup")] = log_group(GATEWAY_NAME)
    resources[logical(GATEWAY_NAME, "TaskDefinition")] = gateway_task_definition()
    resources[logical(GATEWAY_NAME, "TargetGroup")] = gateway_target_group()
    resources[logical(GATEWAY_NAME, "Service")] = ecs_service(
        GATEWAY_NAME,
        _DEFAULTS.gateway_port,
        [LISTENER, *(logical(peer, "Service") for peer in GATEWAY_PEERS)],
        _service_connect(None),
    )
    resources.update(scaling(GATEWAY_NAME, min_tasks, max_tasks))
    outputs = {
        "LoadBalancerDnsName": {
            "Description": "Where game servers connect (TLS, port 443): gRPC, and the gateway's HTTP/JSON",
            "Value": {"Fn::GetAtt": [LOAD_BALANCER, "DNSName"]},
        },
        "ClusterName": {"Description": "The ECS cluster", "Value": {"Ref": CLUSTER}},
    }
    return resources, outputs
