"""The achievements repository over DynamoDB: the achievement catalog, unlock
records and the achievement part of user_progress."""

from __future__ import annotations

import functools
import operator
from typing import Any

from boto3.dynamodb.conditions import Attr, ConditionExpressionBuilder

from achievements_service.domain import (
    Achievement,
    AchievementNotFound,
    AlreadyUnlocked,
    Requirements,
    RequirementsChangedConcurrently,
    Unlock,
)
from common.dynamodb import (
    ACHIEVEMENTS,
    USER_ACHIEVEMENTS,
    USER_PROGRESS,
    CatalogTable,
    DynamoDBClient,
    LevelTableCache,
    TransactionCancelled,
    attr,
    from_item,
    read_progress,
    to_item,
    transact_get,
    transact_write,
    update_item_once,
)
from common.models import ProgressRecord


def _achievement_to_values(achievement: Achievement) -> dict[str, Any]:
    return {
        "achievement_id": achievement.achievement_id,
        "name": achievement.name,
        "description": achievement.description,
        "xp_reward": achievement.xp_reward,
        "hidden": achievement.hidden,
        "requirements": {
            "required_achievements": list(achievement.requirements.required_achievements),
            "min_total_xp": achievement.requirements.min_total_xp,
            "min_level": achievement.requirements.min_level,
        },
    }


def _achievement_from(values: dict[str, Any]) -> Achievement:
    requirements = values.get("requirements") or {}
    return Achievement(
        achievement_id=values["achievement_id"],
        name=values.get("name", ""),
        description=values.get("description", ""),
        xp_reward=int(values.get("xp_reward", 0)),
        hidden=bool(values.get("hidden", False)),
        requirements=Requirements(
            required_achievements=tuple(requirements.get("required_achievements", ())),
            min_total_xp=int(requirements.get("min_total_xp", 0)),
            min_level=int(requirements.get("min_level", 0)),
        ),
    )


def _unlock_from(values: dict[str, Any]) -> Unlock:
    return Unlock(
        user_id=values["user_id"],
        achievement_id=values["achievement_id"],
        unlocked_at=values.get("unlocked_at", ""),
        xp_reward=int(values.get("xp_reward", 0)),
        xp_granted=bool(values.get("xp_granted", False)),
        request_id=values.get("request_id", ""),
    )


def requirements_guard(requirements: Requirements, level_is_stored: bool) -> Any:
    """The requirements as a condition on the progress item, so the unlock is
    written only if they still hold at that instant; None when there are none."""
    conditions: list[Any] = [Attr("unlocked_achievements").contains(a) for a in requirements.required_achievements]
    if requirements.min_total_xp:
        conditions.append(Attr("total_xp").gte(requirements.min_total_xp))
    if requirements.min_level:
        level: Any = Attr("level").gte(requirements.min_level)
        if not level_is_stored:
            # Without a stored level the user is at the start level, checked before.
            level = Attr("level").not_exists() | level
        conditions.append(level)
    return functools.reduce(operator.and_, conditions) if conditions else None


