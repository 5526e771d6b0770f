"""DynamoDB Streams on the tables the events come from (progress, with its old
image; unlocks and levels reached, new images), against DynamoDB Local, which
implements the Streams API: ensure_tables turns them on, for new tables and for
tables an earlier version made, and an award shows up in the progress item's
stream once, with the entry it moved the total by."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any

import boto3

from common.dynamodb import ALL_TABLES, USER_PROGRESS, ensure_tables
from common.dynamodb.tables import NEW_AND_OLD_IMAGES, NEW_IMAGE
from rewards.v1 import xp_pb2
from tests.cluster import Cluster, unique

SOURCES = {"user_progress": NEW_AND_OLD_IMAGES, "user_achievements": NEW_IMAGE, "level_rewards": NEW_IMAGE}


def streams_client(cluster: Cluster) -> Any:
    return boto3.session.Session().client(
        "dynamodbstreams", endpoint_url=cluster.settings.dynamodb_endpoint, region_name=cluster.settings.aws_region
    )


def test_the_source_tables_stream_their_images_and_no_other_table_streams(cluster: Cluster) -> None:
    streaming = {}
    for table in ALL_TABLES:
        described = cluster.dynamodb.describe_table(TableName=cluster.table(table.name))["Table"]
        spec = described.get("StreamSpecification") or {}
        if spec.get("StreamEnabled"):
            assert described["LatestStreamArn"], table.name
            streaming[table.name] = spec["StreamViewType"]
    assert streaming == SOURCES


def test_a_progress_table_an_earlier_version_made_without_a_stream_gets_one(cluster: Cluster) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}-"
    ensure_tables(cluster.dynamodb, prefix, (replace(USER_PROGRESS, stream_view=""),))
    name = prefix + USER_PROGRESS.name
    assert "StreamSpecification" not in cluster.dynamodb.describe_table(TableName=name)["Table"]

    ensure_tables(cluster.dynamodb, prefix, (USER_PROGRESS,))
    described = cluster.dynamodb.describe_table(TableName=name)["Table"]
    assert described["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": NEW_AND_OLD_IMAGES}
    assert described["TableStatus"] == "ACTIVE" and described["LatestStreamArn"]
    ensure_tables(cluster.dynamodb, prefix, (USER_PROGRESS,))  # and again: nothing to do
    cluster.dynamodb.delete_table(TableName=name)


def test_an_award_and_its_retry_are_one_record_of_the_progress_stream(cluster: Cluster) -> None:
    activity = xp_pb2.Activity(activity_id=unique("streamed"), name="Streamed", xp=7)
    cluster.xp.PutActivity(xp_pb2.PutActivityRequest(activity=activity))
    user = unique("user")
    for _ in range(2):  # the retry writes nothing, so it is in no stream
        cluster.xp.AwardXp(xp_pb2.AwardXpRequest(user_id=user, activity_id=activity.activity_id, request_id="s-1"))

    streams = streams_client(cluster)
    arn = cluster.dynamodb.describe_table(TableName=cluster.table("user_progress"))["Table"]["LatestStreamArn"]
    mine: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while len(mine) < 2 and time.monotonic() < deadline:
        mine = [r for r in all_records(streams, arn) if r["dynamodb"]["Keys"]["user_id"]["S"] == user]
    # Other updates of the item (a new user's first level, its level check) leave last_change as it was.
    changes = [
        r["dynamodb"]
        for r in mine
        if r["dynamodb"].get("NewImage", {}).get("last_change") != r["dynamodb"].get("OldImage", {}).get("last_change")
    ]
    assert [c["StreamViewType"] for c in changes] == [NEW_AND_OLD_IMAGES]
    image = changes[0]["NewImage"]
    change = image["last_change"]["M"]
    assert (image["total_xp"]["N"], change["entry_id"]["S"], change["kind"]["S"], change["xp"]["N"]) == (
        "7",
        "req#s-1",
        "activity",
        "7",
    )
    assert change["request_id"]["S"] == "s-1" and change["activity_id"]["S"] == activity.activity_id


def all_records(streams: Any, arn: str) -> list[dict[str, Any]]:
    """Every record of every shard of the stream, from its oldest."""
    records: list[dict[str, Any]] = []
    shards = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
    for shard in shards:
        iterator = streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = streams.get_records(ShardIterator=iterator)
            records.extend(page["Records"])
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
    return records
