"""Deadlines propagate from a caller through the services, and SIGTERM lets
in-flight calls finish."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from aiodynamo.credentials import Key

from common.dynamodb import DynamoDBClient
from rewards.v1 import xp_pb2, xp_pb2_grpc
from tests.cluster import Cluster, authorized_channel, unique
from tests.process_cluster import start_process_cluster

Factory = Callable[..., Cluster]


@pytest.fixture
def hung_port() -> Iterator[int]:
    """A port that accepts connections and never answers, like a stuck service."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        yield hung.getsockname()[1]


def test_the_callers_deadline_bounds_the_call_to_levels(
    new_cluster: Factory, user_id: str, hung_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    c = new_cluster(level_check_timeout_s=30.0)  # far longer than the caller will wait
    c.ports["levels"] = hung_port
    c.stop("xp")
    c.start("xp")
    xp = xp_pb2_grpc.XpServiceStub(c.channel("xp"))
    caplog.set_level(logging.INFO, logger="rewards.rpc")
    started = time.monotonic()
    award = xp.GrantXp(xp_pb2.GrantXpRequest(user_id=user_id, amount=5, reason="t", request_id="r"), timeout=1.5)
    # XP gave up on Levels within its caller's deadline, not after its own 30 s, and
    # still answered: the XP is recorded and the check deferred.
    assert time.monotonic() - started < 1.5
    assert (award.xp_awarded, award.total_xp, award.level_check_deferred) == (5, 5, True)
    served = [r.fields for r in caplog.records if r.name == "rewards.rpc" and r.getMessage() == "rpc"]  # type: ignore[attr-defined]
    assert [(f["code"], f["duration_ms"] < 1500) for f in served] == [("OK", True)]


def test_sigterm_lets_in_flight_calls_finish(dynamodb_endpoint: str, tmp_path: Path, hung_port: int) -> None:
    # Awards wait 3 s on a stuck Levels service, so they are surely in flight when SIGTERM comes.
    cluster = start_process_cluster(
        dynamodb_endpoint,
        tmp_path,
        metrics=False,
        extra_env={
            "REWARDS_LEVELS_TARGET": f"127.0.0.1:{hung_port}",
            "REWARDS_LEVEL_CHECK_TIMEOUT_S": "3",
        },
    )
    try:
        channel = authorized_channel(f"localhost:{cluster.ports['xp']}")
        xp = xp_pb2_grpc.XpServiceStub(channel)
        results: list[object] = []

        def award(i: int) -> None:
            try:
                results.append(
                    xp.GrantXp(
                        xp_pb2.GrantXpRequest(user_id=f"drain-{i}", amount=10, reason="t", request_id="r"), timeout=20
                    )
                )
            except grpc.RpcError as error:
                results.append(error.code())

        threads = [threading.Thread(target=award, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        cluster.processes["xp"].send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=30)
        assert cluster.processes["xp"].wait(timeout=30) == 0
        assert len(results) == 6
        assert all(
            isinstance(r, xp_pb2.AwardXpResponse) and r.xp_awarded == 10 and r.level_check_deferred for r in results
        ), results
        with pytest.raises(grpc.RpcError) as refused:  # and nothing new is taken once it stopped
            xp.GetProgress(xp_pb2.GetProgressRequest(user_id="drain-0"), timeout=2)
        assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        channel.close()
    finally:
        cluster.stop()


def test_sdk_retries_stop_at_the_callers_deadline(
    new_cluster: Factory, user_id: str, hung_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    # DynamoDB that never answers: each SDK attempt waits out the read timeout
    # (1 s here), and the SDK would try 3 times; the caller waits 1.5 s.
    c = new_cluster(dynamodb_read_timeout_s=1.0, dynamodb_connect_timeout_s=1.0, dynamodb_max_attempts=3)
    hung = DynamoDBClient(
        replace(
            c.settings,
            dynamodb_endpoint=f"http://127.0.0.1:{hung_port}",
            dynamodb_read_timeout_s=1.0,
            dynamodb_max_attempts=3,
        )
    )
    c.stop("xp")
    c.start("xp", dynamodb=hung)  # XP restarts with a client of the hung endpoint
    try:
        xp = xp_pb2_grpc.XpServiceStub(c.channel("xp"))
        caplog.set_level(logging.INFO, logger="rewards.rpc")
        with pytest.raises(grpc.RpcError) as caught:
            xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user_id), timeout=1.5)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        deadline = time.monotonic() + 10
        served: list[dict[str, object]] = []
        while not served and time.monotonic() < deadline:
            time.sleep(0.1)
            served = [r.fields for r in caplog.records if r.name == "rewards.rpc" and r.getMessage() == "rpc"]  # type: ignore[attr-defined]
        # Two attempts: the first waited its full read timeout (1 s), the second was cut to what was left of
        # the deadline, and the server answered DEADLINE_EXCEEDED itself, before the caller gave up.
        assert [f["code"] for f in served] == ["DEADLINE_EXCEEDED"]
        assert 1000 < float(served[0]["duration_ms"]) < 1500  # type: ignore[arg-type]
    finally:
        c.loop.run(hung.close())


class HangingCredentials:
    """Credentials whose refresh never ends, as when the ECS or EC2 metadata endpoint hangs."""

    async def key(self) -> Key:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


def test_a_hanging_credentials_refresh_stops_at_the_callers_deadline(
    new_cluster: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    c = new_cluster()
    hanging = DynamoDBClient(c.settings, credentials=HangingCredentials())  # type: ignore[arg-type]
    c.stop("xp")
    c.start("xp", dynamodb=hanging)  # XP restarts with a client whose credentials never come
    try:
        xp = xp_pb2_grpc.XpServiceStub(c.channel("xp"))
        caplog.set_level(logging.INFO, logger="rewards.rpc")
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            xp.GetActivity(xp_pb2.GetActivityRequest(activity_id=unique("a")), timeout=1.0)
        assert time.monotonic() - started < 1.5
        # The server answered, at the deadline: gRPC did not have to cancel the call.
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert caught.value.details() == "the caller's deadline passed before credentials answered"
        served = [r.fields for r in caplog.records if r.name == "rewards.rpc" and r.getMessage() == "rpc"]  # type: ignore[attr-defined]
        assert [f["code"] for f in served] == ["DEADLINE_EXCEEDED"]
        assert float(served[0]["duration_ms"]) < 1000  # type: ignore[arg-type]
    finally:
        c.loop.run(hanging.close())
