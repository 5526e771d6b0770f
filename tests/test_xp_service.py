"""XpService against real servers and DynamoDB Local."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from boto3.dynamodb.types import TypeDeserializer

from rewards.v1 import xp_pb2
from tests.cluster import Cluster, fill_progress_to_the_byte, rpc_error, unique


def put_activity(cluster: Cluster, xp: int, category: str = "") -> str:
    activity_id = unique("activity")
    cluster.xp.PutActivity(
        xp_pb2.PutActivityRequest(
            activity=xp_pb2.Activity(activity_id=activity_id, name="Win a match", category=category, xp=xp)
        )
    )
    return activity_id


def award(cluster: Cluster, user_id: str, activity_id: str, request_id: str = "") -> xp_pb2.AwardXpResponse:
    return cluster.xp.AwardXp(xp_pb2.AwardXpRequest(user_id=user_id, activity_id=activity_id, request_id=request_id))


def total_xp(cluster: Cluster, user_id: str) -> int:
    return cluster.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user_id)).total_xp


def ledger(cluster: Cluster, user_id: str) -> list[dict]:
    items = cluster.dynamodb.query(
        TableName=cluster.table("xp_ledger"),
        KeyConditionExpression="user_id = :u",
        ExpressionAttributeValues={":u": {"S": user_id}},
        ConsistentRead=True,
    )["Items"]
    d = TypeDeserializer()
    return [{k: d.deserialize(v) for k, v in item.items()} for item in items]


# --- catalog --------------------------------------------------------------------


def test_put_get_delete_activity(cluster: Cluster) -> None:
    activity = xp_pb2.Activity(
        activity_id=unique("a"), name="Daily login", description="Log in", category="daily", xp=25
    )
    assert cluster.xp.PutActivity(xp_pb2.PutActivityRequest(activity=activity)) == activity
    assert cluster.xp.GetActivity(xp_pb2.GetActivityRequest(activity_id=activity.activity_id)) == activity

    changed = xp_pb2.Activity(activity_id=activity.activity_id, name="Daily login", xp=30)
    cluster.xp.PutActivity(xp_pb2.PutActivityRequest(activity=changed))
    assert cluster.xp.GetActivity(xp_pb2.GetActivityRequest(activity_id=activity.activity_id)).xp == 30

    cluster.xp.DeleteActivity(xp_pb2.DeleteActivityRequest(activity_id=activity.activity_id))
    error = rpc_error(lambda: cluster.xp.GetActivity(xp_pb2.GetActivityRequest(activity_id=activity.activity_id)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert activity.activity_id in error.details()
    error = rpc_error(lambda: cluster.xp.DeleteActivity(xp_pb2.DeleteActivityRequest(activity_id=activity.activity_id)))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_list_activities_pages_and_filters_by_category(cluster: Cluster) -> None:
    category = unique("cat")
    ids = {put_activity(cluster, xp=i, category=category) for i in range(7)}
    put_activity(cluster, xp=1, category="other")

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = cluster.xp.ListActivities(xp_pb2.ListActivitiesRequest(category=category, page_size=3, page_token=token))
        assert len(page.activities) <= 3
        seen += [a.activity_id for a in page.activities]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(ids)
    assert pages >= 3

    everything: set[str] = set()
    token = ""
    while True:
        page = cluster.xp.ListActivities(xp_pb2.ListActivitiesRequest(page_size=100, page_token=token))
        everything |= {a.activity_id for a in page.activities}
        token = page.next_page_token
        if not token:
            break
    assert ids <= everything


# --- awards -----------------------------------------------------------------------


def test_award_takes_xp_from_the_catalog_and_adds_it_to_the_total(cluster: Cluster, user_id: str) -> None:
    activity_id = put_activity(cluster, xp=40)
    first = award(cluster, user_id, activity_id, "r1")
    second = award(cluster, user_id, activity_id, "r2")
    assert (first.xp_awarded, first.total_xp, first.duplicate) == (40, 40, False)
    assert (second.xp_awarded, second.total_xp, second.duplicate) == (40, 80, False)
    assert total_xp(cluster, user_id) == 80


def test_repeat_of_a_request_is_a_duplicate_with_the_original_xp(cluster: Cluster, user_id: str) -> None:
    activity_id = put_activity(cluster, xp=70)
    original = award(cluster, user_id, activity_id, "match-42")
    # The catalog changes between the original and the retry: the retry still reports what was awarded.
    cluster.xp.PutActivity(
        xp_pb2.PutActivityRequest(activity=xp_pb2.Activity(activity_id=activity_id, name="x", xp=500))
    )
    repeat = award(cluster, user_id, activity_id, "match-42")
    assert (original.duplicate, repeat.duplicate) == (False, True)
    assert repeat.xp_awarded == 70
    assert repeat.total_xp == 70
    assert total_xp(cluster, user_id) == 70
    assert len(ledger(cluster, user_id)) == 1


def test_request_id_reused_for_another_activity_is_failed_precondition(cluster: Cluster, user_id: str) -> None:
    first, other = put_activity(cluster, xp=10), put_activity(cluster, xp=20)
    award(cluster, user_id, first, "req-1")
    error = rpc_error(lambda: award(cluster, user_id, other, "req-1"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "request_id 'req-1' was already used" in error.details()
    assert first in error.details()
    assert total_xp(cluster, user_id) == 10
    assert len(ledger(cluster, user_id)) == 1


def test_request_ids_are_scoped_to_the_user(cluster: Cluster, user_id: str) -> None:
    activity_id = put_activity(cluster, xp=15)
    other_user = user_id + "-other"
    assert not award(cluster, user_id, activity_id, "shared-id").duplicate
    assert not award(cluster, other_user, activity_id, "shared-id").duplicate
    assert (total_xp(cluster, user_id), total_xp(cluster, other_user)) == (15, 15)


def test_empty_request_id_is_not_deduplicated_and_every_award_is_in_the_ledger(cluster: Cluster, user_id: str) -> None:
    activity_id = put_activity(cluster, xp=5)
    for _ in range(3):
        assert not award(cluster, user_id, activity_id).duplicate
    assert total_xp(cluster, user_id) == 15
    entries = ledger(cluster, user_id)
    assert len(entries) == 3
    assert all(e["activity_id"] == activity_id and e["xp"] == 5 and e["recorded_at"] for e in entries)


def test_ledger_records_what_when_and_why(cluster: Cluster, user_id: str) -> None:
    activity_id = put_activity(cluster, xp=12)
    award(cluster, user_id, activity_id, "r-a")
    cluster.xp.GrantXp(xp_pb2.GrantXpRequest(user_id=user_id, amount=8, reason="tournament bonus", request_id="r-b"))
    entries = {e["request_id"]: e for e in ledger(cluster, user_id)}
    assert (
        entries["r-a"]["kind"] == "activity"
        and entries["r-a"]["activity_id"] == activity_id
        and entries["r-a"]["xp"] == 12
    )
    assert (
        entries["r-b"]["kind"] == "grant"
        and entries["r-b"]["reason"] == "tournament bonus"
        and entries["r-b"]["xp"] == 8
    )
    assert sum(e["xp"] for e in entries.values()) == total_xp(cluster, user_id) == 20


def test_unknown_activity_is_not_found_and_writes_nothing(cluster: Cluster, user_id: str) -> None:
    error = rpc_error(lambda: award(cluster, user_id, "no-such-activity", "r"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-activity" in error.details()
    assert ledger(cluster, user_id) == []


def test_unknown_user_has_no_progress_yet(cluster: Cluster, user_id: str) -> None:
    progress = cluster.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user_id))
    assert (progress.user_id, progress.total_xp, progress.level) == (user_id, 0, 1)
    assert list(progress.unlocked_achievements) == [] and list(progress.rewards) == []
    assert not progress.HasField("updated_at")


def test_grant_xp_is_idempotent_and_rejects_another_amount(cluster: Cluster, user_id: str) -> None:
    grant = xp_pb2.GrantXpRequest(user_id=user_id, amount=60, reason="season pass", request_id="season-1")
    first, repeat = cluster.xp.GrantXp(grant), cluster.xp.GrantXp(grant)
    assert (first.xp_awarded, first.duplicate, repeat.xp_awarded, repeat.duplicate) == (60, False, 60, True)
    error = rpc_error(
        lambda: cluster.xp.GrantXp(
            xp_pb2.GrantXpRequest(user_id=user_id, amount=61, reason="season pass", request_id="season-1")
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert total_xp(cluster, user_id) == 60


# --- concurrency ------------------------------------------------------------------


def test_fifty_concurrent_awards_to_one_user_all_count(cluster: Cluster, user_id: str) -> None:
    activity_id = put_activity(cluster, xp=7)
    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(lambda i: award(cluster, user_id, activity_id, f"burst-{i}"), range(50)))
    assert not any(r.duplicate for r in responses)
    assert total_xp(cluster, user_id) == 50 * 7
    assert len(ledger(cluster, user_id)) == 50
    # Each response's total includes at least its own award and never exceeds the final total.
    assert all(7 <= r.total_xp <= 350 for r in responses)


def test_twenty_four_concurrent_copies_of_one_request_count_once(cluster: Cluster, user_id: str) -> None:
    activity_id = put_activity(cluster, xp=33)
    with ThreadPoolExecutor(max_workers=24) as pool:
        responses = list(pool.map(lambda _: award(cluster, user_id, activity_id, "the-one"), range(24)))
    assert sum(not r.duplicate for r in responses) == 1
    assert all(r.xp_awarded == 33 for r in responses)
    assert total_xp(cluster, user_id) == 33
    assert len(ledger(cluster, user_id)) == 1


@pytest.mark.parametrize("copies", [24])
def test_concurrent_copies_of_a_grant_count_once(cluster: Cluster, user_id: str, copies: int) -> None:
    grant = xp_pb2.GrantXpRequest(user_id=user_id, amount=250, reason="refund", request_id="grant-once")
    with ThreadPoolExecutor(max_workers=copies) as pool:
        responses = list(pool.map(lambda _: cluster.xp.GrantXp(grant), range(copies)))
    assert sum(not r.duplicate for r in responses) == 1
    assert total_xp(cluster, user_id) == 250


def test_a_page_token_only_continues_the_listing_that_issued_it(cluster: Cluster) -> None:
    category, other = unique("cat"), unique("cat")
    for _ in range(2):
        put_activity(cluster, xp=1, category=category)
        put_activity(cluster, xp=1, category=other)
    category_token = cluster.xp.ListActivities(
        xp_pb2.ListActivitiesRequest(category=category, page_size=1)
    ).next_page_token
    scan_token = cluster.xp.ListActivities(xp_pb2.ListActivitiesRequest(page_size=1)).next_page_token
    assert category_token and scan_token
    for request in (
        xp_pb2.ListActivitiesRequest(category=other, page_size=1, page_token=category_token),
        xp_pb2.ListActivitiesRequest(category=category, page_size=1, page_token=scan_token),
        xp_pb2.ListActivitiesRequest(page_size=1, page_token=category_token),
    ):
        error = rpc_error(lambda: cluster.xp.ListActivities(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "page_token is not a token this listing issued"
    assert (
        len(
            cluster.xp.ListActivities(
                xp_pb2.ListActivitiesRequest(category=category, page_size=1, page_token=category_token)
            ).activities
        )
        == 1
    )


def test_a_retry_is_a_duplicate_even_after_the_activity_left_the_catalog(cluster: Cluster, user_id: str) -> None:
    activity_id = put_activity(cluster, xp=45)
    award(cluster, user_id, activity_id, "before-delete")
    cluster.xp.DeleteActivity(xp_pb2.DeleteActivityRequest(activity_id=activity_id))
    retry = award(cluster, user_id, activity_id, "before-delete")
    assert (retry.duplicate, retry.xp_awarded, retry.total_xp) == (True, 45, 45)
    error = rpc_error(lambda: award(cluster, user_id, activity_id, "after-delete"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert total_xp(cluster, user_id) == 45


def test_totals_stop_at_two_to_the_53_with_failed_precondition_and_nothing_written(
    cluster: Cluster, user_id: str
) -> None:
    top = 2**53
    cluster.dynamodb.put_item(
        TableName=cluster.table("user_progress"),
        Item={"user_id": {"S": user_id}, "total_xp": {"N": str(top - 100)}},
    )
    error = rpc_error(
        lambda: cluster.xp.GrantXp(xp_pb2.GrantXpRequest(user_id=user_id, amount=101, reason="r", request_id="over"))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "past the maximum of 9007199254740992" in error.details()
    assert total_xp(cluster, user_id) == top - 100 and ledger(cluster, user_id) == []
    granted = cluster.xp.GrantXp(xp_pb2.GrantXpRequest(user_id=user_id, amount=100, reason="r", request_id="to"))
    assert granted.total_xp == top
    assert cluster.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user_id)).total_xp == top
    activity_id = put_activity(cluster, xp=1)
    assert rpc_error(lambda: award(cluster, user_id, activity_id)).code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_total_stored_past_the_maximum_is_still_read_and_refuses_more(cluster: Cluster, user_id: str) -> None:
    near_int64 = 2**63 - 100  # as a direct write or an earlier version could leave it
    cluster.dynamodb.put_item(
        TableName=cluster.table("user_progress"),
        Item={"user_id": {"S": user_id}, "total_xp": {"N": str(near_int64)}},
    )
    assert cluster.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user_id)).total_xp == near_int64
    activity_id = put_activity(cluster, xp=200)  # would pass int64 itself
    assert rpc_error(lambda: award(cluster, user_id, activity_id)).code() == grpc.StatusCode.FAILED_PRECONDITION
    assert cluster.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user_id)).total_xp == near_int64


def test_a_progress_item_an_earlier_version_filled_to_the_byte_still_takes_awards(
    cluster: Cluster, user_id: str
) -> None:
    """An earlier version kept the unlocked ids in the progress item; full to DynamoDB's 400 KB, it
    left no room for a total: every award failed for good. The award now moves the ids out."""
    fill_progress_to_the_byte(cluster, user_id)

    activity_id = put_activity(cluster, xp=10)
    assert award(cluster, user_id, activity_id, unique("r")).total_xp == 10
    item = cluster.dynamodb.get_item(
        TableName=cluster.table("user_progress"), Key={"user_id": {"S": user_id}}, ConsistentRead=True
    )["Item"]
    assert "unlocked_achievements" not in item and item["holds_achievements"] == {"BOOL": True}
