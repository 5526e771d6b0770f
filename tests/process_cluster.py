"""The three real entry points (`python -m xp_service` ...) as separate
processes on free ports, with tables of their own: for tests of what only a
process shows (health, reflection through grpcurl, metrics, logs, SIGTERM)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devcluster.dynamodb_local import REPO_ROOT, free_port
from tests.cluster import TEST_AUTH_SECRET

SERVICES = {"levels": "levels_service", "xp": "xp_service", "achievements": "achievements_service"}


@dataclass
class ProcessCluster:
    ports: dict[str, int]
    metrics_ports: dict[str, int]
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def start_process_cluster(dynamodb_endpoint: str, logs: Path, *, metrics: bool = True,
                          extra_env: dict[str, str] | None = None) -> ProcessCluster:
    """Starts the three services and waits until each reports SERVING. Without
    `metrics` the side ports are off (port 0)."""
    cluster = ProcessCluster(
        ports={name: free_port() for name in SERVICES},
        metrics_ports={name: free_port() if metrics else 0 for name in SERVICES},
        logs=logs,
    )
    env = {
        **os.environ,
        "REWARDS_DYNAMODB_ENDPOINT": dynamodb_endpoint,
        "REWARDS_TABLE_PREFIX": f"proc-{uuid.uuid4().hex[:8]}-",
        **{f"REWARDS_{name.upper()}_LISTEN": f"[::]:{port}" for name, port in cluster.ports.items()},
        **{f"REWARDS_{name.upper()}_TARGET": f"localhost:{port}" for name, port in cluster.ports.items()},
        **{f"REWARDS_{name.upper()}_METRICS_PORT": str(port) for name, port in cluster.metrics_ports.items()},
        "REWARDS_AUTH_JWT_SECRET": TEST_AUTH_SECRET,
        **(extra_env or {}),
    }
    for name, module in SERVICES.items():
        cluster.processes[name] = subprocess.Popen(
            [sys.executable, "-m", module], cwd=REPO_ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=open(logs / f"{name}.log", "wb"),
        )
    for name, port in cluster.ports.items():
        if not wait_serving(port):
            cluster.stop()
            raise AssertionError(f"{name} did not become healthy:\n" + (logs / f"{name}.log").read_text())
    return cluster


def wait_serving(port: int, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(f"localhost:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)  # type: ignore[attr-defined]
                return bool(response.status == health_pb2.HealthCheckResponse.SERVING)
            except grpc.RpcError:
                time.sleep(0.2)
    return False
