"""Caps per period against real servers and DynamoDB Local: of any number of
concurrent awards, exactly the cap's count; the others are recorded with no
XP, count toward nothing, and a retry says the same."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc

from rewards.v1 import xp_pb2
from tests.cluster import Cluster, rpc_error, unique


def put_capped(cluster: Cluster, max_awards: int, period: int = xp_pb2.PERIOD_DAY) -> str:
    activity_id = unique("daily")
    activity = xp_pb2.Activity(
        activity_id=activity_id,
        name="Daily login",
        category="daily",
        xp=10,
        cap=xp_pb2.Cap(max_awards=max_awards, period=period),
    )
    assert cluster.xp.PutActivity(xp_pb2.PutActivityRequest(activity=activity)) == activity
    return activity_id


def award(cluster: Cluster, user_id: str, activity_id: str, request_id: str) -> xp_pb2.AwardXpResponse:
    return cluster.xp.AwardXp(xp_pb2.AwardXpRequest(user_id=user_id, activity_id=activity_id, request_id=request_id))


def counter(cluster: Cluster, user_id: str, key: str) -> int:
    item = cluster.dynamodb.get_item(
        TableName=cluster.table("activity_counts"),
        Key={"user_id": {"S": user_id}, "counter": {"S": key}},
        ConsistentRead=True,
    ).get("Item", {})
    return int(item.get("awards", {}).get("N", "0"))


def test_forty_concurrent_awards_against_a_cap_of_five_let_exactly_five_through(cluster: Cluster) -> None:
    activity = put_capped(cluster, 5)
    user = unique("user")
    with ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(lambda i: award(cluster, user, activity, f"r{i}"), range(40)))
        retries = list(pool.map(lambda i: award(cluster, user, activity, f"r{i}"), range(40)))

    assert sum(not a.capped for a in answers) == 5
    assert {(a.xp_awarded, a.capped) for a in answers} == {(10, False), (0, True)}
    # A retry says what its original said.
    assert [(r.duplicate, r.capped, r.xp_awarded) for r in retries] == [(True, a.capped, a.xp_awarded) for a in answers]
    progress = cluster.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user))
    assert progress.total_xp == 50
    # Capped awards count toward nothing.
    assert (counter(cluster, user, f"a#{activity}"), counter(cluster, user, "c#daily")) == (5, 5)
    history = cluster.xp.ListXpHistory(xp_pb2.ListXpHistoryRequest(user_id=user, page_size=100)).entries
    assert sorted((e.xp, e.capped) for e in history) == [(0, True)] * 35 + [(10, False)] * 5

    # A capped entry has nothing to revoke; a revoke of a counted one frees no slot.
    capped_id = next(e.entry_id for e in history if e.capped)
    refused = rpc_error(
        lambda: cluster.xp.RevokeAward(xp_pb2.RevokeAwardRequest(user_id=user, entry_id=capped_id, reason="r"))
    )
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    counted_id = next(e.entry_id for e in history if not e.capped)
    cluster.xp.RevokeAward(xp_pb2.RevokeAwardRequest(user_id=user, entry_id=counted_id, reason="cheated"))
    assert award(cluster, user, activity, "after-revoke").capped


def test_a_cap_is_per_user_and_another_user_has_their_own(cluster: Cluster) -> None:
    activity = put_capped(cluster, 1, xp_pb2.PERIOD_WEEK)
    first, second = unique("user"), unique("user")
    assert not award(cluster, first, activity, "a").capped
    assert award(cluster, first, activity, "b").capped
    assert not award(cluster, second, activity, "a").capped


def test_a_cap_without_a_period_is_invalid_argument_naming_it(cluster: Cluster) -> None:
    activity = xp_pb2.Activity(activity_id=unique("bad-cap"), name="x", xp=1, cap=xp_pb2.Cap(max_awards=3))
    error = rpc_error(lambda: cluster.xp.PutActivity(xp_pb2.PutActivityRequest(activity=activity)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("activity.cap.period ")
    # max_awards 0 is no cap, whatever the period.
    uncapped = xp_pb2.Activity(activity_id=unique("free"), name="x", xp=1, cap=xp_pb2.Cap(period=xp_pb2.PERIOD_DAY))
    assert not cluster.xp.PutActivity(xp_pb2.PutActivityRequest(activity=uncapped)).HasField("cap")
