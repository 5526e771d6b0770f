"""The streak catalog's items (common.streaks.Streak), and the catalog as XP's
awards read it: a copy in memory, read again once older than its refresh
interval (common.dynamodb.catalog_snapshot), so that no award scans it. A
stale copy is at most one interval late: a streak put a moment ago starts
counting the awards of its activity up to that long after."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.dynamodb.catalog_snapshot import CatalogSnapshot
from common.dynamodb.client import DynamoDBClient
from common.dynamodb.tables import STREAKS
from common.streaks import Streak


def streak_to_values(streak: Streak) -> dict[str, Any]:
    values: dict[str, Any] = {"streak_id": streak.streak_id, "name": streak.name, "period": streak.period}
    if streak.activity_id:
        values["activity_id"] = streak.activity_id
    if streak.category:
        values["category"] = streak.category
    return values


def streak_from_values(values: Mapping[str, Any]) -> Streak:
    return Streak(
        streak_id=str(values["streak_id"]),
        name=str(values.get("name", "")),
        period=str(values.get("period", "")),
        activity_id=str(values.get("activity_id", "")),
        category=str(values.get("category", "")),
    )


def is_deleted(values: Mapping[str, Any]) -> bool:
    return bool(values.get("deleted", False))


class StreakCatalogSnapshot(CatalogSnapshot[tuple[Streak, ...]]):
    """The streaks in the catalog (not deleted), in id order."""

    def __init__(self, client: DynamoDBClient, table_prefix: str, refresh_s: float) -> None:
        super().__init__(
            client,
            {"TableName": table_prefix + STREAKS.name, "FilterExpression": "attribute_not_exists(deleted)"},
            refresh_s,
            (),
            "streak catalog",
        )

    def build(self, items: list[dict[str, Any]]) -> tuple[Streak, ...]:
        return tuple(sorted((streak_from_values(v) for v in items), key=lambda s: s.streak_id))
