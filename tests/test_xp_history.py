"""The XP history and the operator's corrections, against real servers and
DynamoDB Local: ListXpHistory newest first in pages, AdjustXp and RevokeAward
exactly once whatever the retries and races, never below zero, levels kept."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import grpc

from common.config import Settings
from common.dynamodb import XP_LEDGER, create_dynamodb_client, ensure_tables
from rewards.v1 import xp_pb2
from tests.cluster import Cluster, rpc_error, unique


def put_activity(cluster: Cluster, xp: int = 150, category: str = "pvp") -> str:
    activity_id = unique("act")
    cluster.xp.PutActivity(
        xp_pb2.PutActivityRequest(
            activity=xp_pb2.Activity(activity_id=activity_id, name="Win", category=category, xp=xp)
        )
    )
    return activity_id


def award(cluster: Cluster, user_id: str, activity_id: str, request_id: str) -> xp_pb2.AwardXpResponse:
    return cluster.xp.AwardXp(xp_pb2.AwardXpRequest(user_id=user_id, activity_id=activity_id, request_id=request_id))


def adjust(cluster: Cluster, user_id: str, delta: int, request_id: str = "") -> xp_pb2.AwardXpResponse:
    return cluster.xp.AdjustXp(
        xp_pb2.AdjustXpRequest(user_id=user_id, delta=delta, reason="support ticket 42", request_id=request_id)
    )


def revoke(cluster: Cluster, user_id: str, *, request_id: str = "", entry_id: str = "") -> xp_pb2.AwardXpResponse:
    return cluster.xp.RevokeAward(
        xp_pb2.RevokeAwardRequest(user_id=user_id, request_id=request_id, entry_id=entry_id, reason="cheated")
    )


def history(cluster: Cluster, user_id: str, page_size: int = 100) -> list[xp_pb2.LedgerEntry]:
    entries: list[xp_pb2.LedgerEntry] = []
    token = ""
    while True:
        page = cluster.xp.ListXpHistory(
            xp_pb2.ListXpHistoryRequest(user_id=user_id, page_size=page_size, page_token=token)
        )
        entries += page.entries
        token = page.next_page_token
        if not token:
            return entries


def total_and_level(cluster: Cluster, user_id: str) -> tuple[int, int]:
    progress = cluster.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user_id))
    return progress.total_xp, progress.level


def counter(cluster: Cluster, user_id: str, key: str) -> int:
    item = cluster.dynamodb.get_item(
        TableName=cluster.table("activity_counts"),
        Key={"user_id": {"S": user_id}, "counter": {"S": key}},
        ConsistentRead=True,
    ).get("Item", {})
    return int(item.get("awards", {}).get("N", "0"))


def test_history_lists_every_kind_newest_first(cluster: Cluster) -> None:
    activity = put_activity(cluster, xp=150)
    user = unique("user")
    award(cluster, user, activity, "m1")
    cluster.xp.GrantXp(xp_pb2.GrantXpRequest(user_id=user, amount=25, reason="bonus", request_id="g1"))
    adjust(cluster, user, -10, "a1")
    revoke(cluster, user, request_id="m1")

    entries = history(cluster, user, page_size=2)
    kinds = [e.kind for e in entries]
    assert kinds == [
        xp_pb2.LedgerEntry.KIND_REVOKE,
        xp_pb2.LedgerEntry.KIND_ADJUSTMENT,
        xp_pb2.LedgerEntry.KIND_GRANT,
        xp_pb2.LedgerEntry.KIND_ACTIVITY,
    ]
    assert [e.xp for e in entries] == [-150, -10, 25, 150]
    assert (entries[0].entry_id, entries[0].reverses_entry_id, entries[0].activity_id) == (
        "rev#req#m1",
        "req#m1",
        activity,
    )
    assert (entries[1].request_id, entries[1].reason) == ("a1", "support ticket 42")
    assert all(e.recorded_at.seconds > 0 for e in entries)
    assert [e.recorded_at.ToNanoseconds() for e in entries] == sorted(
        (e.recorded_at.ToNanoseconds() for e in entries), reverse=True
    )


def test_history_pages_through_ten_thousand_entries_without_gaps_or_repeats(cluster: Cluster) -> None:
    user = unique("user")
    # Written straight to the ledger (10,000 awards through the service would take minutes); ten
    # entries share each time, so the pages' ends fall between equal timestamps too.
    with cluster.dynamodb_resource().Table(cluster.table("xp_ledger")).batch_writer() as batch:
        for i in range(10_000):
            batch.put_item(
                Item={
                    "user_id": user,
                    "entry_id": f"req#h{i:05d}",
                    "request_id": f"h{i:05d}",
                    "kind": "grant",
                    "xp": 1,
                    "reason": "history test",
                    "recorded_at": f"2026-01-01T00:{i // 600:02d}:{(i // 10) % 60:02d}.000000Z",
                }
            )
    entries = history(cluster, user, page_size=100)
    assert len(entries) == 10_000
    assert len({e.entry_id for e in entries}) == 10_000
    times = [e.recorded_at.ToNanoseconds() for e in entries]
    assert times == sorted(times, reverse=True)


def test_adjust_is_idempotent_signed_and_never_below_zero(cluster: Cluster) -> None:
    user = unique("user")
    assert adjust(cluster, user, 400, "up").total_xp == 400
    again = adjust(cluster, user, 400, "up")
    assert (again.duplicate, again.xp_awarded, again.total_xp) == (True, 400, 400)
    down = adjust(cluster, user, -150, "down")
    assert (down.xp_awarded, down.total_xp) == (-150, 250)

    refused = rpc_error(lambda: adjust(cluster, user, -251, "too-much"))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "below zero" in (refused.details() or "")
    reused = rpc_error(lambda: adjust(cluster, user, -100, "up"))  # another delta under a used request id
    assert reused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert total_and_level(cluster, user)[0] == 250
    assert len(history(cluster, user)) == 2  # the refused ones wrote nothing


def test_concurrent_revokes_of_one_award_subtract_once_and_keep_the_level(cluster: Cluster) -> None:
    activity = put_activity(cluster, xp=150, category="pvp")
    user = unique("user")
    first = award(cluster, user, activity, "m1")
    award(cluster, user, activity, "m2")
    assert (first.level, counter(cluster, user, f"a#{activity}"), counter(cluster, user, "c#pvp")) == (2, 2, 2)
    level_before = total_and_level(cluster, user)[1]

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: revoke(cluster, user, request_id="m1"), range(20)))
    assert sum(not a.duplicate for a in answers) == 1
    assert {(a.xp_awarded, a.total_xp) for a in answers} == {(-150, 150)}
    assert total_and_level(cluster, user) == (150, level_before)  # levels reached stay
    assert (counter(cluster, user, f"a#{activity}"), counter(cluster, user, "c#pvp")) == (1, 1)

    # By entry id, from the history, for the same entry: a duplicate again.
    by_entry = revoke(cluster, user, entry_id="req#m1")
    assert (by_entry.duplicate, by_entry.total_xp) == (True, 150)
    revokes = [e for e in history(cluster, user) if e.kind == xp_pb2.LedgerEntry.KIND_REVOKE]
    assert [(e.entry_id, e.xp) for e in revokes] == [("rev#req#m1", -150)]


def test_what_cannot_be_revoked_says_why_and_writes_nothing(cluster: Cluster) -> None:
    activity = put_activity(cluster, xp=100)
    user = unique("user")
    award(cluster, user, activity, "m1")
    adjust(cluster, user, -60, "a1")
    revoke_of_award = rpc_error(lambda: revoke(cluster, user, request_id="m1"))  # 100 > 40 left
    assert revoke_of_award.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "below zero" in (revoke_of_award.details() or "")

    cases = [
        (lambda: revoke(cluster, user, request_id="nope"), grpc.StatusCode.NOT_FOUND, "request_id 'nope'"),
        (lambda: revoke(cluster, user, request_id="a1"), grpc.StatusCode.FAILED_PRECONDITION, "an adjustment"),
        (lambda: revoke(cluster, user), grpc.StatusCode.INVALID_ARGUMENT, "request_id"),
        (
            lambda: revoke(cluster, user, request_id="m1", entry_id="req#m1"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "exactly one",
        ),
    ]
    for call, code, words in cases:
        error = rpc_error(call)
        assert (error.code(), words in (error.details() or "")) == (code, True), error.details()
    adjust(cluster, user, 200, "a2")
    revoke(cluster, user, request_id="m1")
    revoke_of_revoke = rpc_error(lambda: revoke(cluster, user, entry_id="rev#req#m1"))
    assert revoke_of_revoke.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "a revoke" in (revoke_of_revoke.details() or "")
    assert total_and_level(cluster, user)[0] == 100 - 60 + 200 - 100
    assert [e.kind for e in history(cluster, user)].count(xp_pb2.LedgerEntry.KIND_REVOKE) == 1


def test_a_ledger_table_made_before_the_history_gets_its_index(dynamodb_endpoint: str) -> None:
    settings = replace(
        Settings(),
        dynamodb_endpoint=dynamodb_endpoint,
        table_prefix=f"old-{uuid.uuid4().hex[:8]}-",
        dynamodb_read_timeout_s=30.0,  # table management on a loaded DynamoDB Local
    )
    client = create_dynamodb_client(settings)
    # The table as an earlier version made it: no by_time index.
    client.create_table(**replace(XP_LEDGER, string_indexes=()).create_table_params(settings.table_prefix))
    ensure_tables(client, settings.table_prefix)
    indexes = client.describe_table(TableName=settings.table_prefix + XP_LEDGER.name)["Table"]["GlobalSecondaryIndexes"]
    assert [(i["IndexName"], i["IndexStatus"]) for i in indexes] == [("by_time", "ACTIVE")]
