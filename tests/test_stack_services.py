"""Every stage's stack (deploy/stacks/*.yaml) against the code: the services it
runs, their commands, ports, health checks, environment, secrets and roles,
the load balancer's routes and checks, scaling, and the alarms' metrics. The
expectations come from the code (the local launcher's service list, the
generated descriptors, Settings, the servers' own sources, common/metrics.py),
and the health checks are run against real servers."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from common import metrics
from common.alarms import ALARM_NAMES, STREAMING_METHODS, SYSTEM_ERROR_CODES, THROTTLING_CODES
from common.caller_auth import METHOD_ROLES
from common.cloudformation import STAGES, policy_logical_id
from common.config import ENVIRONMENT_VARIABLES, Settings
from common.server_runtime import READINESS_METHOD
from devcluster.__main__ import GATEWAY, SERVICES
from devcluster.dynamodb_local import free_port
from devcluster.prometheus import awards_per_second
from gateway.routes import ROUTES
from gateway.routes import SERVICES as GATEWAY_SERVICES
from tests.cluster import Cluster

REPO_ROOT = Path(__file__).resolve().parent.parent
MODULES = {name: module for name, module in SERVICES} | {GATEWAY: "gateway"}
DEFAULTS = Settings()
SETTING_OF_VARIABLE = {variable: setting for setting, variable in ENVIRONMENT_VARIABLES.items()}


def _load(stage: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(STAGES[stage].path.read_text())
    return loaded


@pytest.fixture(scope="module", params=sorted(STAGES))
def stack(request: pytest.FixtureRequest) -> dict[str, Any]:
    return _load(request.param)


def of_type(stack: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in stack["Resources"].items() if v["Type"] == kind}


def ecs_services(stack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{service name: its AWS::ECS::Service properties}"""
    return {v["Properties"]["ServiceName"]: v["Properties"] for v in of_type(stack, "AWS::ECS::Service").values()}


def container(stack: dict[str, Any], name: str) -> dict[str, Any]:
    task = stack["Resources"][ecs_services(stack)[name]["TaskDefinition"]["Ref"]]["Properties"]
    (only,) = task["ContainerDefinitions"]
    assert only["Name"] == name
    return dict(only)


def environment(definition: dict[str, Any], tracing: bool) -> dict[str, Any]:
    """The container's environment with tracing off or on (the TracingOn condition's two branches)."""
    on, off = definition["Environment"]["Fn::If"][1:]
    return {entry["Name"]: entry["Value"] for entry in (on if tracing else off)}


def listen_port(name: str) -> int:
    if name == GATEWAY:
        return DEFAULTS.gateway_port
    return int(getattr(DEFAULTS, f"{name}_listen").rsplit(":", 1)[1])


def targets_read_by(module: str) -> set[str]:
    """The peers a server's module reaches: the `settings.<peer>_target` its source reads."""
    sources = "".join(path.read_text() for path in (REPO_ROOT / module).glob("*.py"))
    return set(re.findall(r"settings\.(\w+)_target", sources))


# --- what runs -------------------------------------------------------------------------


