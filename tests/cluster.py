"""The three servers, started in the test process on free ports against the
session's DynamoDB Local, each cluster with its own table prefix. The servers
are grpc.aio servers on one event loop that runs in a thread of its own; the
tests call them over real sockets with synchronous stubs."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import replace
from datetime import datetime
from typing import Any

import boto3
import grpc
import pytest
from opentelemetry.trace import Tracer

from achievements_service import server as achievements_server
from common.caller_auth import BearerTokenInterceptor, Role, TokenAuthority
from common.config import Settings
from common.dynamodb import ALL_TABLES, DynamoDBClient, create_dynamodb_client, ensure_tables
from events_service import server as events_server
from levels_service import server as levels_server
from rewards.v1 import (
    achievements_pb2_grpc,
    events_pb2_grpc,
    levels_pb2,
    levels_pb2_grpc,
    xp_pb2_grpc,
)
from xp_service import server as xp_server

# The key every test cluster's servers verify tokens with.
TEST_AUTH_SECRET = "test-only-secret-" + "0123456789abcdef" * 2
TEST_AUTHORITY = TokenAuthority(TEST_AUTH_SECRET)


def mint_test_token(role: Role = Role.ADMIN, subject: str = "tests", ttl_s: float = 3600) -> str:
    return TEST_AUTHORITY.mint(role, subject, ttl_s)


def authorized_channel(
    address: str, role: Role = Role.ADMIN, options: list[tuple[str, object]] | None = None
) -> grpc.Channel:
    """A plaintext channel whose calls carry a test token of `role`."""
    return grpc.intercept_channel(
        grpc.insecure_channel(address, options=options or []), BearerTokenInterceptor(mint_test_token(role))
    )


STANDARD_LEVELS = [
    levels_pb2.Level(level=1, xp_required=0),
    levels_pb2.Level(level=2, xp_required=100, rewards=[levels_pb2.Reward(reward_id="coins", quantity=100)]),
    levels_pb2.Level(level=3, xp_required=300, rewards=[levels_pb2.Reward(reward_id="coins", quantity=200)]),
    levels_pb2.Level(
        level=4,
        xp_required=600,
        rewards=[levels_pb2.Reward(reward_id="chest", quantity=1), levels_pb2.Reward(reward_id="coins", quantity=300)],
    ),
    levels_pb2.Level(level=5, xp_required=1000, rewards=[levels_pb2.Reward(reward_id="title-veteran", quantity=1)]),
]


class ServerLoop:
    """One event loop in a daemon thread, shared by every test's servers."""

    _shared: ServerLoop | None = None

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="server-loop", daemon=True).start()

    @classmethod
    def shared(cls) -> ServerLoop:
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout_s: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)


