"""The achievement catalog's auto-unlock rules as XP and Achievements read
them: the requirements' item codec (the catalog's own), and a copy of the
rules in memory, read again in the background once it is older than its
refresh interval, so that no award scans the catalog. A stale copy costs at
most one evaluation too many or a rule evaluated one interval late: the
watches carry the fingerprint of the rules they were written under, and the
unlock's transaction checks the catalog entry's revision."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.auto_unlock import ActivityCount, AutoRule, AutoRules, Requirements
from common.dynamodb.catalog_snapshot import CatalogSnapshot
from common.dynamodb.client import DynamoDBClient
from common.dynamodb.items import attr
from common.dynamodb.tables import ACHIEVEMENTS
from common.streaks import StreakLength


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
    if requirements.streak_lengths:
        values["streak_lengths"] = [{"streak_id": s.streak_id, "length": s.length} for s in requirements.streak_lengths]
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
        streak_lengths=tuple(
            StreakLength(str(s["streak_id"]), int(s.get("length", 0))) for s in values.get("streak_lengths", ())
        ),
    )


class AutoRulesCache(CatalogSnapshot[AutoRules]):
    """The catalog's auto-unlock rules as last read (common.dynamodb.catalog_snapshot)."""

    def __init__(self, client: DynamoDBClient, table_prefix: str, refresh_s: float) -> None:
        super().__init__(
            client,
            {
                "TableName": table_prefix + ACHIEVEMENTS.name,
                "FilterExpression": "auto_unlock = :t",
                "ProjectionExpression": "achievement_id, requirements, revision",
                "ExpressionAttributeValues": {":t": attr(True)},
            },
            refresh_s,
            AutoRules(),
            "auto-unlock rules",
        )

    def build(self, items: list[dict[str, Any]]) -> AutoRules:
        return AutoRules.of(
            AutoRule(
                str(values["achievement_id"]),
                requirements_from_values(values.get("requirements")),
                str(values.get("revision", "")),
            )
            for values in items
        )
