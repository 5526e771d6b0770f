"""The table definitions (one place: the services, the template and the tooling
read them), table management, and the boto3 client that tooling uses."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from common.config import Settings


def create_dynamodb_client(settings: Settings) -> Any:
    """A boto3 client, for table management, backups and tooling (thread-safe);
    the services' requests go through common.dynamodb.client."""
    config = Config(
        region_name=settings.aws_region,
        # Standard mode: retries throttling and transient errors with jittered backoff.
        retries={"mode": "standard", "max_attempts": settings.dynamodb_max_attempts},
        max_pool_connections=40,
        connect_timeout=settings.dynamodb_connect_timeout_s,
        read_timeout=settings.dynamodb_read_timeout_s,
    )
    return boto3.session.Session().client("dynamodb", endpoint_url=settings.dynamodb_endpoint, config=config)


def error_code(error: ClientError) -> str:
    """The error code of a boto3 ClientError."""
    return str(error.response.get("Error", {}).get("Code", ""))


_S = "S"
_N = "N"
NEW_IMAGE = "NEW_IMAGE"
NEW_AND_OLD_IMAGES = "NEW_AND_OLD_IMAGES"


@dataclass(frozen=True)
class TableDefinition:
    name: str
    hash_key: tuple[str, str]
    range_key: tuple[str, str] | None = None
    # (index name, hash key, range key) with string keys.
    string_indexes: tuple[tuple[str, str, str], ...] = ()
    # A DynamoDB stream of every change, as this view ("NEW_IMAGE"): the tables that record
    # each change once are where the events come from; "" for none.
    stream_view: str = ""
    # DynamoDB's TTL on this attribute (unix seconds): items that set it are deleted after it; "" for none.
    # The CloudFormation template turns it on; ensure_tables does not (DynamoDB Local's TTL slows its table
    # management by orders of magnitude once many tables have one: docs/deploy.md), so items it keeps
    # locally stay.
    ttl_attribute: str = ""

    def create_table_params(self, prefix: str) -> dict[str, Any]:
        attributes = {self.hash_key[0]: self.hash_key[1]}
        keys = [{"AttributeName": self.hash_key[0], "KeyType": "HASH"}]
        if self.range_key:
            attributes[self.range_key[0]] = self.range_key[1]
            keys.append({"AttributeName": self.range_key[0], "KeyType": "RANGE"})
        indexes = []
        for index_name, index_hash, index_range in self.string_indexes:
            attributes[index_hash] = _S
            attributes[index_range] = _S
            indexes.append(
                {
                    "IndexName": index_name,
                    "KeySchema": [
                        {"AttributeName": index_hash, "KeyType": "HASH"},
                        {"AttributeName": index_range, "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                }
            )
        params: dict[str, Any] = {
            "TableName": prefix + self.name,
            "AttributeDefinitions": [{"AttributeName": k, "AttributeType": t} for k, t in attributes.items()],
            "KeySchema": keys,
            "BillingMode": "PAY_PER_REQUEST",
        }
        if indexes:
            params["GlobalSecondaryIndexes"] = indexes
        if self.stream_view:
            params["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": self.stream_view}
        return params


ACTIVITIES = TableDefinition(
    "activities", ("activity_id", _S), string_indexes=(("by_category", "category", "activity_id"),)
)
ACHIEVEMENTS = TableDefinition("achievements", ("achievement_id", _S))
# The streak catalog (common.streaks). A deleted streak stays as a mark
# (`deleted`), so that its id keeps its period: the players' runs of it hold
# periods of that length.
STREAKS = TableDefinition("streaks", ("streak_id", _S))
LEVELS = TableDefinition("levels", ("level", _N))
# The levels table's one item that is not a level: its `version`, which every
# level write moves in the same transaction, so a reader knows whether its copy
# of the table is current from one GetItem, and a level-up is written only
# against the version it was planned on.
LEVEL_TABLE_VERSION_KEY = 0
# Level-ups check the version in their transactions, and transactions that
# touch one item conflict with each other in DynamoDB: the version is kept in
# this many copies (keys 0, -1, ... -15), all moved by every level write, and
# each user's level-ups check the copy their id hashes to.
LEVEL_TABLE_VERSION_COPIES = 16
# One item a user, bounded whatever the user holds: total_xp, level and its threshold, holds_achievements,
# updated_at, and last_change (common.dynamodb.progress_item): the ledger entry its total last moved by.
# Its stream (with the old image, to tell an XP change from another update of the item) is where the XP
# events come from: the one record that holds a user's total right after each change.
USER_PROGRESS = TableDefinition("user_progress", ("user_id", _S), stream_view=NEW_AND_OLD_IMAGES)
# The XP ledger and the idempotency record in one: one item per award or grant.
# Index by_time: a user's entries by recorded_at (ISO 8601, UTC, sorts as text), for the history.
XP_LEDGER = TableDefinition(
    "xp_ledger", ("user_id", _S), ("entry_id", _S), string_indexes=(("by_time", "user_id", "recorded_at"),)
)
# One item per unlock: when, with what reward, and whether the XP was granted. Its stream, as
# LEVEL_REWARDS', is where unlock (level-up) events come from: an item's INSERT is the unlock (level reached).
USER_ACHIEVEMENTS = TableDefinition("user_achievements", ("user_id", _S), ("achievement_id", _S), stream_view=NEW_IMAGE)
# One item per level a user passed, with the rewards granted for it: written
# once, and kept apart from user_progress so that it cannot outgrow an item.
LEVEL_REWARDS = TableDefinition("level_rewards", ("user_id", _S), ("level", _N), stream_view=NEW_IMAGE)
# One item per CheckLevelUp request_id that raised a level: which levels it
# granted, so that a repeat of the request reports the same level-up.
LEVEL_CHECKS = TableDefinition("level_checks", ("user_id", _S), ("check_id", _S))

# One item per user and counter (an activity, or a category): awards counted
# in the award's own transaction, and the watch the Achievements service left
# on it (common.auto_unlock). Items of their own, so that the progress item,
# which every award reads and writes, does not grow with the activities done.
ACTIVITY_COUNTS = TableDefinition("activity_counts", ("user_id", _S), ("counter", _S))
# Counters of the whole game: unlocks per achievement ("ach#<id>") and players
# ("players"), each kept in STAT_SHARDS items ("<stat>#<shard>", each its own
# partition key, so its own partition) that writers pick by user: thousands of
# unlocks a second of one achievement are not one hot item.
ACHIEVEMENT_STATS = TableDefinition("achievement_stats", ("stat_shard", _S))
STAT_SHARDS = 16

# The events service's webhooks (events_service): one item each, with its secret.
WEBHOOKS = TableDefinition("webhooks", ("webhook_id", _S))
# One item per webhook and event ("<user_id>/<event_id>"), made once by a conditional put: the event's
# body, attempts, and while it is to be sent `pending` with `due_at` (index `due`, sparse: only
# pending deliveries are in it), which a sender claims with a lease; failed for good: `failed_at`.
# A delivered one sets `expires_at` (TTL): kept a week, long enough for any replay to find it, then gone.
WEBHOOK_DELIVERIES = TableDefinition(
    "webhook_deliveries",
    ("webhook_id", _S),
    ("event_key", _S),
    string_indexes=(("due", "pending", "due_at"),),
    ttl_attribute="expires_at",
)
# Where the webhooks' reader of the streams stands (one item, "webhooks"): its cursor, and the lease
# of the one replica that reads for every replica (conditional writes on owner and lease_until).
EVENT_READERS = TableDefinition("event_readers", ("reader", _S))

ALL_TABLES = (
    ACTIVITIES,
    ACHIEVEMENTS,
    LEVELS,
    USER_PROGRESS,
    XP_LEDGER,
    USER_ACHIEVEMENTS,
    LEVEL_REWARDS,
    LEVEL_CHECKS,
    ACTIVITY_COUNTS,
    ACHIEVEMENT_STATS,
    STREAKS,
    WEBHOOKS,
    WEBHOOK_DELIVERIES,
    EVENT_READERS,
)


def ensure_tables(client: Any, prefix: str, tables: tuple[TableDefinition, ...] = ALL_TABLES) -> None:
    """Creates the missing tables and waits until all are active. Safe to run
    from several processes at once."""
    existing: set[str] = set()
    for page in client.get_paginator("list_tables").paginate():
        existing.update(page["TableNames"])
    for table in tables:
        if prefix + table.name in existing:
            continue
        try:
            client.create_table(**table.create_table_params(prefix))
        except ClientError as error:
            if error.response["Error"]["Code"] != "ResourceInUseException":
                raise
    waiter = client.get_waiter("table_exists")
    for table in tables:
        waiter.wait(TableName=prefix + table.name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    for table in tables:
        _ensure_indexes(client, prefix + table.name, table)
        _ensure_stream(client, prefix + table.name, table)


def _ensure_stream(client: Any, name: str, table: TableDefinition) -> None:
    """Turns on the stream a table made by an earlier version lacks (the local
    stage's tables; on AWS the stack defines it), and waits until the table
    is active again. A stream of another view is an error: switching views
    means a new stream, and its consumers' cursors would end."""
    if not table.stream_view:
        return
    for _ in range(120):
        described = client.describe_table(TableName=name)["Table"]
        spec = described.get("StreamSpecification") or {}
        if spec.get("StreamEnabled") and described.get("LatestStreamArn"):
            if spec.get("StreamViewType") != table.stream_view:
                raise RuntimeError(
                    f"table {name} streams {spec.get('StreamViewType')}, not {table.stream_view}: "
                    "turn its stream off and run again"
                )
            if described["TableStatus"] == "ACTIVE":
                return
        elif described["TableStatus"] == "ACTIVE":
            try:
                client.update_table(
                    TableName=name, StreamSpecification={"StreamEnabled": True, "StreamViewType": table.stream_view}
                )
            except ClientError as error:
                if error.response["Error"]["Code"] not in ("ResourceInUseException", "ValidationException"):
                    raise
        time.sleep(1)
    raise TimeoutError(f"the stream of table {name} did not become active")


def _ensure_indexes(client: Any, name: str, table: TableDefinition) -> None:
    """Adds the indexes a table made by an earlier version lacks (the local
    stage's tables; on AWS the stack defines them, and a service that may
    not update tables stops here with AccessDenied naming the index), and
    waits until they are active."""
    wanted = {index_name for index_name, _, _ in table.string_indexes}
    if not wanted:
        return
    params = table.create_table_params("")
    for _ in range(120):
        described = client.describe_table(TableName=name)["Table"]
        existing = {i["IndexName"]: i["IndexStatus"] for i in described.get("GlobalSecondaryIndexes", [])}
        missing = [i for i in params["GlobalSecondaryIndexes"] if i["IndexName"] not in existing]
        if missing:
            attributes = {a["AttributeName"]: a for a in params["AttributeDefinitions"]}
            keys = {k["AttributeName"] for k in missing[0]["KeySchema"]}
            try:
                client.update_table(
                    TableName=name,
                    AttributeDefinitions=[attributes[k] for k in keys],
                    GlobalSecondaryIndexUpdates=[{"Create": missing[0]}],
                )
            except ClientError as error:
                if error.response["Error"]["Code"] not in ("ResourceInUseException", "LimitExceededException"):
                    raise
        elif all(status == "ACTIVE" for status in existing.values()):
            return
        time.sleep(1)
    raise TimeoutError(f"the indexes of table {name} did not become active")
