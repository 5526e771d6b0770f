"""The level table as every service reads it: a copy in memory that knows its
version, kept current in the background, so that no request scans the table
and a table's size does not change a request's cost.

The table's version item (LEVEL_TABLE_VERSION_KEY) moves in the same
transaction as every level write. A refresh reads that one item; only when the
version moved does it scan the table again, and it keeps the scan only when the
version was the same before and after it (so the copy is one version, whole).
A level-up is written with a ConditionCheck that the version is still the one
it was planned on, so a stale copy can delay a level-up but never grant a wrong one."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import zlib
from collections.abc import Coroutine
from typing import Any

from common.dynamodb.client import DynamoDBClient, DynamoDBError
from common.dynamodb.items import attr, from_item
from common.dynamodb.reads import rewards_from
from common.dynamodb.tables import LEVEL_TABLE_VERSION_COPIES, LEVEL_TABLE_VERSION_KEY, LEVELS
from common.errors import DeadlineReached, DomainError
from common.models import Level, LevelTable, VersionedLevelTable
from common.rpc_deadline import remaining_s

log = logging.getLogger("rewards.level_table")


def version_check(table_name: str, version: int, user_id: str) -> dict[str, Any]:
    """A transaction item that holds only while the level table is at
    `version`, on the copy of the version that `user_id` hashes to."""
    condition = "#v = :v" if version else "attribute_not_exists(#v) OR #v = :v"
    copy = zlib.crc32(user_id.encode()) % LEVEL_TABLE_VERSION_COPIES
    return {
        "ConditionCheck": {
            "TableName": table_name,
            "Key": {"level": attr(LEVEL_TABLE_VERSION_KEY - copy)},
            "ConditionExpression": condition,
            "ExpressionAttributeNames": {"#v": "version"},
            "ExpressionAttributeValues": {":v": attr(version)},
        }
    }


def version_bump(table_name: str, expected_version: int | None = None) -> list[dict[str, Any]]:
    """The transaction items that every level write carries: every copy of the
    version moves by one; with `expected_version`, only from that version."""
    items: list[dict[str, Any]] = [
        {
            "Update": {
                "TableName": table_name,
                "Key": {"level": attr(LEVEL_TABLE_VERSION_KEY - copy)},
                "UpdateExpression": "ADD #v :one",
                "ExpressionAttributeNames": {"#v": "version"},
                "ExpressionAttributeValues": {":one": attr(1)},
            }
        }
        for copy in range(LEVEL_TABLE_VERSION_COPIES)
    ]
    if expected_version is not None:  # on copy 0: every copy moves in the same transactions
        update = items[0]["Update"]
        update["ConditionExpression"] = "#v = :v" if expected_version else "attribute_not_exists(#v) OR #v = :v"
        update["ExpressionAttributeValues"][":v"] = attr(expected_version)
    return items


class LevelTableCache:
    """`version()` is the table's version as last read, read again (one
    GetItem, shared by the callers waiting meanwhile) once it is older than
    `refresh_s`: what an award needs, without waiting for any scan.
    `current()` is a copy of that version, scanned when the version moved (once
    per change and process, shared). `at_least(v)` waits for a copy of version
    v or later: what a caller that saw a newer version in a user's progress needs."""

    def __init__(self, client: DynamoDBClient, table_prefix: str, refresh_s: float) -> None:
        self._client = client
        self.table_name = table_prefix + LEVELS.name
        self._refresh_s = refresh_s
        self._current: VersionedLevelTable | None = None
        self._version = 0
        self._version_read_at = -float("inf")
        self._confirming: asyncio.Task[None] | None = None
        self._loading: asyncio.Task[None] | None = None

    async def version(self) -> int:
        if time.monotonic() - self._version_read_at > self._refresh_s:
            if self._confirming is None:
                self._confirming = shared_task(self._confirm())
            await within_deadline(self._confirming)
        return self._version

    async def current(self) -> VersionedLevelTable:
        version = await self.version()
        if self._current is None or self._current.version != version:
            await self._load_once()
        assert self._current is not None
        return self._current

    async def at_least(self, version: int) -> VersionedLevelTable:
        current = await self.current()
        for _ in range(3):
            if current.version >= version:
                break
            self._version_read_at = -float("inf")  # the version item says otherwise: read it again
            current = await self.current()
        return current

    async def reload_after_write(self) -> None:
        """Reads the table now, after a level write through this process, so
        that this process answers from it at once. Best effort: the write is
        done whatever this read meets; when it fails, the next use reads the
        version again."""
        try:
            if self._loading is not None:  # it may have read the table before the write
                with contextlib.suppress(DynamoDBError, OSError):
                    await asyncio.shield(self._loading)
            await self._load_once()
        except (DynamoDBError, DomainError, OSError) as error:
            self._version_read_at = -float("inf")
            log.warning("level table reload after a write failed", extra={"fields": {"error": repr(error)}})

    async def _confirm(self) -> None:
        try:
            read_at = time.monotonic()
            self._version = await self._version_item()
            self._version_read_at = read_at
        finally:
            self._confirming = None

    async def _load_once(self) -> None:
        if self._loading is None:
            self._loading = shared_task(self._load())
        await within_deadline(self._loading)

    async def _load(self) -> None:
        try:
            while True:
                read_at = time.monotonic()
                version = await self._version_item()
                table = await self._scan()
                if await self._version_item() == version:  # the scan saw one version, whole
                    self._current = VersionedLevelTable(version, table, read_at)
                    if read_at >= self._version_read_at:
                        self._version, self._version_read_at = version, read_at
                    return
        except (DynamoDBError, OSError) as error:
            log.warning("level table read failed", extra={"fields": {"error": repr(error)}})
            raise
        finally:
            self._loading = None

    async def _version_item(self) -> int:
        response = await self._client.call(
            "GetItem",
            {
                "TableName": self.table_name,
                "Key": {"level": attr(LEVEL_TABLE_VERSION_KEY)},
                "ConsistentRead": True,
            },
        )
        return int(from_item(response.get("Item") or {}).get("version", 0))

    async def _scan(self) -> LevelTable:
        levels: list[Level] = []
        params: dict[str, Any] = {"TableName": self.table_name, "ConsistentRead": True}
        while True:
            page = await self._client.call("Scan", params)
            for item in page["Items"]:
                values = from_item(item)
                if int(values["level"]) > LEVEL_TABLE_VERSION_KEY:  # the version's copies are 0 and below
                    levels.append(
                        Level(int(values["level"]), int(values["xp_required"]), rewards_from(values.get("rewards")))
                    )
            if not page.get("LastEvaluatedKey"):
                return LevelTable(levels)
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def shared_task(work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """A read that every waiting request shares: run in a context of its own,
    so that it is bound by no one request's deadline (the client's own
    timeouts bound it), and logged only for what it is."""
    task = asyncio.create_task(work, context=contextvars.Context())
    # Its waiters may all be gone (cancelled) when it fails: the failure is logged in it, not lost.
    task.add_done_callback(lambda done: done.cancelled() or done.exception())
    return task


async def within_deadline(shared: asyncio.Task[None]) -> None:
    """Waits for a shared read no longer than the served RPC's deadline; the
    read goes on for the others."""
    left = remaining_s()
    if left is None:
        await asyncio.shield(shared)
        return
    try:
        await asyncio.wait_for(asyncio.shield(shared), max(left, 0.0))
    except TimeoutError:
        raise DeadlineReached("the deadline passed while the level table was being read") from None