class DynamoDBAchievementsRepository:
    """achievements_service.domain.AchievementsRepository over DynamoDB."""

    def __init__(self, client: DynamoDBClient, table_prefix: str, level_table: LevelTableCache) -> None:
        self._client = client
        self._level_table = level_table
        self._prefix = table_prefix
        self._achievements = CatalogTable(client, table_prefix, ACHIEVEMENTS)
        self._unlocks = table_prefix + USER_ACHIEVEMENTS.name
        self._progress = table_prefix + USER_PROGRESS.name

    # --- catalog --------------------------------------------------------------

    async def put_achievement(self, achievement: Achievement) -> None:
        await self._achievements.put(_achievement_to_values(achievement))

    async def get_achievement(self, achievement_id: str) -> Achievement:
        values = await self._achievements.get(achievement_id)
        if values is None:
            raise AchievementNotFound(achievement_id)
        return _achievement_from(values)

    async def get_achievements(self, achievement_ids: list[str]) -> dict[str, Achievement]:
        return {k: _achievement_from(v) for k, v in (await self._achievements.batch_get(achievement_ids)).items()}

    async def list_achievements(self, page_size: int, page_token: str) -> tuple[list[Achievement], str]:
        items, token = await self._achievements.page(page_size, page_token)
        return [_achievement_from(values) for values in items], token

    async def delete_achievement(self, achievement_id: str) -> None:
        if not await self._achievements.delete(achievement_id):
            raise AchievementNotFound(achievement_id)

    # --- unlocks ------------------------------------------------------------------

    async def get_progress(self, user_id: str) -> ProgressRecord:
        return await read_progress(
            self._client, self._prefix, user_id, ("total_xp", "level", "unlocked_achievements", "updated_at")
        )

    async def read_for_unlock(
        self, user_id: str, achievement_id: str
    ) -> tuple[Unlock | None, Achievement | None, ProgressRecord]:
        """What an unlock decides on, in one round trip and as one snapshot:
        the user's earlier unlock of it, the catalog entry, and the progress."""
        unlock, achievement, progress = await transact_get(
            self._client,
            [
                (self._unlocks, {"user_id": user_id, "achievement_id": achievement_id}),
                (self._achievements.name, {"achievement_id": achievement_id}),
                (self._progress, {"user_id": user_id}),
            ],
        )
        return (
            _unlock_from(unlock) if unlock is not None else None,
            _achievement_from(achievement) if achievement is not None else None,
            ProgressRecord.from_attributes(user_id, progress),
        )

    async def get_unlock(self, user_id: str, achievement_id: str) -> Unlock | None:
        response = await self._client.call(
            "GetItem",
            {
                "TableName": self._unlocks,
                "Key": {"user_id": attr(user_id), "achievement_id": attr(achievement_id)},
                "ConsistentRead": True,
            },
        )
        return _unlock_from(from_item(response["Item"])) if "Item" in response else None

    async def list_unlocks(self, user_id: str) -> list[Unlock]:
        unlocks: list[Unlock] = []
        params: dict[str, Any] = {
            "TableName": self._unlocks,
            "KeyConditionExpression": "user_id = :u",
            "ExpressionAttributeValues": {":u": attr(user_id)},
            "ConsistentRead": True,
        }
        while True:
            page = await self._client.call("Query", params)
            unlocks.extend(_unlock_from(from_item(item)) for item in page["Items"])
            if not page.get("LastEvaluatedKey"):
                break
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return sorted(unlocks, key=lambda u: (u.unlocked_at, u.achievement_id))

    async def record_unlock_once(self, unlock: Unlock, requirements: Requirements, level_is_stored: bool) -> None:
        """Writes the unlock record and adds the achievement to the user's
        progress in one transaction, guarded by the requirements. Raises
        AlreadyUnlocked (with the existing record) or RequirementsChangedConcurrently."""
        values: dict[str, Any] = {
            "user_id": unlock.user_id,
            "achievement_id": unlock.achievement_id,
            "unlocked_at": unlock.unlocked_at,
            "xp_reward": unlock.xp_reward,
            "xp_granted": unlock.xp_granted,
        }
        if unlock.request_id:
            values["request_id"] = unlock.request_id
        update: dict[str, Any] = {
            "TableName": self._progress,
            "Key": {"user_id": attr(unlock.user_id)},
            "UpdateExpression": "ADD unlocked_achievements :a SET updated_at = :now",
            "ExpressionAttributeValues": to_item({":a": {unlock.achievement_id}, ":now": unlock.unlocked_at}),
        }
        guard = requirements_guard(requirements, level_is_stored)
        if guard is not None:
            built = ConditionExpressionBuilder().build_expression(guard)
            update["ConditionExpression"] = built.condition_expression
            update["ExpressionAttributeNames"] = built.attribute_name_placeholders
            update["ExpressionAttributeValues"].update(to_item(built.attribute_value_placeholders))
        try:
            await transact_write(
                self._client,
                [
                    {
                        "Put": {
                            "TableName": self._unlocks,
                            "Item": to_item(values),
                            "ConditionExpression": "attribute_not_exists(achievement_id)",
                            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                        }
                    },
                    {"Update": update},
                ],
            )
        except TransactionCancelled as cancelled:
            unlock_reason = cancelled.reasons[0] if cancelled.reasons else None
            if unlock_reason is not None and unlock_reason.code == "ConditionalCheckFailed":
                existing = (
                    _unlock_from(from_item(unlock_reason.item))
                    if unlock_reason.item
                    else await self.get_unlock(unlock.user_id, unlock.achievement_id)
                )
                if existing is not None:
                    raise AlreadyUnlocked(existing) from None
            raise RequirementsChangedConcurrently(unlock.achievement_id) from None

    async def mark_xp_granted_once(self, user_id: str, achievement_id: str, marker: str) -> bool:
        """Marks the unlock's XP as granted. True only for the one caller that
        made the change, which is the one to report the XP. The caller's marker
        makes the client's own retry (after a lost response) still answer True."""
        return await update_item_once(
            self._client,
            {
                "TableName": self._unlocks,
                "Key": {"user_id": attr(user_id), "achievement_id": attr(achievement_id)},
                "UpdateExpression": "SET xp_granted = :t, granted_by = :m",
                "ConditionExpression": "attribute_exists(achievement_id) AND (xp_granted = :f OR granted_by = :m)",
                "ExpressionAttributeValues": {":t": attr(True), ":f": attr(False), ":m": attr(marker)},
            },
        )

    async def withdraw_unpaid_unlock(self, unlock: Unlock, restore_updated_at: str | None = None) -> None:
        """Removes an unlock whose XP was never paid (the unlock record and its
        place in the user's progress, and, when given, the progress time it
        replaced), in one transaction; nothing if it was paid meanwhile."""
        values: dict[str, Any] = {":a": attr({unlock.achievement_id})}
        expression = "DELETE unlocked_achievements :a"
        if restore_updated_at is not None:
            expression += " SET updated_at = :before"
            values[":before"] = attr(restore_updated_at)
        update: dict[str, Any] = {
            "TableName": self._progress,
            "Key": {"user_id": attr(unlock.user_id)},
            "UpdateExpression": expression,
            "ExpressionAttributeValues": values,
        }
        try:
            await transact_write(
                self._client,
                [
                    {
                        "Delete": {
                            "TableName": self._unlocks,
                            "Key": {"user_id": attr(unlock.user_id), "achievement_id": attr(unlock.achievement_id)},
                            "ConditionExpression": "xp_granted = :f",
                            "ExpressionAttributeValues": {":f": attr(False)},
                        }
                    },
                    {"Update": update},
                ],
            )
        except TransactionCancelled:
            pass  # paid (or withdrawn) meanwhile: nothing to take back

    async def start_level(self) -> int:
        return (await self._level_table.current()).table.start_level
