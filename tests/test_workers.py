"""REWARDS_WORKERS: several processes of one service on one port
(SO_REUSEPORT); the kernel spreads connections over them, each serves, and
SIGTERM stops them all."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import grpc

from devcluster.dynamodb_local import REPO_ROOT, free_port
from devcluster.readiness import wait_grpc_serving
from rewards.v1 import levels_pb2, levels_pb2_grpc
from tests.cluster import TEST_AUTH_SECRET, authorized_channel
from tests.emf_spec import check_emf_line

CALLS = 60


def _two_free_ports() -> int:
    """A port p with p + 1 free too (worker 1 serves metrics on p + 1)."""
    while True:
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("", port + 1))
                return port
            except OSError:
                continue


def _served(metrics_port: int) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    pattern = r'rewards_rpc_requests_total\{code="OK",method="/rewards.v1.LevelsService/ListLevels"\} (\S+)'
    found = re.search(pattern, text)
    return int(float(found.group(1))) if found else 0


def test_two_workers_share_one_port_and_both_serve(dynamodb_endpoint: str, tmp_path: Path) -> None:
    port, metrics_port = free_port(), _two_free_ports()
    env = {
        **os.environ,
        "REWARDS_DYNAMODB_ENDPOINT": dynamodb_endpoint,
        "REWARDS_TABLE_PREFIX": f"workers-{uuid.uuid4().hex[:8]}-",
        "REWARDS_LEVELS_LISTEN": f"127.0.0.1:{port}",
        "REWARDS_LEVELS_METRICS_PORT": str(metrics_port),
        "REWARDS_AUTH_JWT_SECRET": TEST_AUTH_SECRET,
        "REWARDS_WORKERS": "2",
        # Each worker writes its own CloudWatch metrics (the same stdout): together, every call once.
        "REWARDS_CLOUDWATCH_METRICS_NAMESPACE": "rewards-test",
    }
    log = tmp_path / "levels.log"
    emf = tmp_path / "levels.stdout"
    process = subprocess.Popen(
        [sys.executable, "-m", "levels_service"], cwd=REPO_ROOT, env=env, stdout=open(emf, "wb"), stderr=open(log, "wb")
    )
    try:
        assert wait_grpc_serving(port), log.read_text()
        for _ in range(CALLS):  # a new connection each time: the kernel picks a worker per connection
            with authorized_channel(f"127.0.0.1:{port}") as channel:
                levels_pb2_grpc.LevelsServiceStub(channel).ListLevels(levels_pb2.ListLevelsRequest(), timeout=10)
        per_worker = [_served(metrics_port), _served(metrics_port + 1)]
        assert sum(per_worker) == CALLS
        assert min(per_worker) > 0, per_worker
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert log.read_text().count('"stopped"') == 2
        lines = [check_emf_line(line) for line in emf.read_text().splitlines()]
        list_levels = [
            d["rpc_requests"]
            for d in lines
            if d.get("method") == "/rewards.v1.LevelsService/ListLevels" and d.get("code") == "OK"
        ]
        # Written at SIGTERM by each worker (the interval, 60 s, never came): one line a worker.
        assert sorted(list_levels) == sorted(per_worker)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:  # nothing listens any more
        try:
            grpc.channel_ready_future(channel).result(timeout=1)
            raise AssertionError("a worker outlived SIGTERM")
        except grpc.FutureTimeoutError:
            pass
