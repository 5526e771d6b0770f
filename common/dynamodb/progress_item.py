"""Writes to the user_progress item that more than one service needs."""

from __future__ import annotations

from typing import Any

from common.dynamodb.client import DynamoDBClient
from common.dynamodb.items import attr
from common.dynamodb.tables import USER_PROGRESS
from common.dynamodb.transactions import update_item_once
from common.models import LedgerEntry


async def move_unlocked_ids_out_of_progress(client: DynamoDBClient, table_prefix: str, user_id: str) -> bool:
    """An earlier version kept the unlocked ids in the progress item, which a
    large collection could fill to DynamoDB's 400 KB: then a write that grows
    the item (an award's total, a level-up's threshold) had no room. The ids
    are the unlock records, so the set goes, as the user's next unlock would
    take it. True when there was one to remove: the failed write is worth one
    more try."""
    return await update_item_once(
        client,
        {
            "TableName": table_prefix + USER_PROGRESS.name,
            "Key": {"user_id": attr(user_id)},
            "UpdateExpression": "REMOVE unlocked_achievements SET holds_achievements = :t",
            "ConditionExpression": "attribute_exists(unlocked_achievements)",
            "ExpressionAttributeValues": {":t": attr(True)},
        },
    )


# What an XP event tells of its entry (events_service reads it from the progress item's stream).
_CHANGE_FIELDS = ("request_id", "activity_id", "achievement_id", "reason")


def last_change(entry: LedgerEntry) -> dict[str, Any]:
    """The value of the progress item's `last_change`, set by every update
    that moves its total in the same expression: the entry it moved by. The
    total after a change is known only there (concurrent awards ADD to it),
    so the item's stream image holds both, and an XP event is exact without
    another write or read."""
    change: dict[str, Any] = {"entry_id": entry.entry_id, "kind": entry.kind, "xp": entry.xp}
    change["recorded_at"] = entry.recorded_at
    change.update({name: getattr(entry, name) for name in _CHANGE_FIELDS if getattr(entry, name)})
    if entry.capped:
        change["capped"] = True
    return change
