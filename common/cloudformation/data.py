"""The data half of each stage's stack: the production tables (and the streams
of the tables events are read from), one least-privilege IAM policy per
service, and the key that signs callers' tokens (a Secrets Manager secret, with
the policy that lets ECS read it), rendered from the table definitions in
common/dynamodb/tables.py (ALL_TABLES): the tables in AWS and the ones
ensure_tables creates for DynamoDB Local come from the same definition, so they
cannot drift. tests/test_cloudformation.py checks each policy against the
DynamoDB calls the services really make."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from common.dynamodb import (
    ACHIEVEMENT_STATS,
    ACHIEVEMENTS,
    ACTIVITIES,
    ACTIVITY_COUNTS,
    ALL_TABLES,
    LEVEL_CHECKS,
    LEVEL_REWARDS,
    LEVELS,
    STREAKS,
    USER_ACHIEVEMENTS,
    USER_PROGRESS,
    XP_LEDGER,
    TableDefinition,
)
from common.dynamodb.tables import EVENT_READERS, WEBHOOK_DELIVERIES, WEBHOOKS

# DynamoDB table names are 3 to 255 of these characters; the prefix must leave
# room for the longest table name.
_TABLE_NAME_CHARACTERS = "[a-zA-Z0-9_.-]"
_MAX_TABLE_NAME_LENGTH = 255

# The key that signs and verifies callers' tokens (REWARDS_AUTH_JWT_SECRET):
# Secrets Manager generates it when the stack is created, letters and digits
# only (safe in an environment variable, no quoting), and ECS injects it into
# the tasks. Changing GenerateSecretString makes CloudFormation generate a new
# value on the next stack update, which would refuse every token in use:
# rotate with the procedure in docs/deploy.md instead.
AUTH_SECRET_LOGICAL_ID = "AuthJwtSecret"
AUTH_SECRET_READ_POLICY_LOGICAL_ID = "AuthSecretReadPolicy"
AUTH_SECRET_LENGTH = 64


@dataclass(frozen=True)
class TableAccess:
    """The DynamoDB actions one service performs on one table (and its indexes)."""

    table: TableDefinition
    actions: tuple[str, ...]
    # (index name, actions) for the table's indexes the service queries.
    index_actions: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # The DynamoDB Streams actions it performs on the table's stream (any stream of the table:
    # `<table arn>/stream/*`, since turning a stream off and on gives it a new ARN).
    stream_actions: tuple[str, ...] = ()


# Reading a table's stream: its shards (DescribeStream), an iterator per shard, and its records. The
# stream's ARN comes from DescribeTable (LatestStreamArn), so ListStreams is not needed.
STREAM_READ_ACTIONS = ("DescribeStream", "GetShardIterator", "GetRecords")


# What each service's repository (its storage.py, through common/dynamodb/)
# does to each table, as IAM actions. IAM authorises a transaction item by item
# as its underlying action: TransactWriteItems' Put and Update need PutItem and
# UpdateItem, a ConditionCheck ConditionCheckItem, TransactGetItems' Get needs GetItem. Paginated scans and queries
# are Scan and Query. tests/test_cloudformation.py records the calls the
# services make and fails when this differs from them.
SERVICE_ACCESS: dict[str, tuple[TableAccess, ...]] = {
    "xp": (
        # The activity catalog; ListActivities by category queries the index;
        # an award's transaction checks the cached activity's XP (ConditionCheck).
        TableAccess(
            ACTIVITIES,
            ("PutItem", "GetItem", "DeleteItem", "Scan", "ConditionCheckItem"),
            (("by_category", ("Query",)),),
        ),
        # record_xp's transaction puts the entry; a retry whose activity left reads it back, and a
        # revoke the entry it reverses; a deferred level check is noted on it; ListXpHistory queries
        # the user's entries by time (index by_time).
        TableAccess(XP_LEDGER, ("PutItem", "GetItem", "UpdateItem"), (("by_time", ("Query",)),)),
        # record_xp's transaction adds to total_xp; GetProgress and awards read it (an award with the
        # counters an auto-unlock rule counts: BatchGetItem); a user's first XP counts a player once.
        TableAccess(USER_PROGRESS, ("UpdateItem", "GetItem", "BatchGetItem")),
        # An award's transaction adds to its activity's and category's counters and its period to
        # its streaks' runs; the read after it takes the runs and the counters an auto-unlock rule
        # counts, and folds a run grown long (UpdateItem); GetProgress queries the runs.
        TableAccess(ACTIVITY_COUNTS, ("UpdateItem", "BatchGetItem", "Query")),
        # The streak catalog: a put keeps a streak's period (a condition), a delete leaves a mark;
        # awards scan it once per REWARDS_STREAK_CATALOG_CACHE_S.
        TableAccess(STREAKS, ("PutItem", "GetItem", "UpdateItem", "Scan")),
        # The players stat, moved once per user.
        TableAccess(ACHIEVEMENT_STATS, ("UpdateItem",)),
        # The catalog's auto-unlock rules (a filtered Scan, once per REWARDS_AUTO_RULES_CACHE_S).
        TableAccess(ACHIEVEMENTS, ("Scan",)),
        # The level table's version item (is a level-up due?), and the table for a new user's start level.
        TableAccess(LEVELS, ("GetItem", "Scan")),
        # GetProgress lists the rewards of the latest levels passed.
        TableAccess(LEVEL_REWARDS, ("Query",)),
        # GetProgress lists the first achievements a user holds (their unlock records).
        TableAccess(USER_ACHIEVEMENTS, ("Query",)),
    ),
    "achievements": (
        # The achievement catalog; ListUserAchievements batch-reads the unlocked ones; the unlock's
        # transaction checks the revision of the entry it was decided on (ConditionCheck).
        TableAccess(ACHIEVEMENTS, ("PutItem", "GetItem", "DeleteItem", "Scan", "BatchGetItem", "ConditionCheckItem")),
        # record_unlock_once's transaction puts the unlock and checks the required ones
        # (ConditionCheck); a refusal batch-reads which are held; a repeat whose achievement left
        # reads it; pay_owed_unlock_once marks an unlock an earlier version left owing XP.
        TableAccess(
            USER_ACHIEVEMENTS, ("PutItem", "GetItem", "UpdateItem", "Query", "ConditionCheckItem", "BatchGetItem")
        ),
        # The unlock's transaction notes holds_achievements and adds to total_xp (guarded by the
        # requirements); the progress read after it says whether a level-up may be due; an
        # evaluation of auto unlocks leaves its watches on it; a user's first XP counts a player once.
        TableAccess(USER_PROGRESS, ("UpdateItem", "GetItem", "BatchGetItem")),
        # The unlock's transaction checks the counts it requires (ConditionCheck); a refusal reads them;
        # an evaluation queries the user's counters and leaves its watches on them.
        TableAccess(ACTIVITY_COUNTS, ("UpdateItem", "Query", "BatchGetItem", "ConditionCheckItem")),
        # Unlocks per achievement and players, in shards: the unlock's transaction adds one; stats read them.
        TableAccess(ACHIEVEMENT_STATS, ("UpdateItem", "BatchGetItem")),
        # The unlock's transaction puts the reward's ledger entry; a deferred level check is noted on it.
        TableAccess(XP_LEDGER, ("PutItem", "UpdateItem")),
        # The level table's version item (is a level-up due?), and the start level for a min_level requirement.
        TableAccess(LEVELS, ("GetItem", "Scan")),
    ),
    "levels": (
        # The level table: writes move its version item in the same transaction; a copy is
        # scanned when the version moved; a level-up checks the version (ConditionCheck).
        TableAccess(LEVELS, ("PutItem", "DeleteItem", "UpdateItem", "GetItem", "Scan", "ConditionCheckItem")),
        # The level-up transaction moves `level`; the start level is pinned; checks read it.
        TableAccess(USER_PROGRESS, ("UpdateItem", "GetItem")),
        # The level-up transaction puts one item per level passed; replays batch-read them;
        # ListLevelsReached pages through them.
        TableAccess(LEVEL_REWARDS, ("PutItem", "BatchGetItem", "Query")),
        # The level-up transaction adds to the check's record; a check reads it with the progress.
        TableAccess(LEVEL_CHECKS, ("UpdateItem", "GetItem")),
    ),
    "events": (
        # The webhooks: PutWebhook's UpdateItem (keeping created_at), DeleteWebhook's conditional delete, and
        # the Scan that ListWebhooks and the dispatcher (for each batch of events, and of due deliveries) read.
        TableAccess(WEBHOOKS, ("UpdateItem", "DeleteItem", "Scan")),
        # One delivery per webhook and event, made once by a conditional put; claimed, finished and
        # redelivered by conditional updates; ListFailedDeliveries queries a webhook's; senders query the
        # pending ones by due time (index `due`).
        TableAccess(WEBHOOK_DELIVERIES, ("PutItem", "UpdateItem", "Query"), (("due", ("Query",)),)),
        # The webhook reader's lease and cursor: conditional updates (the cursor comes back in the answer).
        TableAccess(EVENT_READERS, ("UpdateItem",)),
        # The tables events are made of: each reader of the streams (a watch hub per process, the webhook
        # reader) finds a table's stream with DescribeTable (granted on every table for the start-up check)
        # and reads its shards. Nothing reads or writes their items.
        TableAccess(USER_PROGRESS, (), stream_actions=STREAM_READ_ACTIONS),
        TableAccess(USER_ACHIEVEMENTS, (), stream_actions=STREAM_READ_ACTIONS),
        TableAccess(LEVEL_REWARDS, (), stream_actions=STREAM_READ_ACTIONS),
    ),
}

# At start-up every service runs ensure_tables: ListTables (which IAM cannot
# scope to tables, so its resource is "*") and DescribeTable on every table in
# ALL_TABLES, waiting until each is active. It creates only missing tables, and
# in AWS this template makes them all, so no policy grants CreateTable: a
# service started against a stack that lacks a table fails at start-up with
# AccessDenied instead of creating a table outside the stack.
STARTUP_TABLE_ACTIONS = ("DescribeTable",)
STARTUP_ACCOUNT_ACTIONS = ("ListTables",)


def table_logical_id(table: TableDefinition) -> str:
    return "".join(part.capitalize() for part in table.name.split("_")) + "Table"


def policy_logical_id(service: str) -> str:
    return service.capitalize() + "ServicePolicy"


def _iam_actions(actions: Sequence[str]) -> list[str]:
    return sorted(f"dynamodb:{action}" for action in actions)


def _table_arn(table: TableDefinition) -> dict[str, Any]:
    return {"Fn::GetAtt": [table_logical_id(table), "Arn"]}


def _index_arn(table: TableDefinition, index_name: str) -> dict[str, Any]:
    return {"Fn::Sub": f"${{{table_logical_id(table)}.Arn}}/index/{index_name}"}


def _streams_arn(table: TableDefinition) -> dict[str, Any]:
    return {"Fn::Sub": f"${{{table_logical_id(table)}.Arn}}/stream/*"}


def table_resource(table: TableDefinition) -> dict[str, Any]:
    # Everything ensure_tables passes to CreateTable (keys, attributes,
    # indexes, billing mode) is copied as is: CloudFormation's property names
    # are the API's, and cfn-lint rejects any that are not.
    properties: dict[str, Any] = {"TableName": {"Fn::Sub": "${TablePrefix}" + table.name}}
    properties.update((key, value) for key, value in table.create_table_params("").items() if key != "TableName")
    if "StreamSpecification" in properties:  # CloudFormation's has only the view: a stream is on when it is set
        properties["StreamSpecification"] = {"StreamViewType": properties["StreamSpecification"]["StreamViewType"]}
    properties["PointInTimeRecoverySpecification"] = {"PointInTimeRecoveryEnabled": True}
    if table.ttl_attribute:
        properties["TimeToLiveSpecification"] = {"AttributeName": table.ttl_attribute, "Enabled": True}
    return {
        "Type": "AWS::DynamoDB::Table",
        # The tables hold users' progress for good: deleting the stack, or a
        # change that replaces a table, leaves the data in place.
        "DeletionPolicy": "Retain",
        "UpdateReplacePolicy": "Retain",
        "Properties": properties,
    }


def policy_resource(service: str, access: Sequence[TableAccess], tables: Sequence[TableDefinition]) -> dict[str, Any]:
    statements: list[dict[str, Any]] = []
    for grant in access:
        if grant.actions:
            statements.append(
                {
                    "Sid": table_logical_id(grant.table),
                    "Effect": "Allow",
                    "Action": _iam_actions(grant.actions),
                    "Resource": _table_arn(grant.table),
                }
            )
        if grant.stream_actions:
            statements.append(
                {
                    "Sid": table_logical_id(grant.table) + "Stream",
                    "Effect": "Allow",
                    "Action": _iam_actions(grant.stream_actions),
                    "Resource": _streams_arn(grant.table),
                }
            )
        for index_name, index_actions in grant.index_actions:
            statements.append(
                {
                    "Sid": table_logical_id(grant.table)
                    + "".join(p.capitalize() for p in index_name.split("_"))
                    + "Index",
                    "Effect": "Allow",
                    "Action": _iam_actions(index_actions),
                    "Resource": _index_arn(grant.table, index_name),
                }
            )
    statements.append(
        {
            "Sid": "StartupTableCheck",
            "Effect": "Allow",
            "Action": _iam_actions(STARTUP_TABLE_ACTIONS),
            "Resource": [_table_arn(table) for table in tables],
        }
    )
    statements.append(
        {
            "Sid": "StartupListTables",
            "Effect": "Allow",
            "Action": _iam_actions(STARTUP_ACCOUNT_ACTIONS),
            "Resource": "*",
        }
    )
    return {
        "Type": "AWS::IAM::ManagedPolicy",
        "Properties": {
            "Description": f"rewards {service} service: the DynamoDB actions it performs on its tables, nothing else",
            "PolicyDocument": {"Version": "2012-10-17", "Statement": statements},
        },
    }


def auth_secret_resource() -> dict[str, Any]:
    return {
        "Type": "AWS::SecretsManager::Secret",
        # Deleting it (or replacing it) would refuse every token minted from it,
        # game servers' included: like the tables, it outlives the stack.
        "DeletionPolicy": "Retain",
        "UpdateReplacePolicy": "Retain",
        "Properties": {
            "Name": {"Fn::Sub": "${TablePrefix}auth-jwt-secret"},
            "Description": "rewards: the key that signs and verifies callers' tokens (the services' "
            "REWARDS_AUTH_JWT_SECRET); rotate it as docs/deploy.md says",
            "GenerateSecretString": {"PasswordLength": AUTH_SECRET_LENGTH, "ExcludePunctuation": True},
        },
    }


def auth_secret_read_policy_resource() -> dict[str, Any]:
    """For the task execution role: ECS reads the secret (any version of it,
    during a rotation both) into the containers' environment at task start."""
    return {
        "Type": "AWS::IAM::ManagedPolicy",
        "Properties": {
            "Description": "rewards services' task execution role: read the token key secret into "
            "REWARDS_AUTH_JWT_SECRET (and REWARDS_AUTH_JWT_PREVIOUS_SECRET during a rotation)",
            "PolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "ReadAuthJwtSecret",
                        "Effect": "Allow",
                        "Action": ["secretsmanager:GetSecretValue"],
                        "Resource": {"Ref": AUTH_SECRET_LOGICAL_ID},
                    }
                ],
            },
        },
    }


