"""Reads and catalog writes more than one service makes: whole-item catalog
tables and a process's copies of their entries, the user's progress item, and
the levels a user reached."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

from common.dynamodb.client import ConditionalCheckFailed, DynamoDBClient
from common.dynamodb.items import attr, decode_page_token, encode_page_token, from_item, to_item
from common.dynamodb.tables import LEVEL_REWARDS, USER_PROGRESS, TableDefinition
from common.dynamodb.transactions import batch_get_consistent
from common.models import LevelReached, ProgressRecord, Reward

Entry = TypeVar("Entry")


class CatalogCopies(Generic[Entry]):
    """A process's copies of catalog entries, read on first use. Never trusted
    on their own: the write that relies on one checks it against the catalog
    item in the same transaction (a ConditionCheck, no extra round trip), so a
    stale copy costs one retry, whichever replica changed the catalog. Past
    `limit` entries it starts over: this only bounds memory against a runaway catalog."""

    def __init__(self, limit: int = 10_000) -> None:
        self._copies: dict[str, Entry] = {}
        self._limit = limit

    async def get(self, key: str, read: Callable[[str], Awaitable[Entry]]) -> Entry:
        copy = self._copies.get(key)
        if copy is None:
            copy = await read(key)
            if len(self._copies) >= self._limit:
                self._copies.clear()
            self._copies[key] = copy
        return copy

    def drop(self, key: str) -> None:
        self._copies.pop(key, None)


class CatalogTable:
    """Whole-item reads and writes of one catalog table (activities,
    achievements, levels): catalog writes replace an entry, last writer wins."""

    def __init__(self, client: DynamoDBClient, table_prefix: str, table: TableDefinition) -> None:
        self._client = client
        self.name = table_prefix + table.name
        self._key = table.hash_key[0]

    async def put(self, values: Mapping[str, Any]) -> None:
        await self._client.call("PutItem", {"TableName": self.name, "Item": to_item(values)})

    async def get(self, key: Any) -> dict[str, Any] | None:
        response = await self._client.call(
            "GetItem", {"TableName": self.name, "Key": {self._key: attr(key)}, "ConsistentRead": True}
        )
        return from_item(response["Item"]) if "Item" in response else None

    async def delete(self, key: Any) -> bool:
        """False when there was no such entry."""
        try:
            await self._client.call(
                "DeleteItem",
                {
                    "TableName": self.name,
                    "Key": {self._key: attr(key)},
                    "ConditionExpression": "attribute_exists(#k)",
                    "ExpressionAttributeNames": {"#k": self._key},
                },
            )
            return True
        except ConditionalCheckFailed:
            return False

    async def scan_all(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        params: dict[str, Any] = {"TableName": self.name, "ConsistentRead": True}
        while True:
            page = await self._client.call("Scan", params)
            items.extend(from_item(item) for item in page["Items"])
            if not page.get("LastEvaluatedKey"):
                return items
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    async def page(
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
        response = await self._client.call("Query" if index else "Scan", params)
        return [from_item(item) for item in response["Items"]], encode_page_token(response.get("LastEvaluatedKey"))

    async def batch_get(self, keys: list[Any]) -> dict[Any, dict[str, Any]]:
        found: dict[Any, dict[str, Any]] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 100):  # BatchGetItem's limit
            chunk = [{self._key: k} for k in unique[start : start + 100]]
            for values in (await batch_get_consistent(self._client, {self.name: chunk}))[self.name]:
                found[values[self._key]] = values
        return found


async def read_progress(
    client: DynamoDBClient, table_prefix: str, user_id: str, attributes: tuple[str, ...] = ()
) -> ProgressRecord:
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
    response = await client.call("GetItem", params)
    return ProgressRecord.from_attributes(user_id, from_item(response["Item"]) if "Item" in response else None)


def rewards_from(values: Any) -> tuple[Reward, ...]:
    return tuple(Reward(str(r["reward_id"]), int(r["quantity"])) for r in values or ())


def level_reached_from(values: Mapping[str, Any]) -> LevelReached:
    return LevelReached(
        int(values["level"]),
        int(values["from_level"]),
        rewards_from(values.get("rewards")),
        values.get("check_id", ""),
        values.get("granted_at", ""),
    )


async def read_levels_reached(
    client: DynamoDBClient,
    table_prefix: str,
    user_id: str,
    limit: int,
    *,
    after_level: int = 0,
    newest_first: bool = False,
) -> tuple[list[LevelReached], bool]:
    """Up to `limit` levels the user passed, in level order after `after_level`
    (or the newest first), and whether there are more: one Query, whatever
    the user passed."""
    params: dict[str, Any] = {
        "TableName": table_prefix + LEVEL_REWARDS.name,
        "KeyConditionExpression": "user_id = :u",
        "ExpressionAttributeValues": {":u": attr(user_id)},
        "ScanIndexForward": not newest_first,
        "Limit": limit + 1,  # one more tells whether there are more
        "ConsistentRead": True,
    }
    if after_level:
        params["ExclusiveStartKey"] = {"user_id": attr(user_id), "level": attr(after_level)}
    page = await client.call("Query", params)
    reached = [level_reached_from(from_item(item)) for item in page["Items"]]
    # A page ends at 1 MB too (DynamoDB's limit), before `limit` items: then there are more.
    return reached[:limit], len(reached) > limit or bool(page.get("LastEvaluatedKey"))
