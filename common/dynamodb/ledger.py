"""The XP ledger's items, for the two services that write it (XP: awards and
grants; Achievements: an unlock's reward, in the unlock's own transaction), and
the deferred-check mark either of them may leave."""

from __future__ import annotations

from typing import Any

from common.dynamodb.client import DynamoDBClient
from common.dynamodb.items import attr, to_item
from common.dynamodb.tables import USER_PROGRESS, XP_LEDGER
from common.dynamodb.transactions import transact_write
from common.models import ACTIVITY, LedgerEntry

_OPTIONAL = ("request_id", "activity_id", "category", "reason", "achievement_id", "reverses_entry_id")


def ledger_put(table_prefix: str, entry: LedgerEntry) -> dict[str, Any]:
    """A transaction item: the entry, put only if its id is new (the old entry
    comes back with the cancellation when it is not)."""
    values: dict[str, Any] = {
        "user_id": entry.user_id,
        "entry_id": entry.entry_id,
        "kind": entry.kind,
        "xp": entry.xp,
        "recorded_at": entry.recorded_at,
        "attempt_id": entry.attempt_id,
    }
    values.update({name: getattr(entry, name) for name in _OPTIONAL if getattr(entry, name)})
    if (entry.kind == ACTIVITY and not entry.capped) or entry.counted:
        # An award: added to its counters (activity_counts), unlike awards an earlier version recorded.
        # A revoke: took one off the counters of the award it reverses.
        values["counted"] = True
    if entry.capped:
        values["capped"] = True
    return {
        "Put": {
            "TableName": table_prefix + XP_LEDGER.name,
            "Item": to_item(values),
            "ConditionExpression": "attribute_not_exists(entry_id)",
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
    }


def ledger_entry_from(values: dict[str, Any]) -> LedgerEntry:
    return LedgerEntry(
        user_id=values["user_id"],
        entry_id=values["entry_id"],
        request_id=values.get("request_id", ""),
        kind=values["kind"],
        xp=int(values["xp"]),
        activity_id=values.get("activity_id", ""),
        category=values.get("category", ""),
        reason=values.get("reason", ""),
        achievement_id=values.get("achievement_id", ""),
        recorded_at=values.get("recorded_at", ""),
        attempt_id=values.get("attempt_id", ""),
        level_check_deferred=bool(values.get("level_check_deferred", False)),
        unlocks_deferred=bool(values.get("unlocks_deferred", False)),
        counted=bool(values.get("counted", False)),
        reverses_entry_id=values.get("reverses_entry_id", ""),
        capped=bool(values.get("capped", False)),
    )


async def mark_unlocks_deferred(client: DynamoDBClient, table_prefix: str, user_id: str, entry_id: str) -> None:
    """On the failure path only (Achievements could not answer): the entry's
    repeats evaluate the user, instead of listing what the first recorded."""
    await client.call(
        "UpdateItem",
        {
            "TableName": table_prefix + XP_LEDGER.name,
            "Key": {"user_id": attr(user_id), "entry_id": attr(entry_id)},
            "UpdateExpression": "SET unlocks_deferred = :t",
            "ExpressionAttributeValues": {":t": attr(True)},
        },
    )


async def mark_level_check_deferred(client: DynamoDBClient, table_prefix: str, user_id: str, entry_id: str) -> None:
    """One transaction, on the failure path only (Levels could not answer):
    the entry's repeats may then grant the level-up it made due."""
    await transact_write(
        client,
        [
            {
                "Update": {
                    "TableName": table_prefix + XP_LEDGER.name,
                    "Key": {"user_id": attr(user_id), "entry_id": attr(entry_id)},
                    "UpdateExpression": "SET level_check_deferred = :t",
                    "ExpressionAttributeValues": {":t": attr(True)},
                }
            },
            {
                "Update": {
                    "TableName": table_prefix + USER_PROGRESS.name,
                    "Key": {"user_id": attr(user_id)},
                    "UpdateExpression": "SET deferred_check = :e",
                    "ExpressionAttributeValues": {":e": attr(entry_id)},
                }
            },
        ],
    )
