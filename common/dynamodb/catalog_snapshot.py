"""A catalog table's entries as one process last read them: read again in the
background once older than the refresh interval, so that no award scans a
catalog. A stale copy is at most one interval late; a failed read serves the
last copy (the award it answers is already recorded) and reads again at the
next call."""

from __future__ import annotations

import logging
import time
from typing import Any, Generic, TypeVar

from common.dynamodb.client import DynamoDBClient, DynamoDBError
from common.dynamodb.items import from_item
from common.dynamodb.level_table import shared_task, within_deadline

log = logging.getLogger("rewards.catalog_snapshot")

T = TypeVar("T")


class CatalogSnapshot(Generic[T]):
    """`current()`: what `build` made of the table's items as last read (one
    Scan, shared by the callers waiting meanwhile), read again once older than
    `refresh_s`; `forget()` after a catalog write through this process."""

    def __init__(self, client: DynamoDBClient, scan: dict[str, Any], refresh_s: float, empty: T, what: str) -> None:
        self._client = client
        self._scan = scan | {"ConsistentRead": True}
        self._refresh_s = refresh_s
        self._what = what
        self._value = empty
        self._read_at = -float("inf")
        self._read_once = False
        self._reading: Any = None
        # Moved by forget(): a read that started before a catalog write does not count as fresh.
        self._generation = 0

    def build(self, items: list[dict[str, Any]]) -> T:
        raise NotImplementedError

    async def current(self) -> T:
        if time.monotonic() - self._read_at > self._refresh_s:
            if self._reading is None:
                self._reading = shared_task(self._read())
            await within_deadline(self._reading)
        return self._value

    async def fresh(self) -> T:
        """The catalog as it is now: a read that starts after this call."""
        self.forget()
        if self._reading is not None:
            await within_deadline(self._reading)  # it started before: not fresh
        return await self.current()

    def forget(self) -> None:
        self._read_at = -float("inf")
        self._generation += 1

    async def _read(self) -> None:
        generation = self._generation
        try:
            read_at = time.monotonic()
            items: list[dict[str, Any]] = []
            params = dict(self._scan)
            while True:
                page = await self._client.call("Scan", params)
                items.extend(from_item(item) for item in page["Items"])
                if not page.get("LastEvaluatedKey"):
                    break
                params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
            if generation != self._generation:  # a write through this process came after the read began
                read_at = -float("inf")
            self._value, self._read_at, self._read_once = self.build(items), read_at, True
        except (DynamoDBError, OSError) as error:
            log.warning(f"{self._what} read failed", extra={"fields": {"error": repr(error)}})
            if not self._read_once:
                raise
        finally:
            self._reading = None
