"""Writes to the user_progress item that more than one service needs."""

from __future__ import annotations

from common.dynamodb.client import DynamoDBClient
from common.dynamodb.items import attr
from common.dynamodb.tables import USER_PROGRESS
from common.dynamodb.transactions import update_item_once


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
