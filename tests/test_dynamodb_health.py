"""A DynamoDB that stops answering, and one that is not there yet, seen from
the real entry points (`python -m xp_service` ...): each service's own health
entry follows whether its process reaches DynamoDB while the server's ""
entry stays the process's liveness, and a service started before DynamoDB
waits for it. DynamoDB is the session's DynamoDB Local behind a TCP proxy that
the tests switch between forwarding, frozen (connections accepted, nothing
answered) and reset (connections accepted and reset)."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from common import health_probe
from common.server_runtime import READINESS_METHOD
from devcluster.dynamodb_local import REPO_ROOT, free_port
from devcluster.readiness import wait_grpc_serving
from rewards.v1 import xp_pb2, xp_pb2_grpc
from tests.cluster import TEST_AUTH_SECRET, authorized_channel
from tests.process_cluster import ProcessCluster, start_process_cluster

SERVICE_ENTRIES = {
    "xp": "rewards.v1.XpService",
    "achievements": "rewards.v1.AchievementsService",
    "levels": "rewards.v1.LevelsService",
    "events": "rewards.v1.EventsService",
}
# The default check interval (2 s) plus its probe's timeout (2 s), and slack for a loaded machine.
DETECTION_LIMIT_S = 8.0


class DynamoDBProxy:
    """Forwards 127.0.0.1:`port` to DynamoDB Local, or, by `mode`: "frozen"
    (connections are accepted and nothing is answered, open ones included:
    a hung DynamoDB), "reset" (connections are accepted and reset at once)."""

    def __init__(self, target_port: int, port: int = 0) -> None:
        self.target_port = target_port
        self.mode = "forward"
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, name="dynamodb-proxy", daemon=True).start()

    def close(self) -> None:
        for s in self._sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            if self.mode == "reset":
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            self._sockets.append(upstream)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if self.mode == "forward":  # frozen: read and drop, so that nothing is ever answered
                    sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def dynamodb_local_port(dynamodb_endpoint: str) -> int:
    return int(dynamodb_endpoint.rsplit(":", 1)[1])


@pytest.fixture
def proxy(dynamodb_local_port: int) -> Iterator[DynamoDBProxy]:
    made = DynamoDBProxy(dynamodb_local_port)
    yield made
    made.close()


@pytest.fixture
def cluster_behind_proxy(proxy: DynamoDBProxy, tmp_path: Path) -> Iterator[ProcessCluster]:
    cluster = start_process_cluster(proxy.endpoint, tmp_path)
    yield cluster
    cluster.stop()


def health_of(port: int, service: str) -> str:
    with grpc.insecure_channel(f"localhost:{port}") as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def readiness_of(port: int) -> str:
    """The gRPC code of READINESS_METHOD, as an ALB health check sees it (an empty request, no token)."""
    with grpc.insecure_channel(f"localhost:{port}") as channel:
        check = channel.unary_unary(READINESS_METHOD, request_serializer=None, response_deserializer=None)
        try:
            check(b"", timeout=5)
        except grpc.RpcError as error:
            return error.code().name
    return "OK"


def wait_until(condition: Callable[[], bool], limit_s: float) -> float:
    """Seconds until `condition` held; fails the test after limit_s."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < limit_s, f"not within {limit_s} s"
        time.sleep(0.1)
    return time.monotonic() - started


def log_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def scrape(port: int, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"http://localhost:{port}/metrics", timeout=5).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def test_a_service_entry_is_not_serving_while_dynamodb_does_not_answer(
    proxy: DynamoDBProxy, cluster_behind_proxy: ProcessCluster
) -> None:
    ports = cluster_behind_proxy.ports
    xp = ports["xp"]
    for name, service in SERVICE_ENTRIES.items():
        assert (health_of(ports[name], service), health_of(ports[name], ""), readiness_of(ports[name])) == (
            "SERVING",
            "SERVING",
            "OK",
        )

    for broken in ("frozen", "reset"):
        proxy.mode = broken
        detected_s = wait_until(lambda: health_of(xp, "rewards.v1.XpService") == "NOT_SERVING", DETECTION_LIMIT_S)
        for name, service in SERVICE_ENTRIES.items():
            wait_until(lambda: health_of(ports[name], service) == "NOT_SERVING", DETECTION_LIMIT_S)
            # The process is alive: its "" entry (liveness) stays SERVING; readiness says UNAVAILABLE.
            assert (health_of(ports[name], ""), readiness_of(ports[name])) == ("SERVING", "UNAVAILABLE")
        assert health_probe.main([f"localhost:{xp}", "rewards.v1.XpService"]) == health_probe.UNHEALTHY
        assert health_probe.main([f"localhost:{xp}"]) == health_probe.HEALTHY
        assert detected_s < DETECTION_LIMIT_S

        proxy.mode = "forward"
        for name, service in SERVICE_ENTRIES.items():
            wait_until(lambda: health_of(ports[name], service) == "SERVING", DETECTION_LIMIT_S)
            assert readiness_of(ports[name]) == "OK"
        assert health_probe.main([f"localhost:{xp}", "rewards.v1.XpService"]) == health_probe.HEALTHY

    changes = [
        (line["message"], line["services"], line["status"])
        for line in log_lines(cluster_behind_proxy.logs / "xp.log")
        if str(line["message"]).startswith("DynamoDB")
    ]
    assert (
        changes
        == [
            ("DynamoDB unreachable", ["rewards.v1.XpService"], "NOT_SERVING"),
            ("DynamoDB answers again", ["rewards.v1.XpService"], "SERVING"),
        ]
        * 2
    )
    metrics = cluster_behind_proxy.metrics_ports["xp"]
    assert scrape(metrics, "rewards_dynamodb_reachable") == 1
    assert scrape(metrics, "rewards_dynamodb_health_probes_total", outcome="unanswered") >= 2


