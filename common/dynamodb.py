"""The DynamoDB client (one per process), the table definitions (one place) and
the few write patterns every repository uses."""

from __future__ import annotations

import base64
import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from common.config import Settings
from common.errors import ContentionExhausted, DeadlineReached, DependencyUnavailable, DomainError, InvalidField
from common.metrics import instrument_dynamodb_client
from common.models import Level, LevelReached, LevelTable, ProgressRecord, Reward
from common.rpc_deadline import remaining_s

T = TypeVar("T")

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def create_dynamodb_client(settings: Settings) -> Any:
    """The process's one client; boto3 clients are thread-safe."""
    config = Config(
        region_name=settings.aws_region,
        # Standard mode: retries throttling and transient errors with jittered backoff.
        retries={"mode": "standard", "max_attempts": settings.dynamodb_max_attempts},
        # Enough sockets for every gRPC worker thread at once.
        max_pool_connections=settings.max_workers + 8,
        connect_timeout=settings.dynamodb_connect_timeout_s,
        read_timeout=settings.dynamodb_read_timeout_s,
        # The SDK's own check of each request against the API model costs about
        # a fifth of its CPU per call (0.3 of 1.6 ms on the benchmark machine,
        # docs/benchmarks.md). Requests here are built by the storage modules
        # from validated fields, and DynamoDB validates every request itself.
        parameter_validation=False,
    )
    client = boto3.session.Session().client("dynamodb", endpoint_url=settings.dynamodb_endpoint, config=config)
    instrument_dynamodb_client(client)
    # Before each attempt, the SDK's retries included: stop once the caller's deadline has passed.
    client.meta.events.register("before-send.dynamodb", _stop_after_rpc_deadline)
    return client


def _stop_after_rpc_deadline(**_: Any) -> None:
    left = remaining_s()
    if left is not None and left <= 0:
        raise DeadlineReached("the caller's deadline passed before DynamoDB answered")


# --- tables -------------------------------------------------------------------

_S = "S"
_N = "N"


@dataclass(frozen=True)
class TableDefinition:
    name: str
    hash_key: tuple[str, str]
    range_key: tuple[str, str] | None = None
    # (index name, hash key, range key) with string keys.
    string_indexes: tuple[tuple[str, str, str], ...] = ()

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
        return params


ACTIVITIES = TableDefinition(
    "activities", ("activity_id", _S), string_indexes=(("by_category", "category", "activity_id"),)
)
ACHIEVEMENTS = TableDefinition("achievements", ("achievement_id", _S))
LEVELS = TableDefinition("levels", ("level", _N))
# One item a user: total_xp, level, unlocked_achievements, rewards, updated_at.
USER_PROGRESS = TableDefinition("user_progress", ("user_id", _S))
# The XP ledger and the idempotency record in one: one item per award or grant.
XP_LEDGER = TableDefinition("xp_ledger", ("user_id", _S), ("entry_id", _S))
# One item per unlock: when, with what reward, and whether the XP was granted.
USER_ACHIEVEMENTS = TableDefinition("user_achievements", ("user_id", _S), ("achievement_id", _S))
# One item per level a user passed, with the rewards granted for it: written
# once, and kept apart from user_progress so that it cannot outgrow an item.
LEVEL_REWARDS = TableDefinition("level_rewards", ("user_id", _S), ("level", _N))
# One item per CheckLevelUp request_id that raised a level: which levels it
# granted, so that a repeat of the request reports the same level-up.
LEVEL_CHECKS = TableDefinition("level_checks", ("user_id", _S), ("check_id", _S))

