"""The achievement catalog's auto-unlock rules as XP and Achievements read
them: the requirements' item codec (the catalog's own), and a copy of the
rules in memory, read again in the background once it is older than its
refresh interval, so that no award scans the catalog. A stale copy costs at
most one evaluation too many or a rule evaluated one interval late: the
watches carry the fingerprint of the rules they were written under, and the
unlock's transaction checks the catalog entry's revision."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from common.auto_unlock import ActivityCount, AutoRule, AutoRules, Requirements
from common.dynamodb.client import DynamoDBClient, DynamoDBError
from common.dynamodb.items import attr, from_item
from common.dynamodb.level_table import shared_task, within_deadline
from common.dynamodb.tables import ACHIEVEMENTS

log = logging.getLogger("rewards.auto_rules")


def requirements_to_values(requirements: Requirements) -> dict[str, Any]:
    values: dict[str, Any] = {
        "required_achievements": list(requirements.required_achievements),
        "min_total_xp": requirements.min_total_xp,
        "min_level": requirements.min_level,
    }
    if requirements.activity_counts:
        values["activity_counts"] = [
            {"activity_id": c.activity_id, "category": c.category, "count": c.count}
            for c in requirements.activity_counts
        ]
    return values


def requirements_from_values(values: Mapping[str, Any] | None) -> Requirements:
    values = values or {}
    return Requirements(
        required_achievements=tuple(values.get("required_achievements", ())),
        min_total_xp=int(values.get("min_total_xp", 0)),
        min_level=int(values.get("min_level", 0)),
        activity_counts=tuple(
            ActivityCount(str(c.get("activity_id", "")), str(c.get("category", "")), int(c.get("count", 0)))
            for c in values.get("activity_counts", ())
        ),
    )


class AutoRulesCache:
    """`current()`: the rules as last read, read again (one Scan of the
    catalog, shared by the callers waiting meanwhile) once older than
    `refresh_s`; `forget()` after a catalog write through this process."""

    def __init__(self, client: DynamoDBClient, table_prefix: str, refresh_s: float) -> None:
        self._client = client
        self._table = table_prefix + ACHIEVEMENTS.name
        self._refresh_s = refresh_s
        self._rules = AutoRules()
        self._read_at = -float("inf")
        self._read_once = False
        self._reading: Any = None

    async def current(self) -> AutoRules:
        if time.monotonic() - self._read_at > self._refresh_s:
            if self._reading is None:
                self._reading = shared_task(self._read())
            await within_deadline(self._reading)
        return self._rules

    def forget(self) -> None:
        self._read_at = -float("inf")

    async def _read(self) -> None:
        try:
            read_at = time.monotonic()
            rules: list[AutoRule] = []
            params: dict[str, Any] = {
                "TableName": self._table,
                "ConsistentRead": True,
                "FilterExpression": "auto_unlock = :t",
                "ProjectionExpression": "achievement_id, requirements, revision",
                "ExpressionAttributeValues": {":t": attr(True)},
            }
            while True:
                page = await self._client.call("Scan", params)
                for item in page["Items"]:
                    values = from_item(item)
                    rules.append(
                        AutoRule(
                            str(values["achievement_id"]),
                            requirements_from_values(values.get("requirements")),
                            str(values.get("revision", "")),
                        )
                    )
                if not page.get("LastEvaluatedKey"):
                    break
                params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
            self._rules, self._read_at, self._read_once = AutoRules.of(rules), read_at, True
        except (DynamoDBError, OSError) as error:
            log.warning("auto-unlock rules read failed", extra={"fields": {"error": repr(error)}})
            if not self._read_once:
                raise
            # An award was recorded before it asks: answer it from the last rules read (a stale copy costs
            # at most an evaluation too many or one late), and read again at the next call.
        finally:
            self._reading = None