def data_resources(
    tables: Sequence[TableDefinition] = ALL_TABLES,
    access: dict[str, tuple[TableAccess, ...]] = SERVICE_ACCESS,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The resources and outputs of the data half of the stack: the tables, one
    policy per service, the token key and the policy that reads it."""
    resources: dict[str, Any] = {}
    outputs: dict[str, Any] = {
        "TablePrefix": {
            "Description": "The services' REWARDS_TABLE_PREFIX",
            "Value": {"Ref": "TablePrefix"},
        },
    }
    for table in tables:
        logical_id = table_logical_id(table)
        resources[logical_id] = table_resource(table)
        outputs[logical_id + "Name"] = {"Description": f"The {table.name} table", "Value": {"Ref": logical_id}}
        if table.stream_view:
            outputs[logical_id + "StreamArn"] = {
                "Description": f"The {table.name} table's stream, for another consumer of it (a Lambda event "
                "source mapping, an EventBridge pipe); see docs/deploy.md, Events on AWS",
                "Value": {"Fn::GetAtt": [logical_id, "StreamArn"]},
            }
    for service, grants in access.items():
        logical_id = policy_logical_id(service)
        resources[logical_id] = policy_resource(service, grants, tables)
        outputs[logical_id + "Arn"] = {
            "Description": f"The {service} service's DynamoDB policy (its task role has it)",
            "Value": {"Ref": logical_id},
        }
    resources[AUTH_SECRET_LOGICAL_ID] = auth_secret_resource()
    outputs[AUTH_SECRET_LOGICAL_ID + "Arn"] = {
        "Description": "The token key's secret: the tasks' REWARDS_AUTH_JWT_SECRET (rewardsctl token mint reads it)",
        "Value": {"Ref": AUTH_SECRET_LOGICAL_ID},
    }
    resources[AUTH_SECRET_READ_POLICY_LOGICAL_ID] = auth_secret_read_policy_resource()
    outputs[AUTH_SECRET_READ_POLICY_LOGICAL_ID + "Arn"] = {
        "Description": "The policy that lets the tasks' execution role inject the token key",
        "Value": {"Ref": AUTH_SECRET_READ_POLICY_LOGICAL_ID},
    }
    return resources, outputs


def table_prefix_parameter(default: str, tables: Sequence[TableDefinition] = ALL_TABLES) -> dict[str, Any]:
    longest_name = max(len(table.name) for table in tables)
    return {
        "Type": "String",
        "Description": "Prefix of every table name; the services' REWARDS_TABLE_PREFIX must equal it",
        "Default": default,
        "AllowedPattern": f"^{_TABLE_NAME_CHARACTERS}*$",
        "MaxLength": _MAX_TABLE_NAME_LENGTH - longest_name,
    }
