"""The catalog caches stay correct when another replica changes the catalog.

XP keeps activities in memory, and the award's transaction checks the cached
XP against the catalog item; Levels answers "nothing due" from a copy of the
level table at most REWARDS_LEVEL_TABLE_CACHE_S old, and grants only while the
table is at the version it planned on. Each test runs a second replica of a service on the same
tables, as a deployment with several tasks does."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import grpc
import pytest

from levels_service import server as levels_server
from rewards.v1 import levels_pb2, levels_pb2_grpc, xp_pb2, xp_pb2_grpc
from tests.cluster import STANDARD_LEVELS, Cluster, authorized_channel, rpc_error, unique
from xp_service import server as xp_server

Factory = Callable[..., Cluster]


@pytest.fixture
def replicas() -> Iterator[Callable[[Cluster, str], grpc.Channel]]:
    """Starts another replica of a cluster's service (same tables, same peers)."""
    servers: list[tuple[Cluster, grpc.aio.Server]] = []
    channels: list[grpc.Channel] = []

    def start(c: Cluster, name: str) -> grpc.Channel:
        settings = replace(c.settings, levels_target=f"localhost:{c.ports['levels']}")
        factory = {"xp": xp_server, "levels": levels_server}[name].create_server
        server, port = c.loop.run(factory("localhost:0", settings, c.lean))
        c.loop.run(server.start())
        servers.append((c, server))
        channels.append(authorized_channel(f"localhost:{port}"))
        return channels[-1]

    yield start
    for channel in channels:
        channel.close()
    for c, server in servers:
        c.loop.run(server.stop(None))


def award(xp: xp_pb2_grpc.XpServiceStub, user_id: str, activity_id: str) -> xp_pb2.AwardXpResponse:
    response: xp_pb2.AwardXpResponse = xp.AwardXp(
        xp_pb2.AwardXpRequest(user_id=user_id, activity_id=activity_id, request_id=unique("r")), timeout=10
    )
    return response


def test_an_award_pays_what_the_catalog_says_now_after_another_replica_changed_it(
    new_cluster: Factory, replicas: Callable[[Cluster, str], grpc.Channel], user_id: str
) -> None:
    c = new_cluster()
    other = xp_pb2_grpc.XpServiceStub(replicas(c, "xp"))
    c.xp.PutActivity(xp_pb2.PutActivityRequest(activity=xp_pb2.Activity(activity_id="quest", name="Q", xp=10)))
    assert award(c.xp, user_id, "quest").xp_awarded == 10  # c.xp now holds "quest" at 10 XP
    other.PutActivity(xp_pb2.PutActivityRequest(activity=xp_pb2.Activity(activity_id="quest", name="Q", xp=25)))
    changed = award(c.xp, user_id, "quest")
    assert (changed.xp_awarded, changed.total_xp) == (25, 35)
    other.DeleteActivity(xp_pb2.DeleteActivityRequest(activity_id="quest"))
    error = rpc_error(lambda: award(c.xp, user_id, "quest"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert c.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user_id)).total_xp == 35


def test_a_stale_level_table_never_grants_and_a_due_level_comes_within_the_cache_time(
    new_cluster: Factory, replicas: Callable[[Cluster, str], grpc.Channel], user_id: str
) -> None:
    c = new_cluster(level_table_cache_s=1.0)
    c.put_levels(STANDARD_LEVELS)  # level 2 at 100 XP
    other = levels_pb2_grpc.LevelsServiceStub(replicas(c, "levels"))

    def grant(amount: int) -> xp_pb2.AwardXpResponse:
        response: xp_pb2.AwardXpResponse = c.xp.GrantXp(
            xp_pb2.GrantXpRequest(user_id=user_id, amount=amount, reason="t", request_id=unique("g")), timeout=10
        )
        return response

    assert grant(50).level == 1  # c's Levels now holds the table with level 2 at 100 XP
    # Another replica raises level 2 to 500 XP: c's copy says 150 XP is level 2, the table says not.
    other.PutLevel(
        levels_pb2.PutLevelRequest(
            level=levels_pb2.Level(level=2, xp_required=500, rewards=STANDARD_LEVELS[1].rewards)
        ),
        timeout=10,
    )
    # Level 3 (300 XP) cannot come before level 2 either.
    other.PutLevel(levels_pb2.PutLevelRequest(level=levels_pb2.Level(level=3, xp_required=600)), timeout=10)
    other.PutLevel(levels_pb2.PutLevelRequest(level=levels_pb2.Level(level=4, xp_required=700)), timeout=10)
    stale = grant(100)
    assert (stale.total_xp, stale.level, stale.level_up.leveled_up) == (150, 1, False)
    assert c.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user_id)).rewards == []
    # The other way: level 2 lowered to 120 XP. Within the cache time c may still say "nothing due";
    # once its copy is older than that, the next check grants it.
    other.PutLevel(
        levels_pb2.PutLevelRequest(
            level=levels_pb2.Level(level=2, xp_required=120, rewards=STANDARD_LEVELS[1].rewards)
        ),
        timeout=10,
    )
    time.sleep(1.1)
    due = grant(1)
    assert (due.level, due.level_up.leveled_up, list(due.level_up.rewards)) == (
        2,
        True,
        list(STANDARD_LEVELS[1].rewards),
    )


def test_a_level_change_through_the_same_replica_is_seen_at_once(new_cluster: Factory, user_id: str) -> None:
    c = new_cluster(level_table_cache_s=3600.0)
    c.put_levels(STANDARD_LEVELS)
    first = c.xp.GrantXp(xp_pb2.GrantXpRequest(user_id=user_id, amount=60, reason="t", request_id="a"), timeout=10)
    assert first.level == 1
    c.levels.PutLevel(levels_pb2.PutLevelRequest(level=levels_pb2.Level(level=2, xp_required=60)), timeout=10)
    # The Levels process that made the change checks from the new table at once. (XP, another
    # process, asks it only from its own copy's next refresh: the bound is the cache time.)
    checked = c.levels.CheckLevelUp(levels_pb2.CheckLevelUpRequest(user_id=user_id, request_id="c"), timeout=10)
    assert (checked.current_level, checked.leveled_up) == (2, True)