ALL_TABLES = (
    ACTIVITIES,
    ACHIEVEMENTS,
    LEVELS,
    USER_PROGRESS,
    XP_LEDGER,
    USER_ACHIEVEMENTS,
    LEVEL_REWARDS,
    LEVEL_CHECKS,
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


# --- items --------------------------------------------------------------------


def to_item(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(v) for k, v in values.items()}


def from_item(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deserializer.deserialize(v) for k, v in item.items()}


def attr(value: Any) -> dict[str, Any]:
    return _serializer.serialize(value)


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def cancellation_codes(error: ClientError) -> list[str]:
    """The per-item reasons of a TransactionCanceledException ('None' where the item was fine)."""
    return [r.get("Code", "None") for r in error.response.get("CancellationReasons", [])]


_TRANSACTION_ATTEMPTS = 8
_THROTTLED_REASONS = {"ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"}


def transact_write(client: Any, items: list[dict[str, Any]]) -> list[str] | None:
    """Runs a transaction. Returns None on success, or the per-item cancellation
    codes when a condition failed. Conflicts with concurrent transactions (which
    real DynamoDB reports and the emulator never does) are retried with jittered
    backoff: a cancelled transaction wrote nothing, so the retry is safe. The SDK
    gives each call a ClientRequestToken, so its own retries after a lost
    response do not apply the transaction twice."""
    for attempt in range(_TRANSACTION_ATTEMPTS):
        try:
            client.transact_write_items(TransactItems=items)
            return None
        except ClientError as error:
            if error_code(error) != "TransactionCanceledException":
                raise
            codes = cancellation_codes(error)
            if "ConditionalCheckFailed" in codes:
                return codes
            if _THROTTLED_REASONS & set(codes):
                raise DependencyUnavailable("DynamoDB is throttling this user's writes; retry with backoff") from error
            if "TransactionConflict" not in codes:
                raise
        time.sleep(random.uniform(0, 0.01 * 2**attempt))
    raise ContentionExhausted("too many concurrent writes to this user; retry the request")


# Load and contention, not bugs: the caller may retry.
RETRYABLE_ERROR_CODES = {
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "TransactionConflictException",
    "TransactionInProgressException",
}


def storage_error_as_domain_error(error: Exception) -> DomainError | None:
    """A DynamoDB or SDK error the caller can act on (retry later), or None for
    one that is a bug."""
    if isinstance(error, ClientError) and error_code(error) in RETRYABLE_ERROR_CODES:
        return DependencyUnavailable(f"DynamoDB is busy ({error_code(error)}); retry with backoff")
    if isinstance(error, BotoCoreError):  # connection refused, timeouts, no credentials...
        return DependencyUnavailable(f"DynamoDB could not be reached ({error.__class__.__name__}); retry")
    return None


def retry_on_transaction_conflict(write: Callable[[], T]) -> T:
    """Runs a single-item write, retrying when real DynamoDB rejects it for
    touching an item that a transaction is writing (TransactionConflictException,
    which the SDK does not retry). A rejected write changed nothing."""
    for attempt in range(_TRANSACTION_ATTEMPTS):
        try:
            return write()
        except ClientError as error:
            if error_code(error) != "TransactionConflictException":
                raise
        time.sleep(random.uniform(0, 0.01 * 2**attempt))
    raise ContentionExhausted("too many concurrent writes to this user; retry the request")


# --- page tokens ----------------------------------------------------------------


def encode_page_token(last_evaluated_key: Mapping[str, Any] | None) -> str:
    if not last_evaluated_key:
        return ""
    raw = json.dumps(from_item(last_evaluated_key), default=str, sort_keys=True)
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_page_token(token: str, expected_keys: Mapping[str, str | None]) -> dict[str, Any] | None:
    """The start key in `token`. `expected_keys` names every key attribute the
    token must hold, with the value it must have where that is fixed (a query's
    partition key), so a token from another listing is refused here rather than
    by DynamoDB."""
    if not token:
        return None
    try:
        values = json.loads(base64.urlsafe_b64decode(token.encode()))
        if not isinstance(values, dict) or set(values) != set(expected_keys):
            raise ValueError("unexpected keys")
        for name, value in values.items():
            # Key values this service issues are ids: 128 characters at most.
            if not isinstance(value, str) or not value or len(value) > 128 or expected_keys[name] not in (None, value):
                raise ValueError(f"unexpected {name}")
        return to_item(values)
    except (ValueError, TypeError, UnicodeDecodeError, RecursionError) as error:
        raise InvalidField("page_token", "is not a token this listing issued") from error


class CatalogTable:
    """Whole-item reads and writes of one catalog table (activities,
    achievements, levels): catalog writes replace an entry, last writer wins."""

    def __init__(self, client: Any, table_prefix: str, table: TableDefinition) -> None:
        self._client = client
        self.name = table_prefix + table.name
        self._key = table.hash_key[0]

    def put(self, values: Mapping[str, Any]) -> None:
        self._client.put_item(TableName=self.name, Item=to_item(values))

    def get(self, key: Any) -> dict[str, Any] | None:
        response = self._client.get_item(TableName=self.name, Key={self._key: attr(key)}, ConsistentRead=True)
        return from_item(response["Item"]) if "Item" in response else None

    def delete(self, key: Any) -> bool:
        """False when there was no such entry."""
        try:
            self._client.delete_item(
                TableName=self.name,
                Key={self._key: attr(key)},
                ConditionExpression="attribute_exists(#k)",
                ExpressionAttributeNames={"#k": self._key},
            )
            return True
        except ClientError as error:
            if error_code(error) == "ConditionalCheckFailedException":
                return False
            raise

    def scan_all(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for page in self._client.get_paginator("scan").paginate(TableName=self.name, ConsistentRead=True):
            items.extend(from_item(item) for item in page["Items"])
        return items

    def page(
        self, page_size: int, page_token: str, *, index: str = "", key_condition: tuple[str, str] | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        """One page of the table, or of `index` where key_condition (name, value) holds."""
        params: dict[str, Any] = {"TableName": self.name, "Limit": page_size}
        expected_keys: dict[str, str | None] = {self._key: None}
        if index and key_condition:
            name, value = key_condition
            expected_keys[name] = value
            params.update(
                IndexName=index,
                KeyConditionExpression="#c = :c",
                ExpressionAttributeNames={"#c": name},
                ExpressionAttributeValues={":c": attr(value)},
            )
        start = decode_page_token(page_token, expected_keys)
        if start:
            params["ExclusiveStartKey"] = start
        response = self._client.query(**params) if index else self._client.scan(**params)
        return [from_item(item) for item in response["Items"]], encode_page_token(response.get("LastEvaluatedKey"))

    def batch_get(self, keys: list[Any]) -> dict[Any, dict[str, Any]]:
        found: dict[Any, dict[str, Any]] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 100):  # BatchGetItem's limit
            chunk = [{self._key: k} for k in unique[start : start + 100]]
            for values in batch_get_consistent(self._client, {self.name: chunk})[self.name]:
                found[values[self._key]] = values
        return found


def read_progress(client: Any, table_prefix: str, user_id: str, attributes: tuple[str, ...] = ()) -> ProgressRecord:
    """The user's progress item, strongly consistent; `attributes` limits what is read."""
    params: dict[str, Any] = {
        "TableName": table_prefix + USER_PROGRESS.name,
        "Key": {"user_id": attr(user_id)},
        "ConsistentRead": True,
    }
    if attributes:
        names = {f"#a{i}": name for i, name in enumerate(attributes)}
        params["ProjectionExpression"] = ", ".join(names)
        params["ExpressionAttributeNames"] = names
    response = client.get_item(**params)
    return ProgressRecord.from_attributes(user_id, from_item(response["Item"]) if "Item" in response else None)


def _rewards_from(values: Any) -> tuple[Reward, ...]:
    return tuple(Reward(str(r["reward_id"]), int(r["quantity"])) for r in values or ())


def load_level_table(client: Any, table_prefix: str) -> LevelTable:
    """The whole level table, strongly consistent."""
    table = CatalogTable(client, table_prefix, LEVELS)
    return LevelTable(
        Level(int(v["level"]), int(v["xp_required"]), _rewards_from(v.get("rewards"))) for v in table.scan_all()
    )


def level_reached_from(values: Mapping[str, Any]) -> LevelReached:
    return LevelReached(
        int(values["level"]),
        int(values["from_level"]),
        _rewards_from(values.get("rewards")),
        values.get("check_id", ""),
        values.get("granted_at", ""),
    )


def read_levels_reached(client: Any, table_prefix: str, user_id: str) -> list[LevelReached]:
    """Every level a user passed, in level order."""
    reached: list[LevelReached] = []
    for page in client.get_paginator("query").paginate(
        TableName=table_prefix + LEVEL_REWARDS.name,
        KeyConditionExpression="user_id = :u",
        ExpressionAttributeValues={":u": attr(user_id)},
        ConsistentRead=True,
    ):
        reached.extend(level_reached_from(from_item(item)) for item in page["Items"])
    return reached


def batch_get_consistent(client: Any, keys: Mapping[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """BatchGetItem over several tables in one round trip (more when DynamoDB
    leaves keys unprocessed), strongly consistent; at most 100 keys."""
    found: dict[str, list[dict[str, Any]]] = {table: [] for table in keys}
    pending: dict[str, Any] = {
        table: {"Keys": [to_item(k) for k in table_keys], "ConsistentRead": True}
        for table, table_keys in keys.items()
        if table_keys
    }
    attempt = 0
    while pending:
        response = client.batch_get_item(RequestItems=pending)
        for table, items in response["Responses"].items():
            found[table].extend(from_item(item) for item in items)
        pending = response.get("UnprocessedKeys") or {}
        if pending:  # throttled: back off before asking for the rest
            time.sleep(random.uniform(0, 0.01 * 2 ** min(attempt, 6)))
            attempt += 1
    return found


def transact_get(client: Any, keys: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any] | None]:
    """Reads items of several tables as one isolated snapshot (TransactGetItems),
    unlike BatchGetItem, which may see one item before a transaction and another
    after it. At most 100 items; None where an item does not exist."""
    for attempt in range(_TRANSACTION_ATTEMPTS):
        try:
            response = client.transact_get_items(
                TransactItems=[{"Get": {"TableName": table, "Key": to_item(key)}} for table, key in keys]
            )
            return [from_item(r["Item"]) if r.get("Item") else None for r in response["Responses"]]
        except ClientError as error:
            if error_code(error) != "TransactionCanceledException" or "TransactionConflict" not in cancellation_codes(
                error
            ):
                raise
        time.sleep(random.uniform(0, 0.01 * 2**attempt))
    raise ContentionExhausted("too many concurrent writes to this user; retry the request")