class Cluster:
    def __init__(
        self,
        endpoint: str,
        *,
        clock: Callable[[], datetime] | None = None,
        events: bool = False,
        tracer: Tracer | None = None,
        **overrides: Any,
    ) -> None:
        # XP's clock (caps and streaks), when a test sets the time.
        self.clock = clock
        # The servers' tracer (tracing on), when a test looks at their spans.
        self.tracer = tracer
        settings: dict[str, Any] = {
            "dynamodb_endpoint": endpoint,
            "table_prefix": f"test-{uuid.uuid4().hex[:8]}-",
            # Generous, so that a loaded machine does not defer checks; tests of
            # deadlines set their own.
            "level_check_timeout_s": 10.0,
            "auth_jwt_secret": TEST_AUTH_SECRET,
        }
        self.settings = replace(Settings(), **{**settings, **overrides})
        # boto3, for the tests' own look at the tables; the servers share `lean`.
        # Table management (CreateTable, UpdateTable) on a loaded DynamoDB Local can take longer than a
        # request's read timeout: the tests' client waits for it.
        self.dynamodb = create_dynamodb_client(replace(self.settings, dynamodb_read_timeout_s=30.0))
        ensure_tables(self.dynamodb, self.settings.table_prefix)
        self.loop = ServerLoop.shared()
        self.lean = DynamoDBClient(self.settings)
        self._servers: dict[str, grpc.aio.Server] = {}
        self.ports: dict[str, int] = {}
        self._channels: list[grpc.Channel] = []
        # Each after the ones it calls: XP calls Levels and Achievements, Achievements calls Levels.
        self.start("levels")
        self.start("achievements")
        self.start("xp")
        self.xp = xp_pb2_grpc.XpServiceStub(self.channel("xp"))
        self.levels = levels_pb2_grpc.LevelsServiceStub(self.channel("levels"))
        self.achievements = achievements_pb2_grpc.AchievementsServiceStub(self.channel("achievements"))
        # The events service reads the streams for as long as it runs: only for the tests that ask.
        if events:
            self.start("events")
            self.events = events_pb2_grpc.EventsServiceStub(self.channel("events"))

    def _factory(self, name: str) -> Callable[..., Any]:
        servers = {
            "levels": levels_server,
            "xp": xp_server,
            "achievements": achievements_server,
            "events": events_server,
        }
        return servers[name].create_server

    def start(self, name: str, dynamodb: DynamoDBClient | None = None) -> None:
        """Starts (or restarts, on its old port) one server, on the shared
        DynamoDB client or on `dynamodb` (a client of a dead endpoint, say)."""
        settings = replace(
            self.settings,
            levels_target=f"localhost:{self.ports.get('levels', 0)}",
            xp_target=f"localhost:{self.ports.get('xp', 0)}",
            achievements_target=f"localhost:{self.ports.get('achievements', 0)}",
        )
        extra: dict[str, Any] = {"clock": self.clock} if name == "xp" and self.clock is not None else {}
        if self.tracer is not None:
            extra["tracer"] = self.tracer
        server, port = self.loop.run(
            self._factory(name)(f"localhost:{self.ports.get(name, 0)}", settings, dynamodb or self.lean, **extra)
        )
        self.loop.run(server.start())
        self._servers[name] = server
        self.ports[name] = port

    def stop(self, name: str) -> None:
        self.loop.run(self._servers.pop(name).stop(grace=None))

    def channel(self, name: str, role: Role | None = Role.ADMIN) -> grpc.Channel:
        """A channel to one server whose calls carry a token of `role` (None: no token)."""
        address = f"localhost:{self.ports[name]}"
        channel = grpc.insecure_channel(address) if role is None else authorized_channel(address, role)
        self._channels.append(channel)
        return channel

    def dynamodb_resource(self) -> Any:
        """boto3's resource API on the cluster's DynamoDB, for tests that write many items at once."""
        return boto3.resource(
            "dynamodb", endpoint_url=self.settings.dynamodb_endpoint, region_name=self.settings.aws_region
        )

    def table(self, name: str) -> str:
        return self.settings.table_prefix + name

    def put_levels(self, levels: list[levels_pb2.Level]) -> None:
        for level in levels:
            self.levels.PutLevel(levels_pb2.PutLevelRequest(level=level))

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        for name in list(self._servers):
            self.stop(name)
        self.loop.run(self.lean.close())

    def drop_tables(self) -> None:
        """Deletes this cluster's tables (after close): a DynamoDB Local shared by
        the whole session slows down as tables pile up in it."""
        for table in ALL_TABLES:
            try:
                self.dynamodb.delete_table(TableName=self.table(table.name))
            except self.dynamodb.exceptions.ResourceNotFoundException:
                pass


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    """The error a call ends with; fails the test if the call succeeds."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def fill_progress_to_the_byte(cluster: Cluster, user_id: str, **attributes: Any) -> None:
    """A progress item as an earlier version could leave it: its unlocked ids
    kept in it (`unlocked_achievements`), filled to DynamoDB's 400 KB, so that
    any write that grows the item fails validation. `attributes` (DynamoDB
    JSON) are put with it."""
    held = [f"{i:04d}" + "\U00010348" * 120 for i in range(900)]  # about 430 KB in all

    def put(ids: list[str]) -> bool:
        try:
            cluster.dynamodb.put_item(
                TableName=cluster.table("user_progress"),
                Item={"user_id": {"S": user_id}, "unlocked_achievements": {"SS": ids}, **attributes},
            )
            return True
        except cluster.dynamodb.exceptions.ClientError as error:
            assert error.response["Error"]["Code"] == "ValidationException", error
            return False

    low, high = 1, len(held)  # the most ids that fit, then one more id as long as still fits
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if put(held[:middle]) else (low, middle - 1)
    fitting = held[:low]
    short, long = 1, 2000
    while short < long:
        middle = (short + long + 1) // 2
        short, long = (middle, long) if put([*fitting, "x" * middle]) else (short, middle - 1)
    assert put([*fitting, "x" * short]) and not put([*fitting, "x" * (short + 1)])  # full to the byte
