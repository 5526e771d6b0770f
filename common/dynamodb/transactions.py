"""Transactions and conflict retries: what every repository's writes share.

A condition that fails is the caller's business (a duplicate, a lost race):
it comes back as one TransactionCancelled carrying each item's reason. A
conflict with another transaction (which real DynamoDB reports and DynamoDB
Local never does) is retried here with jittered backoff: a cancelled
transaction wrote nothing, so the retry is safe."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from common.dynamodb.client import ConditionalCheckFailed, DynamoDBClient, DynamoDBError, TransactionCancelled
from common.dynamodb.items import from_item, to_item
from common.errors import ContentionExhausted, DependencyUnavailable, DomainError

T = TypeVar("T")

_TRANSACTION_ATTEMPTS = 8
_THROTTLED_REASONS = {"ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"}


async def _backoff(attempt: int) -> None:
    await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt))


async def transact_write(client: DynamoDBClient, items: list[dict[str, Any]]) -> None:
    """Runs a transaction. Raises TransactionCancelled when a condition failed
    (its `reasons` say which items, with the old item where the request asked
    for it with ReturnValuesOnConditionCheckFailure)."""
    for attempt in range(_TRANSACTION_ATTEMPTS):
        try:
            await client.call("TransactWriteItems", {"TransactItems": items})
            return
        except TransactionCancelled as cancelled:
            codes = cancelled.codes
            if "ConditionalCheckFailed" in codes:
                raise
            if _THROTTLED_REASONS & codes:
                raise DependencyUnavailable("DynamoDB is throttling this user's writes; retry with backoff") from None
            if "TransactionConflict" not in codes:
                raise
        await _backoff(attempt)
    raise ContentionExhausted("too many concurrent writes to this user; retry the request")


async def retry_on_transaction_conflict(write: Callable[[], Awaitable[T]]) -> T:
    """Runs a single-item write, retrying when real DynamoDB rejects it for
    touching an item that a transaction is writing (TransactionConflictException).
    A rejected write changed nothing."""
    for attempt in range(_TRANSACTION_ATTEMPTS):
        try:
            return await write()
        except DynamoDBError as error:
            if error.code != "TransactionConflictException":
                raise
        await _backoff(attempt)
    raise ContentionExhausted("too many concurrent writes to this user; retry the request")


async def update_item_once(client: DynamoDBClient, params: dict[str, Any]) -> bool:
    """A conditional UpdateItem: True when it wrote, False when its condition
    was false (another caller got there first); conflicts with a transaction
    on the item are retried."""
    try:
        await retry_on_transaction_conflict(lambda: client.call("UpdateItem", params))
        return True
    except ConditionalCheckFailed:
        return False


async def transact_get(client: DynamoDBClient, keys: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any] | None]:
    """Reads items of several tables as one isolated snapshot (TransactGetItems),
    unlike BatchGetItem, which may see one item before a transaction and another
    after it. At most 100 items; None where an item does not exist."""
    for attempt in range(_TRANSACTION_ATTEMPTS):
        try:
            response = await client.call(
                "TransactGetItems",
                {"TransactItems": [{"Get": {"TableName": table, "Key": to_item(key)}} for table, key in keys]},
            )
            return [from_item(r["Item"]) if r.get("Item") else None for r in response["Responses"]]
        except TransactionCancelled as cancelled:
            if "TransactionConflict" not in cancelled.codes:
                raise
        await _backoff(attempt)
    raise ContentionExhausted("too many concurrent writes to this user; retry the request")


async def batch_get_consistent(
    client: DynamoDBClient, keys: Mapping[str, list[dict[str, Any]]]
) -> dict[str, list[dict[str, Any]]]:
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
        response = await client.call("BatchGetItem", {"RequestItems": pending})
        for table, items in response["Responses"].items():
            found[table].extend(from_item(item) for item in items)
        pending = response.get("UnprocessedKeys") or {}
        if pending:  # throttled: back off before asking for the rest
            await _backoff(min(attempt, 6))
            attempt += 1
    return found


def storage_error_as_domain_error(error: Exception) -> DomainError | None:
    """A DynamoDB error the caller can act on (retry later), or None for one that is a bug."""
    if isinstance(error, TransactionCancelled) and error.codes <= {"None", "TransactionConflict"} | _THROTTLED_REASONS:
        return DependencyUnavailable("DynamoDB is throttling or contended on these items; retry with backoff")
    if isinstance(error, DynamoDBError) and (error.retryable or error.code == "TransactionConflictException"):
        if error.code in ("ConnectionError", "Timeout"):
            return DependencyUnavailable(f"DynamoDB could not be reached ({error.code}); retry")
        return DependencyUnavailable(f"DynamoDB is busy ({error.code}); retry with backoff")
    return None
