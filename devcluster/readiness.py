"""Waiting for a started process to serve: a gRPC server until its health
check says SERVING, the HTTP gateway until GET /healthz answers 200 (Prometheus: /-/ready). Used by
the local cluster, the tests' process clusters and the benchmark."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _exited(process: subprocess.Popen[bytes] | None) -> bool:
    return process is not None and process.poll() is not None


def wait_grpc_serving(port: int, process: subprocess.Popen[bytes] | None = None, timeout_s: float = 30) -> bool:
    """True once the server on `port` reports SERVING; False after timeout_s,
    or as soon as `process` (the server just started) has exited."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(f"localhost:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and not _exited(process):
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)  # type: ignore[attr-defined]
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    return False


def wait_http_healthy(
    base_url: str, process: subprocess.Popen[bytes] | None = None, timeout_s: float = 30, path: str = "/healthz"
) -> bool:
    """True once GET {base_url}{path} answers 200; False after timeout_s, or
    as soon as `process` has exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not _exited(process):
        try:
            with urllib.request.urlopen(f"{base_url}{path}", timeout=1) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return False
