"""DynamoDB Streams on the tables that record each change once (the XP ledger,
unlocks, levels reached), against DynamoDB Local, which implements the Streams
API: ensure_tables turns them on, for new tables and for tables an earlier
version made, and an award shows up in the ledger's stream once, as its new image."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any

import boto3

from common.dynamodb import ALL_TABLES, XP_LEDGER, ensure_tables
from common.dynamodb.tables import NEW_IMAGE
from rewards.v1 import xp_pb2
from tests.cluster import Cluster, unique

SOURCES = {"xp_ledger", "user_achievements", "level_rewards"}


def streams_client(cluster: Cluster) -> Any:
    return boto3.session.Session().client(
        "dynamodbstreams", endpoint_url=cluster.settings.dynamodb_endpoint, region_name=cluster.settings.aws_region
    )


def test_the_source_tables_stream_their_new_images_and_no_other_table_streams(cluster: Cluster) -> None:
    streaming = {}
    for table in ALL_TABLES:
        described = cluster.dynamodb.describe_table(TableName=cluster.table(table.name))["Table"]
        spec = described.get("StreamSpecification") or {}
        if spec.get("StreamEnabled"):
            assert described["LatestStreamArn"], table.name
            streaming[table.name] = spec["StreamViewType"]
    assert streaming == dict.fromkeys(SOURCES, NEW_IMAGE)


def test_a_ledger_an_earlier_version_made_without_a_stream_gets_one(cluster: Cluster) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}-"
    ensure_tables(cluster.dynamodb, prefix, (replace(XP_LEDGER, stream_view=""),))
    name = prefix + XP_LEDGER.name
    assert "StreamSpecification" not in cluster.dynamodb.describe_table(TableName=name)["Table"]

    ensure_tables(cluster.dynamodb, prefix, (XP_LEDGER,))
    described = cluster.dynamodb.describe_table(TableName=name)["Table"]
    assert described["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": NEW_IMAGE}
    assert described["TableStatus"] == "ACTIVE" and described["LatestStreamArn"]
    ensure_tables(cluster.dynamodb, prefix, (XP_LEDGER,))  # and again: nothing to do
    cluster.dynamodb.delete_table(TableName=name)


def test_an_award_and_its_retry_are_one_record_of_the_ledgers_stream(cluster: Cluster) -> None:
    activity = xp_pb2.Activity(activity_id=unique("streamed"), name="Streamed", xp=7)
    cluster.xp.PutActivity(xp_pb2.PutActivityRequest(activity=activity))
    user = unique("user")
    for _ in range(2):  # the retry writes nothing, so it is in no stream
        cluster.xp.AwardXp(xp_pb2.AwardXpRequest(user_id=user, activity_id=activity.activity_id, request_id="s-1"))

    streams = streams_client(cluster)
    arn = cluster.dynamodb.describe_table(TableName=cluster.table("xp_ledger"))["Table"]["LatestStreamArn"]
    mine: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while not mine and time.monotonic() < deadline:
        mine = [r for r in all_records(streams, arn) if r["dynamodb"]["Keys"]["user_id"]["S"] == user]
    assert [(r["eventName"], r["dynamodb"]["StreamViewType"]) for r in mine] == [("INSERT", NEW_IMAGE)]
    image = mine[0]["dynamodb"]["NewImage"]
    assert (image["entry_id"]["S"], image["kind"]["S"], image["xp"]["N"]) == ("req#s-1", "activity", "7")


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