def test_the_health_probe_is_sent_only_when_no_call_got_an_answer(cluster_behind_proxy: ProcessCluster) -> None:
    metrics = cluster_behind_proxy.metrics_ports["xp"]

    def probes() -> float:
        return scrape(metrics, "rewards_dynamodb_health_probes_total", outcome="answered")

    # Idle: one GetItem every 2 s (the default interval).
    before = probes()
    time.sleep(6.5)
    idle = probes() - before
    assert 2 <= idle <= 4
    # Busy: the process's own calls show that DynamoDB answers, so the monitor sends nothing.
    with authorized_channel(f"localhost:{cluster_behind_proxy.ports['xp']}") as channel:
        xp = xp_pb2_grpc.XpServiceStub(channel)
        xp.GrantXp(xp_pb2.GrantXpRequest(user_id="busy", amount=1, reason="r", request_id="warm-up"), timeout=10)
        before = probes()
        until = time.monotonic() + 6.5
        while time.monotonic() < until:
            grant = xp_pb2.GrantXpRequest(user_id="busy", amount=1, reason="r", request_id=uuid.uuid4().hex)
            xp.GrantXp(grant, timeout=10)
            time.sleep(0.2)
        assert probes() - before == 0


def start_xp(endpoint: str, logs: Path, **env: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "xp_service"],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "REWARDS_DYNAMODB_ENDPOINT": endpoint,
            "REWARDS_TABLE_PREFIX": f"start-{uuid.uuid4().hex[:8]}-",
            "REWARDS_XP_LISTEN": f"[::]:{port}",
            "REWARDS_XP_METRICS_PORT": "0",
            "REWARDS_AUTH_JWT_SECRET": TEST_AUTH_SECRET,
            **env,
        },
        stdout=subprocess.DEVNULL,
        stderr=open(logs, "wb"),
    )
    return process, port


def test_a_service_started_before_dynamodb_waits_for_it(dynamodb_local_port: int, tmp_path: Path) -> None:
    dynamodb_port = free_port()  # nothing listens there yet
    process, port = start_xp(f"http://127.0.0.1:{dynamodb_port}", tmp_path / "xp.log")
    try:
        time.sleep(3)
        assert process.poll() is None, (tmp_path / "xp.log").read_text()
        late = DynamoDBProxy(dynamodb_local_port, port=dynamodb_port)  # DynamoDB comes up
        try:
            assert wait_grpc_serving(port, process, timeout_s=30), (tmp_path / "xp.log").read_text()
            assert health_of(port, "rewards.v1.XpService") == "SERVING"
        finally:
            process.terminate()
            assert process.wait(timeout=30) == 0
            late.close()
    finally:
        if process.poll() is None:
            process.kill()
    lines = log_lines(tmp_path / "xp.log")  # every line JSON
    waits = [line for line in lines if line["message"] == "waiting for DynamoDB"]
    assert len(waits) >= 2
    assert [line["attempt"] for line in waits] == list(range(1, len(waits) + 1))
    assert all(line["level"] == "WARNING" and "EndpointConnectionError" in str(line["error"]) for line in waits)
    assert all(0 < float(line["retry_in_s"]) <= 5 for line in waits)  # type: ignore[arg-type]
    assert [line["message"] for line in lines if line["message"] in ("DynamoDB answered", "listening")] == [
        "DynamoDB answered",
        "listening",
    ]


@pytest.mark.parametrize("dynamodb", ["closed port", "frozen"])
def test_a_service_gives_up_on_dynamodb_after_its_startup_wait_with_one_line(
    dynamodb: str, dynamodb_local_port: int, tmp_path: Path
) -> None:
    frozen = DynamoDBProxy(dynamodb_local_port)
    frozen.mode = "frozen"
    endpoint = f"http://127.0.0.1:{free_port()}" if dynamodb == "closed port" else frozen.endpoint
    try:
        started = time.monotonic()
        process, _ = start_xp(endpoint, tmp_path / "xp.log", REWARDS_DYNAMODB_STARTUP_WAIT_S="3")
        assert process.wait(timeout=60) == 1
        # The wait, plus at most one attempt's timeouts (2 s read), plus the interpreter's start.
        assert 3 <= time.monotonic() - started < 12
    finally:
        frozen.close()
    lines = log_lines(tmp_path / "xp.log")  # every line JSON: no traceback
    waits = [line for line in lines if line["message"] == "waiting for DynamoDB"]
    assert len(waits) >= 1
    last = lines[-1]
    assert last["level"] == "ERROR"
    assert last["message"] == "giving up: DynamoDB did not answer within REWARDS_DYNAMODB_STARTUP_WAIT_S (3 s)"
    assert float(last["waited_s"]) >= 3  # type: ignore[arg-type]
    assert last["endpoint"] == endpoint
    assert {"closed port": "EndpointConnectionError", "frozen": "ReadTimeoutError"}[dynamodb] in str(last["error"])
