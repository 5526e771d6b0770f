"""The four real entry points (`python -m xp_service` ...) as separate
processes on free ports, with tables of their own: for tests of what only a
process shows (health, reflection through grpcurl, metrics, logs, SIGTERM).
On request, the HTTP/JSON gateway (`python -m gateway`) in front of them."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from devcluster.dynamodb_local import REPO_ROOT, free_port
from devcluster.readiness import wait_grpc_serving, wait_http_healthy
from tests.cluster import TEST_AUTH_SECRET

SERVICES = {
    "levels": "levels_service",
    "xp": "xp_service",
    "achievements": "achievements_service",
    "events": "events_service",
}
# What one service gets on top of the cluster's environment (a test's extra_env still wins): the
# events service takes the tests' http:// webhook receivers, and reads the streams every second (most
# process clusters test something else, and its polling loads the session's one DynamoDB Local; a test
# of events sets a shorter interval).
SERVICE_ENV: dict[str, dict[str, str]] = {
    "events": {"REWARDS_EVENTS_POLL_S": "1.0", "REWARDS_WEBHOOKS_ALLOW_HTTP": "true"},
}
GATEWAY = "gateway"


@dataclass
class ProcessCluster:
    ports: dict[str, int]
    metrics_ports: dict[str, int]
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # The gateway's HTTP port, when it was started (`gateway=True`).
    gateway_port: int | None = None

    @property
    def gateway_url(self) -> str:
        assert self.gateway_port is not None, "started without the gateway"
        return f"http://127.0.0.1:{self.gateway_port}"

    def stop(self) -> None:
        # The gateway first, as `make down` does: it calls the services.
        for name in sorted(self.processes, key=lambda name: name != GATEWAY):
            process = self.processes[name]
            if process.poll() is None:
                process.kill()
                process.wait()


def start_process_cluster(
    dynamodb_endpoint: str,
    logs: Path,
    *,
    metrics: bool = True,
    extra_env: dict[str, str] | None = None,
    gateway: bool = False,
) -> ProcessCluster:
    """Starts the four services and waits until each reports SERVING. Without
    `metrics` the side ports are off (port 0). With `gateway`, then starts the
    HTTP/JSON gateway on a free port of 127.0.0.1 and waits until its /healthz
    answers 200."""
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
            [sys.executable, "-m", module],
            cwd=REPO_ROOT,
            env={**env, **{k: v for k, v in SERVICE_ENV.get(name, {}).items() if k not in (extra_env or {})}},
            # Logs on stderr; stdout has only the CloudWatch metrics' lines, when a test turns them on.
            stdout=open(logs / f"{name}.stdout", "wb"),
            stderr=open(logs / f"{name}.log", "wb"),
        )
    for name, port in cluster.ports.items():
        if not wait_grpc_serving(port):
            cluster.stop()
            raise AssertionError(f"{name} did not become healthy:\n" + (logs / f"{name}.log").read_text())
    if gateway:
        cluster.gateway_port = free_port()
        cluster.processes[GATEWAY] = subprocess.Popen(
            [sys.executable, "-m", "gateway"],
            cwd=REPO_ROOT,
            env={**env, "REWARDS_GATEWAY_HOST": "127.0.0.1", "REWARDS_GATEWAY_PORT": str(cluster.gateway_port)},
            stdout=subprocess.DEVNULL,
            stderr=open(logs / f"{GATEWAY}.log", "wb"),
        )
        if not wait_http_healthy(cluster.gateway_url, cluster.processes[GATEWAY]):
            cluster.stop()
            raise AssertionError(f"{GATEWAY} did not become healthy:\n" + (logs / f"{GATEWAY}.log").read_text())
    return cluster