def test_the_stack_runs_every_service_of_the_local_cluster_and_the_gateway(stack: dict[str, Any]) -> None:
    assert set(ecs_services(stack)) == set(MODULES) == {"xp", "achievements", "levels", "events", "gateway"}
    for name, module in MODULES.items():
        definition = container(stack, name)
        assert definition["Command"] == ["python", "-m", module]
        assert (REPO_ROOT / module / "__main__.py").exists()
        assert definition["Image"] == {"Ref": "ImageUri"}
        service = ecs_services(stack)[name]
        assert service["LaunchType"] == "FARGATE"
        assert service["DeploymentConfiguration"]["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}


def test_ports_agree_from_container_to_load_balancer(stack: dict[str, Any]) -> None:
    for name in MODULES:
        port = listen_port(name)
        definition = container(stack, name)
        assert [m["ContainerPort"] for m in definition["PortMappings"]] == [port]
        (attachment,) = ecs_services(stack)[name]["LoadBalancers"]
        assert (attachment["ContainerName"], attachment["ContainerPort"]) == (name, port)
        group = stack["Resources"][attachment["TargetGroupArn"]["Ref"]]["Properties"]
        assert group["Port"] == port
        settings = Settings.from_env({k: v for k, v in environment(definition, False).items() if isinstance(v, str)})
        if name == GATEWAY:
            assert (settings.gateway_host, settings.gateway_port) == ("0.0.0.0", port)
        else:
            # What the server binds, from the variable the stack sets: every interface, the same port.
            assert getattr(settings, f"{name}_listen") == f"0.0.0.0:{port}"


def test_grpc_routes_and_target_groups_are_the_services_of_the_descriptors(stack: dict[str, Any]) -> None:
    rules = of_type(stack, "AWS::ElasticLoadBalancingV2::ListenerRule").values()
    routed = {}
    for rule in rules:
        (condition,) = rule["Properties"]["Conditions"]
        (pattern,) = condition["PathPatternConfig"]["Values"]
        (action,) = rule["Properties"]["Actions"]
        routed[pattern] = stack["Resources"][action["TargetGroupArn"]["Ref"]]["Properties"]
    served = {method.rsplit("/", 1)[0] for method in METHOD_ROLES if method.startswith("/rewards.v1.")}
    assert set(routed) == {f"{service}/*" for service in served}
    assert len(served) == 4
    for group in routed.values():
        assert group["ProtocolVersion"] == "GRPC"
        assert group["HealthCheckPath"] == READINESS_METHOD
        assert group["Matcher"] == {"GrpcCode": "0"}
    # Everything else is the gateway's HTTP/JSON.
    (listener,) = of_type(stack, "AWS::ElasticLoadBalancingV2::Listener").values()
    assert listener["Properties"]["Protocol"] == "HTTPS"
    assert listener["Properties"]["Certificates"] == [{"CertificateArn": {"Ref": "CertificateArn"}}]
    (default,) = listener["Properties"]["DefaultActions"]
    gateway_group = stack["Resources"][default["TargetGroupArn"]["Ref"]]["Properties"]
    assert (gateway_group["ProtocolVersion"], gateway_group["HealthCheckPath"]) == ("HTTP1", "/healthz")


def test_peers_are_what_each_server_reads_through_service_connect(stack: dict[str, Any]) -> None:
    aliases = {}
    for name, service in ecs_services(stack).items():
        for entry in service["ServiceConnectConfiguration"].get("Services", []):
            (alias,) = entry["ClientAliases"]
            aliases[alias["DnsName"]] = alias["Port"]
            assert entry["PortName"] == container(stack, name)["PortMappings"][0]["Name"]
    assert aliases == {name: listen_port(name) for name, _ in SERVICES}
    for name, module in MODULES.items():
        env = environment(container(stack, name), False)
        targets = {SETTING_OF_VARIABLE[k].removesuffix("_target"): v for k, v in env.items() if k.endswith("_TARGET")}
        # The gateway's channels: one per service it routes to.
        expected = set(GATEWAY_SERVICES) if name == GATEWAY else targets_read_by(module)
        assert set(targets) == expected, name
        for peer, address in targets.items():
            assert address == f"{peer}:{aliases[peer]}"
            # A caller starts after its peers: Service Connect gives it the endpoints that exist then.
            assert f"{peer.capitalize()}Service" in stack["Resources"][f"{name.capitalize()}Service"]["DependsOn"]
    assert {route.service for route in ROUTES} == set(GATEWAY_SERVICES)


def test_environment_is_settings_the_code_reads_and_real_dynamodb(stack: dict[str, Any]) -> None:
    for name in MODULES:
        for tracing in (False, True):
            env = environment(container(stack, name), tracing)
            assert set(env) <= set(ENVIRONMENT_VARIABLES.values()), name
            assert ("OTEL_EXPORTER_OTLP_ENDPOINT" in env) == tracing
            # Unset means real DynamoDB; any value points the SDK elsewhere. No AWS keys: the task role.
            assert "REWARDS_DYNAMODB_ENDPOINT" not in env and "AWS_ACCESS_KEY_ID" not in env
        if name == GATEWAY:
            continue
        env = environment(container(stack, name), False)
        assert env["REWARDS_TABLE_PREFIX"] == {"Ref": "TablePrefix"}
        assert env["AWS_REGION"] == {"Ref": "AWS::Region"}
        assert env["REWARDS_CLOUDWATCH_METRICS_NAMESPACE"] == {"Ref": "AWS::StackName"}


def test_the_token_key_is_a_secret_of_the_services_only(stack: dict[str, Any]) -> None:
    for name in MODULES:
        definition = container(stack, name)
        if name == GATEWAY:
            assert "Secrets" not in definition  # it passes callers' tokens through, and signs nothing
            continue
        condition, rotating, steady = definition["Secrets"]["Fn::If"]
        assert condition == "PreviousAuthKeyOn"
        current = {
            "Name": ENVIRONMENT_VARIABLES["auth_jwt_secret"],
            "ValueFrom": {
                "Fn::If": [
                    "AuthKeyPinned",
                    {"Fn::Sub": "${AuthJwtSecret}:::${AuthKeyVersionId}"},
                    {"Ref": "AuthJwtSecret"},
                ]
            },
        }
        previous = {
            "Name": ENVIRONMENT_VARIABLES["auth_jwt_previous_secret"],
            "ValueFrom": {"Fn::Sub": "${AuthJwtSecret}:::${PreviousAuthKeyVersionId}"},
        }
        assert (steady, rotating) == ([current], [current, previous])
        assert stack["Conditions"]["PreviousAuthKeyOn"] == {
            "Fn::Not": [{"Fn::Equals": [{"Ref": "PreviousAuthKeyVersionId"}, ""]}]
        }
    execution_roles = {
        stack["Resources"][t["Properties"]["ExecutionRoleArn"]["Fn::GetAtt"][0]]["Properties"]["ManagedPolicyArns"][1][
            "Ref"
        ]
        for t in of_type(stack, "AWS::ECS::TaskDefinition").values()
    }
    assert execution_roles == {"AuthSecretReadPolicy"}


def test_each_task_role_is_its_service_policy_and_nothing_else(stack: dict[str, Any]) -> None:
    for name, _ in SERVICES:
        task = stack["Resources"][ecs_services(stack)[name]["TaskDefinition"]["Ref"]]["Properties"]
        role = stack["Resources"][task["TaskRoleArn"]["Fn::GetAtt"][0]]["Properties"]
        assert role["ManagedPolicyArns"] == [{"Ref": policy_logical_id(name)}]
        assert "Policies" not in role
    gateway_task = stack["Resources"][ecs_services(stack)[GATEWAY]["TaskDefinition"]["Ref"]]["Properties"]
    assert "TaskRoleArn" not in gateway_task


def test_container_health_checks_are_the_probe_of_each_server(stack: dict[str, Any]) -> None:
    for name in MODULES:
        command = container(stack, name)["HealthCheck"]["Command"]
        assert command[:4] == ["CMD", "python", "-m", "common.health_probe"]
        assert all(" " not in argument for argument in command)
        if name == GATEWAY:
            assert command[4:] == [f"http://127.0.0.1:{DEFAULTS.gateway_port}/healthz"]
        else:
            # Liveness (the server's "" entry): ECS replaces a task whose check fails, which would not cure
            # a DynamoDB outage; the load balancer's readiness check takes such a task out of rotation.
            assert command[4:] == [f"127.0.0.1:{listen_port(name)}"]


def _probe(address: str, *service: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "common.health_probe", address, *service],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_health_checks_pass_on_real_servers_and_readiness_answers_the_load_balancer(
    new_cluster: Callable[..., Cluster],
) -> None:
    stack = _load("prod")
    cluster = new_cluster(events=True)
    for name, _ in SERVICES:
        *probe, address = container(stack, name)["HealthCheck"]["Command"]
        assert probe == ["CMD", "python", "-m", "common.health_probe"]
        # The stack's check on the server's real port answers SERVING.
        result = _probe(address.replace(f":{listen_port(name)}", f":{cluster.ports[name]}"))
        assert result.returncode == 0, (name, result.stdout, result.stderr)
        # The check can fail: no server on the port.
        assert _probe(f"127.0.0.1:{free_port()}").returncode == 1
        # What the load balancer sends to the target group's health check path: an empty request, no token.
        with grpc.insecure_channel(f"127.0.0.1:{cluster.ports[name]}") as channel:
            readiness = channel.unary_unary(READINESS_METHOD)
            _, call = readiness.with_call(b"", timeout=10)
            assert call.code() == grpc.StatusCode.OK


# --- scaling ---------------------------------------------------------------------------


def test_every_service_scales_between_its_minimum_and_maximum(stack: dict[str, Any]) -> None:
    targets = of_type(stack, "AWS::ApplicationAutoScaling::ScalableTarget")
    policies = of_type(stack, "AWS::ApplicationAutoScaling::ScalingPolicy")
    for name in MODULES:
        target_id = f"{name.capitalize()}ScalableTarget"
        target = targets[target_id]["Properties"]
        assert target["ResourceId"] == {"Fn::Sub": f"service/${{Cluster}}/${{{name.capitalize()}Service.Name}}"}
        kinds = {
            p["Properties"]["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"][
                "PredefinedMetricType"
            ]
            for p in policies.values()
            if p["Properties"]["ScalingTargetId"] == {"Ref": target_id}
        }
        # Auto scaling owns the count: a stack update must not reset a scaled-out service.
        assert "DesiredCount" not in ecs_services(stack)[name]
        if name == "events":
            # Each events task reads every stream shard: at most EventsMaxTasks readers, scaled on CPU.
            assert (target["MinCapacity"], target["MaxCapacity"]) == (1, {"Ref": "EventsMaxTasks"})
            assert kinds == {"ECSServiceAverageCPUUtilization"}
        else:
            assert (target["MinCapacity"], target["MaxCapacity"]) == ({"Ref": "MinTasks"}, {"Ref": "MaxTasks"})
            assert kinds == {"ECSServiceAverageCPUUtilization", "ALBRequestCountPerTarget"}


# --- alarms and dashboard ----------------------------------------------------------------


def _alarm_kind(alarm: dict[str, Any]) -> str:
    return str(alarm["Properties"]["AlarmName"]["Fn::Sub"].split("-")[1])


def _emf_families() -> dict[str, set[str]]:
    """EMF metric name -> dimensions it may have (Service and the family's labels), from common/metrics.py."""
    families = {}
    for collector in (metrics.RPCS, metrics.RPC_SECONDS, metrics.DYNAMODB_ERRORS, metrics.XP_AWARDED):
        (family,) = collector.describe()
        name = family.name.removeprefix("rewards_")
        families[name] = {"Service", *collector._labelnames}
    return families


def _alarm_metrics(alarm: dict[str, Any]) -> list[dict[str, Any]]:
    properties = alarm["Properties"]
    if "Metrics" in properties:
        return [m["MetricStat"]["Metric"] for m in properties["Metrics"] if "MetricStat" in m]
    return [{k: properties[k] for k in ("Namespace", "MetricName", "Dimensions")}]


def test_the_alarms_are_the_shared_set_to_the_topic_on_metrics_the_code_writes(stack: dict[str, Any]) -> None:
    alarms = of_type(stack, "AWS::CloudWatch::Alarm")
    assert {_alarm_kind(alarm) for alarm in alarms.values()} == ALARM_NAMES
    families = _emf_families()
    status_codes = {code.name for code in grpc.StatusCode}
    for alarm in alarms.values():
        properties = alarm["Properties"]
        assert properties["AlarmActions"] == properties["OKActions"] == [{"Ref": "AlarmTopicArn"}]
        assert f"docs/deploy.md#alarm-{_alarm_kind(alarm).lower()}" in properties["AlarmDescription"]
        for metric in _alarm_metrics(alarm):
            if metric["Namespace"] != {"Ref": "AWS::StackName"}:
                assert metric["Namespace"] in ("AWS/ApplicationELB", "ECS/ContainerInsights")
                continue
            dimensions = {d["Name"]: d["Value"] for d in metric["Dimensions"]}
            assert set(dimensions) <= families[metric["MetricName"]], metric
            assert dimensions["Service"] in {name for name, _ in SERVICES}
            if metric["MetricName"] == "rpc_requests" and "code" in dimensions:
                assert dimensions["code"] in status_codes
            if metric["MetricName"] == "dynamodb_errors":
                assert dimensions["code"] in THROTTLING_CODES + SYSTEM_ERROR_CODES
    # One p99 alarm per unary RPC the servers serve (a watch's duration is its length, not latency).
    latency = {
        {d["Name"]: d["Value"] for d in a["Properties"]["Dimensions"]}["method"]
        for a in alarms.values()
        if _alarm_kind(a) == "RpcLatencyP99"
    }
    assert latency == {m for m in METHOD_ROLES if m.startswith("/rewards.v1.")} - set(STREAMING_METHODS)
    assert STREAMING_METHODS == ("/rewards.v1.EventsService/WatchEvents",)
    # Unhealthy targets and too few tasks, for each of the five services.
    for kind in ("UnhealthyTargets", "TasksBelowMinimum"):
        assert sum(_alarm_kind(a) == kind for a in alarms.values()) == len(MODULES)


def test_the_dashboard_shows_every_alarm_and_awards_per_second(stack: dict[str, Any]) -> None:
    (dashboard,) = of_type(stack, "AWS::CloudWatch::Dashboard").values()
    body = dashboard["Properties"]["DashboardBody"]["Fn::Sub"]
    widgets = yaml.safe_load(body)["widgets"]  # JSON is YAML
    (alarm_widget,) = [w for w in widgets if w["type"] == "alarm"]
    assert {a.removeprefix("${").removesuffix(".Arn}") for a in alarm_widget["properties"]["alarms"]} == set(
        of_type(stack, "AWS::CloudWatch::Alarm")
    )
    titles = [w["properties"]["title"] for w in widgets]
    assert titles[0].startswith("Awards per second")
    # Awards per second: AwardXp calls answered OK, as the local Prometheus graph counts them.
    awards = widgets[0]["properties"]["metrics"]
    assert awards[0][:8] == [
        "${AWS::StackName}",
        "rpc_requests",
        "Service",
        "xp",
        "method",
        "/rewards.v1.XpService/AwardXp",
        "code",
        "OK",
    ]
    assert awards[0][8]["id"] == "awards" and awards[2][0]["expression"] == "awards / PERIOD(awards)"
    assert "AwardXp" in awards_per_second() and 'code="OK"' in awards_per_second()


# --- two stages, side by side ------------------------------------------------------------


def test_two_stages_differ_in_defaults_and_share_no_name() -> None:
    prod, staging = _load("prod"), _load("staging")
    assert prod["Parameters"]["TablePrefix"]["Default"] == "rewards-prod-"
    assert staging["Parameters"]["TablePrefix"]["Default"] == "rewards-staging-"
    assert prod["Parameters"]["MinTasks"]["Default"] == 2 > staging["Parameters"]["MinTasks"]["Default"]
    # Apart from the defaults and the description, the two templates are one.
    for stack in (prod, staging):
        for parameter in stack["Parameters"].values():
            parameter.pop("Default", None)
        stack.pop("Description")
    assert prod == staging
    # Every name unique in an account and region comes from the stack's name or its table prefix, so two
    # stages (two stacks) can share one. (ECS service names are unique within their stack's cluster.)
    account_wide = {
        "AWS::DynamoDB::Table": "TableName",
        "AWS::SecretsManager::Secret": "Name",
        "AWS::Logs::LogGroup": "LogGroupName",
        "AWS::ECS::Cluster": "ClusterName",
        "AWS::ECS::TaskDefinition": "Family",
        "AWS::ServiceDiscovery::HttpNamespace": "Name",
        "AWS::CloudWatch::Alarm": "AlarmName",
        "AWS::CloudWatch::Dashboard": "DashboardName",
        "AWS::ApplicationAutoScaling::ScalingPolicy": "PolicyName",
    }
    stack = _load("prod")
    for kind, key in account_wide.items():
        resources = of_type(stack, kind)
        assert resources, kind
        for resource in resources.values():
            name = resource["Properties"][key]
            assert name == {"Ref": "AWS::StackName"} or any(
                f"${{{parameter}}}" in name.get("Fn::Sub", "") for parameter in ("AWS::StackName", "TablePrefix")
            ), (kind, name)
    # Resources CloudFormation names itself (roles, security groups, load balancer, target groups) are unique.
    assert not of_type(stack, "AWS::IAM::Role")["TaskExecutionRole"]["Properties"].get("RoleName")


def test_nothing_is_tied_to_one_account_or_region() -> None:
    for stage in STAGES.values():
        text = stage.path.read_text()
        assert not re.search(r"\b\d{12}\b", text)  # no account id
        assert not re.search(r"\b(us|eu|ap|sa|ca|me|af)-(east|west|north|south|central|northeast|southeast)-\d\b", text)
        assert "arn:aws:" not in text  # partitions come from AWS::Partition
